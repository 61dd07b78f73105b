"""AE-GAN: an autoencoder (deterministic or Gaussian encoder) trained with a discriminator.

Pixel conventions: data images are in ``[0, 1]``; the decoder outputs logits
(images are their sigmoid), and the image discriminator sees ``2x - 1``.

Weighting the two terms. The reconstruction term is summed over pixels (≈130
nats per MNIST image) and the adversarial one is a batch mean (≈1), so with a
fixed ``adv_weight`` the adversary's gradient on the decoder was 10–16% of the
reconstruction's and switching it off changed held-out metrics by 1–2%: a VAE
under another name. Two fixes were possible: normalise the reconstruction per
pixel, or adapt λ_adv from the gradient norms as VQGAN does (Esser et al.
2021). The adaptive weight is the default (``adv_weight_mode=adaptive``):

    λ_adv = adv_weight · s/(1 - s) · ‖∇_L (rec_weight · rec)‖ / ‖∇_L adv‖,   s = adv_share = 0.4

where ``L`` is the last layer both terms reach (the decoder's output layer; the
encoder's for the latent adversary), recomputed each step without a graph. It
states the adversary's share of the gradient directly, whatever the image size,
loss or training stage, where a per-pixel normalisation would only move the
balance by a fixed factor (784 on MNIST) and change what ``beta`` means (it
stays the β-VAE's β here, because the summed reconstruction is kept).
Each ``ae`` step logs ``adv_grad_share`` (``train/ae/adv_grad_share``: the
adversary's share ``‖λ∇_L adv‖ / (‖∇_L rec‖ + ‖λ∇_L adv‖)``, 0.4 at the defaults)
and ``adv_lambda``. ``adv_weight_mode=fixed adv_weight=10`` is the old weighting.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import engine
from plugins.nets import layer_widths, mlp_layers

from .config import AEGANConfig, conv_layout


def _signed(x: Tensor) -> Tensor:
    return x * 2.0 - 1.0


def _mlp(
    d_in: int, config: AEGANConfig, act: Callable[[], nn.Module], mirrored: bool = False
) -> tuple[list[nn.Module], int]:
    widths = layer_widths(config.hidden, config.depth)
    return mlp_layers(d_in, widths[::-1] if mirrored else widths, act)


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


def _conv_down(c_in: int, channels: int, k: int) -> tuple[list[nn.Module], int]:
    """``k`` stride-2 convolutions; returns the layers and the last channel count."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, channels, 4, 2, 1), _leaky()]
    ch = channels
    for _ in range(k - 1):
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1), _leaky()]
        ch *= 2
    return layers, ch


class Encoder(nn.Module):
    """Images in ``[0, 1]`` -> ``latent_dim`` code (``ae``) or ``2 × latent_dim`` mean and log-variance (``vae``)."""

    def __init__(self, config: AEGANConfig, data: engine.DataSpec) -> None:
        super().__init__()
        out = config.latent_dim * (2 if config.encoder == "vae" else 1)
        if config.arch == "mlp":
            layers, d = _mlp(data.numel, config, _leaky)
            self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(d, out))
        else:
            s0, k = _layout(data)
            layers, ch = _conv_down(data.shape[0], config.channels, k)
            self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * s0 * s0, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_signed(x))


class Decoder(nn.Module):
    """``z`` -> image logits ``N×C×H×W``."""

    def __init__(self, config: AEGANConfig, data: engine.DataSpec) -> None:
        super().__init__()
        self.shape = data.shape
        if config.arch == "mlp":
            layers, d = _mlp(config.latent_dim, config, nn.ReLU, mirrored=True)
            self.net = nn.Sequential(*layers, nn.Linear(d, data.numel))
        else:
            s0, k = _layout(data)
            ch = config.channels * 2 ** (k - 1)
            blocks: list[nn.Module] = [
                nn.Linear(config.latent_dim, ch * s0 * s0),
                nn.Unflatten(1, (ch, s0, s0)),
                nn.ReLU(),
            ]
            for _ in range(k - 1):
                blocks += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.ReLU()]
                ch //= 2
            blocks.append(nn.ConvTranspose2d(ch, data.shape[0], 4, 2, 1))
            self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.shape)


