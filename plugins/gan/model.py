"""GAN: MLP or DCGAN generator and discriminator, any adversarial loss, optional penalty, labels, codes.

Pixel conventions: data images are in ``[0, 1]``; both networks work in
``[-1, 1]`` (the discriminator sees ``2x - 1``, the generator ends in ``tanh``),
and :meth:`GAN.sample` maps back to ``[0, 1]`` with ``(g + 1) / 2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

import engine
from plugins.nets import layer_widths, mlp_layers

from .augment import diff_augment
from .config import GANConfig, dcgan_layout


def _to_signed(x: Tensor) -> Tensor:
    return x * 2.0 - 1.0


def _to_unit(x: Tensor) -> Tensor:
    return (x + 1.0) * 0.5


class Generator(nn.Module):
    """``z`` (plus a one-hot label when conditional) -> images in ``[-1, 1]``."""

    def __init__(self, config: GANConfig, data: engine.DataSpec) -> None:
        super().__init__()
        self.shape = data.shape
        self.num_classes = data.num_classes if config.conditional else None
        self.codes = config.codes
        # Labels enter as a fixed one-hot code. A learned label embedding as wide
        # as z let the generator encode each class as one prototype and ignore z
        # (every sample of a class the same image); a one-hot keeps z in charge of
        # the variation within a class.
        d_in = config.latent_dim + config.codes + (self.num_classes or 0)
        c, h, _ = data.shape
        if config.arch == "mlp":
            layers, d = mlp_layers(d_in, layer_widths(config.hidden, config.depth), nn.ReLU)
            layers.append(nn.Linear(d, data.numel))
            self.net = nn.Sequential(*layers)
        else:
            layout = dcgan_layout(h)
            assert layout is not None, "GANConfig.check() admits only DCGAN shapes"
            s0, k = layout
            ch = config.channels * 2 ** (k - 1)
            blocks: list[nn.Module] = [
                nn.Linear(d_in, ch * s0 * s0, bias=False),
                nn.Unflatten(1, (ch, s0, s0)),
                nn.BatchNorm2d(ch),
                nn.ReLU(),
                *_refine(ch, config.refine),
            ]
            for _ in range(k - 1):
                blocks += [
                    nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(ch // 2),
                    nn.ReLU(),
                    *_refine(ch // 2, config.refine),
                ]
                ch //= 2
            blocks.append(nn.ConvTranspose2d(ch, c, 4, 2, 1))
            self.net = nn.Sequential(*blocks)
            _dcgan_init(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        parts = [z]
        if self.codes:
            parts.append(nn.functional.one_hot(latent_code(z, self.codes), self.codes).to(z.dtype))
        if self.num_classes is not None:
            if labels is None:
                raise ValueError("a conditional generator needs labels")
            parts.append(nn.functional.one_hot(labels, self.num_classes).to(z.dtype))
        h = torch.cat(parts, dim=1) if len(parts) > 1 else z
        return torch.tanh(self.net(h)).view(-1, *self.shape)


def _refine(ch: int, n: int) -> list[nn.Module]:
    """``n`` 3×3 stride-1 conv layers at one resolution of the generator (``refine``)."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
    return layers


def latent_code(z: Tensor, codes: int) -> Tensor:
    """The categorical code ``argmax z[:, :codes]`` of each latent (uniform over ``codes`` for ``z ~ N(0, I)``)."""
    return z[:, :codes].argmax(1)


class Discriminator(nn.Module):
    """Images in ``[-1, 1]`` (plus labels when conditional) -> one raw score (logit) per image.

    Conditional scores use a projection discriminator (Miyato & Koyama 2018):
    ``head(h) + <embed(y), h>`` on the last features ``h``.
    """

    def __init__(self, config: GANConfig, data: engine.DataSpec) -> None:
        super().__init__()
        c, h, _ = data.shape
        norm = config.disc_norm_for()
        layers: list[nn.Module] = []
        if config.arch == "mlp":
            widths = layer_widths(config.hidden, config.depth)[::-1]  # the generator's, mirrored
            body, features = mlp_layers(data.numel, widths, lambda: nn.LeakyReLU(0.2), lambda n: _norm1d(norm, n))
            layers += [nn.Flatten(), *body]
        else:
            layout = dcgan_layout(h)
            assert layout is not None, "GANConfig.check() admits only DCGAN shapes"
            s0, k = layout
            ch = config.channels
            # No normalisation on the first layer (DCGAN).
            layers += [nn.Conv2d(c, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
            layers += _disc_refine(ch, config.disc_refine, norm)
            for _ in range(k - 1):
                layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), _norm2d(norm, ch * 2), nn.LeakyReLU(0.2)]
                ch *= 2
                layers += _disc_refine(ch, config.disc_refine, norm)
            layers.append(nn.Flatten())
            features = ch * s0 * s0
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, 1)
        # InfoGAN's Q: reads the generator's categorical code back from the shared features.
        self.code_head = nn.Linear(features, config.codes) if config.codes else None
        num_classes = data.num_classes if config.conditional else None
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        if config.arch == "dcgan":
            _dcgan_init(self)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=features**-0.5)

    def forward(self, x: Tensor, labels: Tensor | None = None, codes: bool = False) -> Any:
        """The scores; with ``codes``, ``(scores, code logits)`` from one pass (one DDP forward)."""
        h = self.body(x)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional discriminator needs labels")
            out = out + (self.embed(labels) * h).sum(1)
        if codes:
            if self.code_head is None:
                raise ValueError("this discriminator has no code head (model.codes is 0)")
            return out, self.code_head(h)
        return out