class ImageDiscriminator(nn.Module):
    """Images in ``[-1, 1]`` -> ``(score per image, hidden features)``; no batch norm.

    The features (for ``feature_recon``) are those of the middle layer, as in
    Larsen et al.: deep enough to be invariant to small translations, shallow
    enough to keep the image's content.
    """

    def __init__(self, config: AEGANConfig, data: engine.DataSpec) -> None:
        super().__init__()
        if config.arch == "mlp":
            layers, d = _mlp(data.numel, config, _leaky)
            layers = [nn.Flatten(), *layers]
            n_layers = len(layer_widths(config.hidden, config.depth))
            split = 1 + 2 * max(1, n_layers // 2)  # Flatten, then (Linear, act) per layer
            head_in = d
        else:
            s0, k = _layout(data)
            layers, ch = _conv_down(data.shape[0], config.channels, k)
            layers.append(nn.Flatten())
            split = 2 * max(1, k // 2)  # (Conv, act) per layer
            head_in = ch * s0 * s0
        self.low = nn.Sequential(*layers[:split])
        self.high = nn.Sequential(*layers[split:])
        self.head = nn.Linear(head_in, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.low(x)
        return self.head(self.high(h)).squeeze(1), h.flatten(1)


class LatentDiscriminator(nn.Module):
    """Codes ``N×latent_dim`` -> ``(score per code, last hidden features)``."""

    def __init__(self, config: AEGANConfig) -> None:
        super().__init__()
        layers, d = _mlp(config.latent_dim, config, _leaky)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(z)
        return self.head(h).squeeze(1), h


def _layout(data: engine.DataSpec) -> tuple[int, int]:
    layout = conv_layout(data.shape[1])
    assert layout is not None, "AEGANConfig.check() admits only conv shapes"
    return layout


class AEGAN(engine.Model):
    """VAE-GAN / adversarial autoencoder (see :class:`AEGANConfig`)."""

    config: AEGANConfig

    def __init__(self, config: AEGANConfig, data: engine.DataSpec) -> None:
        config.check(data)
        super().__init__(config, data)
        # Direct children, so each is its own DDP module.
        self.encoder = Encoder(config, data)
        self.decoder = Decoder(config, data)
        self.disc: nn.Module = (
            ImageDiscriminator(config, data) if config.adversary == "image" else LatentDiscriminator(config)
        )
        self.adversarial = engine.get_loss(config.loss, "adversarial")
        self.recon_loss: Callable[[Tensor, Tensor], Tensor] = engine.get_loss(
            config.recon_loss, "reconstruction", takes="logits", field="model.recon_loss"
        )
        self.kl: Callable[[Tensor, Tensor], Tensor] = engine.get_loss("kl_normal", "divergence")
        self.penalty: Callable[..., Tensor] | None = (
            engine.get_loss(config.penalty, "penalty") if config.penalty is not None else None
        )
        self.contractive: Callable[..., Tensor] | None = (
            engine.get_loss("contractive", "penalty") if config.contractive_weight > 0 else None
        )
        # The adaptive λ_adv of the last step, reused when losses are evaluated without autograd.
        self._last_lambda = torch.tensor(float(config.adv_weight))

    # -- what the loop asks ---------------------------------------------

    def phases(self) -> list[engine.Phase]:
        c = self.config
        ae = engine.Phase("ae", repeats=c.n_ae, new_batch=not c.disc_first)
        disc = engine.Phase("disc", repeats=c.n_disc, new_batch=c.disc_first)
        return [disc, ae] if c.disc_first else [ae, disc]

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        return {
            "ae": itertools.chain(self.encoder.parameters(), self.decoder.parameters()),
            "disc": self.disc.parameters(),
        }

    # -- pieces ---------------------------------------------------------------

    def _posterior(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(z, mean, logvar)``; ``z`` is a reparameterised sample when ``sample`` and the encoder is a vae."""
        h = self.encoder(x)
        if self.config.encoder == "ae":
            return h, h, None
        mu, logvar = h.chunk(2, dim=1)
        if not sample:
            return mu, mu, logvar
        eps = self.batch_randn(x.shape[0], self.config.latent_dim).to(mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar), mu, logvar

    def _code(self, x: Tensor) -> Tensor:
        # The encoder's mean, as a function of x: what the contractive penalty differentiates.
        return self.encoder(x)[:, : self.config.latent_dim]

    def _recon(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-image pixel reconstruction loss of decoder ``logits`` (adapted to the loss's domain by get_loss)."""
        return self.recon_loss(logits, x)

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        if phase == "disc":
            return self._disc_step(batch)
        if phase == "ae":
            return self._ae_step(batch)
        raise ValueError(f"unknown phase {phase!r}; the AE-GAN has phases 'ae' and 'disc'")

    def _ae_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        c = self.config
        x, _ = batch
        n = x.shape[0]
        z, mu, logvar = self._posterior(x, sample=True)
        logits = self.decoder(z)
        out: dict[str, Tensor] = {}
        if c.adversary == "image":
            prior_logits = self.decoder(self.batch_randn(n, c.latent_dim))
            fakes = _signed(torch.sigmoid(torch.cat([logits, prior_logits])))
            d_fake, f_fake = self.disc(fakes)
            adv = self.adversarial.g_loss(d_fake)
            if c.feature_recon:
                with torch.no_grad():
                    _, f_real = self.disc(_signed(x))
                rec = (f_fake[:n] - f_real).pow(2).sum(1).mean()
            else:
                rec = self._recon(logits, x).mean()
        else:
            rec = self._recon(logits, x).mean()
            d_fake, _ = self.disc(z)
            adv = self.adversarial.g_loss(d_fake)
        weighted_rec = c.rec_weight * rec
        lam, share = self._adv_lambda(weighted_rec, adv)
        loss = weighted_rec + lam * adv
        out.update(recon=rec.detach(), g_loss=adv.detach(), adv_lambda=lam.detach(), adv_grad_share=share)
        if logvar is not None:
            kl = self.kl(mu, logvar).mean()
            loss = loss + c.beta * kl
            out["kl"] = kl.detach()
        if self.contractive is not None:
            with torch.enable_grad():
                pen = self.contractive(encoder=self._code, x=x)
            loss = loss + c.contractive_weight * pen
            out["contractive"] = pen.detach()
        return {"loss": loss, **out}

    def _shared_layer(self) -> nn.Parameter:
        """The last layer both terms reach: the decoder's output layer (image) or the encoder's (latent adversary)."""
        net = self.decoder if self.config.adversary == "image" else self.encoder
        return list(net.parameters())[-2]  # the output layer's weight (its bias is last)

    def _adv_lambda(self, weighted_rec: Tensor, adv: Tensor) -> tuple[Tensor, Tensor]:
        """``(λ_adv, share)``: the adversarial term's weight and the adversary's share of the gradient.

        ``share = ‖λ ∇adv‖ / (‖∇(w_rec · rec)‖ + ‖λ ∇adv‖)`` at :meth:`_shared_layer`.
        ``adaptive``: ``λ = adv_weight · s/(1 - s) · ‖∇(w_rec · rec)‖ / ‖∇adv‖`` with
        ``s = adv_share``, computed without a graph, so the share is ``s`` whenever
        ``adv_weight = 1``. ``fixed``: ``λ = adv_weight``. Outside autograd (a caller
        evaluating losses under no_grad) the last λ is reused and the share is NaN.
        """
        c = self.config
        fixed = c.adv_weight_mode == "fixed" or c.adv_weight == 0
        if not (torch.is_grad_enabled() and weighted_rec.requires_grad and adv.requires_grad):
            lam = torch.tensor(float(c.adv_weight)) if fixed else self._last_lambda
            return lam.to(adv.device, adv.dtype), torch.tensor(float("nan"), device=adv.device)
        layer = self._shared_layer()
        norms = []
        for term in (weighted_rec, adv):
            (g,) = torch.autograd.grad(term, layer, retain_graph=True, allow_unused=True)
            g = g.detach() if g is not None else torch.zeros_like(layer)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                # The norm of the global batch's gradient (DDP averages them), not this rank's:
                # every rank gets one λ, and N workers × B match 1 × N·B (the DDP contract).
                dist.all_reduce(g)
                g /= dist.get_world_size()
            norms.append(g.norm())
        n_rec, n_adv = norms
        if fixed:
            lam = torch.tensor(float(c.adv_weight), device=adv.device)
        else:
            ratio = c.adv_share / (1.0 - c.adv_share)
            lam = (c.adv_weight * ratio * n_rec / (n_adv + 1e-8)).clamp(0.0, 1e4)
        self._last_lambda = lam.detach().float().cpu()
        share = (lam * n_adv) / (n_rec + lam * n_adv + 1e-12)
        return lam.detach().to(adv.dtype), share.detach().float()

    def _disc_inputs(self, x: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """``(real, fake)`` discriminator inputs for images ``x``, computed without gradients."""
        n = x.shape[0]
        prior = self.batch_randn(n, self.config.latent_dim)
        with torch.no_grad():
            z, _, _ = self._posterior(x, sample=sample)
            if self.config.adversary == "latent":
                return prior, z
            logits = self.decoder(torch.cat([z, prior]))
            return _signed(x), _signed(torch.sigmoid(logits))

    def _disc_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        x, _ = batch
        # No graph through the encoder/decoder: their DDP reducers must not wait here.
        real, fake = self._disc_inputs(x, sample=True)
        d_real, _ = self.disc(real)
        d_fake, _ = self.disc(fake)
        d_loss = self.adversarial.d_loss(d_real, d_fake)
        out = {"d_loss": d_loss, "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        loss = d_loss
        if self.penalty is not None:
            # The image adversary has twice as many fakes (reconstructions, then
            # prior samples) as reals: interpolate reals with the reconstructions.
            # enable_grad: penalties differentiate the critic, even when a caller
            # evaluates the losses under no_grad.
            with torch.enable_grad():
                pen = self.penalty(critic=self._critic, real=real, fake=fake[: real.shape[0]])
            weight = self.config.penalty_weight / (2.0 if self.config.penalty == "r1" else 1.0)
            loss = loss + weight * pen
            out["penalty"] = pen.detach()
        return {"loss": loss, **out}

    def _critic(self, inputs: Tensor) -> Tensor:
        return self.disc(inputs)[0]

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        """Reconstruction from the posterior mean and discriminator statistics.

        ``recon``: ``recon_loss`` per image; ``mse``: per pixel; ``kl``
        (vae encoder); ``z_mean`` / ``z_sq``: mean and mean square of the codes
        (0 and 1 under the prior); ``d_real`` / ``d_fake`` / ``d_loss``: the
        discriminator on real vs fake inputs (images: reconstructions and
        decoded prior samples; latent: prior samples vs codes).
        """
        x, _ = batch
        z, mu, logvar = self._posterior(x, sample=True)
        logits = self.decoder(mu)
        out = {
            "recon": self._recon(logits, x).mean(),
            "mse": (torch.sigmoid(logits) - x).pow(2).mean(),
            "z_mean": z.mean(),
            "z_sq": z.pow(2).mean(),
        }
        if logvar is not None:
            out["kl"] = self.kl(mu, logvar).mean()
        real, fake = self._disc_inputs(x, sample=True)
        d_real, _ = self.disc(real)
        d_fake, _ = self.disc(fake)
        out.update(d_real=d_real.mean(), d_fake=d_fake.mean(), d_loss=self.adversarial.d_loss(d_real, d_fake))
        return out

    # -- generation ---------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Codes of images ``x`` (the posterior mean for a vae encoder)."""
        return self._posterior(x, sample=False)[1]

    def decode(self, z: Tensor) -> Tensor:
        """Images in ``[0, 1]`` decoded from codes ``z``."""
        return torch.sigmoid(self.decoder(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def sample(self, n: int, labels: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        """``n`` decoded prior samples in ``[0, 1]``; ``labels`` are ignored (unconditional).

        :param z: the codes, ``n × latent_dim``; default ``torch.randn`` from the
            global generator, so seeding it gives fixed noise.
        """
        if z is None:
            z = torch.randn(n, self.config.latent_dim, device=self.device)
        return self.decode(z.to(self.device))

    def forward(self, x: Tensor) -> Any:
        """Reconstruction logits of ``x`` through the posterior mean."""
        return self.decoder(self.encode(x))