def _disc_refine(ch: int, n: int, norm: str) -> list[nn.Module]:
    """``n`` 3×3 stride-1 conv layers at one resolution of the discriminator (``disc_refine``)."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(ch, ch, 3, 1, 1, bias=False), _norm2d(norm, ch), nn.LeakyReLU(0.2)]
    return layers


def _norm1d(kind: str, n: int) -> nn.Module:
    return {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}.get(kind, lambda _: nn.Identity())(n)


def _norm2d(kind: str, n: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(n)
    if kind == "layer":
        return nn.GroupNorm(1, n)  # layer norm over (C, H, W), per-channel affine
    return nn.Identity()


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation: N(0, 0.02) weights for (transposed) convolutions, N(1, 0.02) norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class GAN(engine.Model):
    """A GAN whose losses and penalty are chosen by name (see :class:`GANConfig`)."""

    config: GANConfig

    def __init__(self, config: GANConfig, data: engine.DataSpec) -> None:
        config.check(data)
        super().__init__(config, data)
        # Direct children, so each is its own DDP module.
        self.gen = Generator(config, data)
        self.disc = Discriminator(config, data)
        self.adversarial = engine.get_loss(config.loss, "adversarial")
        self.penalty: Callable[..., Tensor] | None = (
            engine.get_loss(config.penalty, "penalty") if config.penalty is not None else None
        )

    # -- what the loop asks ---------------------------------------------

    def phases(self) -> list[engine.Phase]:
        return [
            engine.Phase("disc", repeats=self.config.n_critic),
            engine.Phase("gen", new_batch=False),
        ]

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        return {"gen": self.gen.parameters(), "disc": self.disc.parameters()}

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.config.conditional else None

    def _seen(self, x: Tensor) -> Tensor:
        """What the discriminator is shown of images ``x`` in training (``augment``; else ``x``)."""
        return diff_augment(x, self.config.augment, self.batch_rand) if self.config.augment else x

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, y = batch
        labels = self._labels(y)
        real = _to_signed(x)
        z = self.batch_randn(x.shape[0], self.config.latent_dim)
        if phase == "disc":
            # No graph through G: its DDP reducer must not wait for gradients here.
            with torch.no_grad():
                fake = self.gen(z, labels)
            real, fake = self._seen(real), self._seen(fake)
            d_real = self.disc(real, labels)
            d_fake, info = self._scores_and_info(fake, labels, z)
            d_loss = self.adversarial.d_loss(d_real, d_fake)
            out = {"d_loss": d_loss, "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
            loss = d_loss
            if info is not None:
                loss = loss + self.config.info_weight * info
                out["info_loss"] = info.detach()
            if self.penalty is not None:
                # enable_grad: penalties differentiate the critic, even when a
                # caller evaluates the losses under no_grad.
                with torch.enable_grad():
                    pen = self.penalty(critic=self._critic(labels), real=real, fake=fake)
                weight = self.config.resolved_penalty_weight
                if self.config.penalty == "r1":
                    weight /= 2.0  # R1's convention: gamma / 2
                loss = loss + weight * pen
                out["penalty"] = pen.detach()
            return {"loss": loss, **out}
        if phase == "gen":
            d_fake, info = self._scores_and_info(self._seen(self.gen(z, labels)), labels, z)
            g_loss = self.adversarial.g_loss(d_fake)
            if info is None:
                return {"loss": g_loss, "g_loss": g_loss.detach()}
            loss = g_loss + self.config.info_weight * info
            return {"loss": loss, "g_loss": g_loss.detach(), "info_loss": info.detach()}
        raise ValueError(f"unknown phase {phase!r}; the GAN has phases 'disc' and 'gen'")

    def _scores_and_info(self, fake: Tensor, labels: Tensor | None, z: Tensor) -> tuple[Tensor, Tensor | None]:
        """The discriminator's scores of ``fake`` and, with ``codes``, the cross-entropy of reading
        back the code of ``z`` it was generated from (None without codes)."""
        if not self.config.codes:
            return self.disc(fake, labels), None
        scores, logits = self.disc(fake, labels, codes=True)
        return scores, nn.functional.cross_entropy(logits, latent_code(z, self.config.codes))

    def _critic(self, labels: Tensor | None) -> Callable[[Tensor], Tensor]:
        return lambda t: self.disc(t, labels)

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        """Discriminator outputs and both losses on held-out images and fresh noise.

        ``d_real`` / ``d_fake`` are mean raw discriminator outputs (logits for
        the GAN losses, critic values for ``wasserstein``); with ``codes``,
        ``info_loss`` is the cross-entropy of reading the code back (ln codes: not at all).
        """
        x, y = batch
        labels = self._labels(y)
        z = self.batch_randn(x.shape[0], self.config.latent_dim)
        d_real = self.disc(_to_signed(x), labels)
        d_fake, info = self._scores_and_info(self.gen(z, labels), labels, z)
        out = {
            "d_real": d_real.mean(),
            "d_fake": d_fake.mean(),
            "d_loss": self.adversarial.d_loss(d_real, d_fake),
            "g_loss": self.adversarial.g_loss(d_fake),
        }
        if info is not None:
            out["info_loss"] = info
        return out

    # -- generation ---------------------------------------------------------

    def sample(self, n: int, labels: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        """``n`` images in ``[0, 1]``.

        :param labels: classes of the samples (conditional GANs; default
            ``arange(n) % num_classes``); ignored by unconditional GANs.
        :param z: the noise, ``n × latent_dim``; default ``torch.randn`` from the
            global generator, so seeding it gives fixed noise (the sample-grid
            plugin does this every epoch).
        """
        device = self.device
        if z is None:
            z = torch.randn(n, self.config.latent_dim, device=device)
        cond = None
        if self.config.conditional:
            assert self.data.num_classes is not None
            cond = labels.to(device) if labels is not None else torch.arange(n, device=device) % self.data.num_classes
        return _to_unit(self.gen(z.to(device), cond))

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Any:
        """Generator output in ``[-1, 1]`` (``nn.Module`` convention: ``model(z)``)."""
        return self.gen(z, labels)
