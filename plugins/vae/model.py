"""The variational autoencoder, with β weighting and KL warm-up."""

from __future__ import annotations

import math

import torch
from torch import Tensor

import engine
from plugins.ae.nets import make_decoder, make_encoder
from plugins.vae.config import VAEConfig

_LOG_2PI = math.log(2 * math.pi)


class VAE(engine.Model):
    """Gaussian encoder q(z|x) = N(mu, diag(exp(logvar))), prior N(0, I), decoder p(x|z).

    Training minimises, per image and averaged over the batch,
    ``-log p(x|z) + β_t·KL(q(z|x) ‖ N(0, I))`` with one reparameterised sample
    ``z = mu + exp(logvar/2)·ε``, ε from :meth:`engine.Model.batch_randn`
    (so distributed runs draw the same noise as one process). ``-log p(x|z)``
    includes the likelihood's constants, so losses are in nats.

    β_t is ``beta``, or with ``kl_warmup_steps = W``, ``beta·min(1, t/W)`` where
    ``t`` counts the :meth:`training_step` calls made so far. The count lives in
    the buffer ``train_steps``, so it is checkpointed and a resumed run keeps
    ramping where it stopped. (With ``trainer.accumulate_grad_batches = k`` the
    ramp therefore lasts ``W/k`` optimizer steps.)

    Validation reports per image: ``elbo`` (the negative ELBO: the loss with
    β = 1, an upper bound on -log p(x)), ``recon`` (-log p(x|z)) and ``kl``.
    :mod:`engine.metrics` uses :meth:`encode`, :meth:`decode` and
    :meth:`log_likelihood` for tighter (IWAE) bounds.
    """

    config: VAEConfig
    train_steps: Tensor

    def __init__(self, config: VAEConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        self.encoder = make_encoder(config, data, 2 * config.latent_dim)
        self.decoder = make_decoder(config, data)
        self.recon_fn = engine.get_loss(config.recon_loss, "reconstruction", takes="logits", field="model.recon_loss")
        self.kl_fn = engine.get_loss("kl_normal", "divergence")
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

    # -- the maths ---------------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)``, each ``N×latent_dim``, of q(z|x)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Decoder logits ``N×C×H×W``; the mean image is ``sigmoid(logits)``."""
        return self.decoder(z)

    def log_likelihood(self, x: Tensor, logits: Tensor) -> Tensor:
        """``log p(x|z)`` per image (shape ``N``), constants included, for decoder ``logits``.

        Bernoulli for ``bce`` (on grey levels in ``[0, 1]`` this is the usual
        continuous relaxation), unit-variance Gaussian for ``mse``, unit-scale
        Laplace for ``l1``, ``-loss`` for any other reconstruction loss.
        """
        # recon_fn takes logits: engine.get_loss put a sigmoid in front of a loss on images.
        name, d = str(self.config.recon_loss), x[0].numel()
        if name == "mse":
            return -0.5 * self.recon_fn(logits, x) - 0.5 * d * _LOG_2PI
        if name == "l1":
            return -self.recon_fn(logits, x) - d * math.log(2.0)
        return -self.recon_fn(logits, x)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        eps = self.batch_randn(mu.shape[0], mu.shape[1]).to(mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def kl_weight(self) -> Tensor:
        """β_t, the KL weight of the next training step (a tensor: no device sync)."""
        c = self.config
        if c.kl_warmup_steps == 0:
            return torch.tensor(c.beta, device=self.train_steps.device)
        ramp = (self.train_steps.double() / c.kl_warmup_steps).clamp(max=1.0)
        return (c.beta * ramp).float()

    def _terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encode(x)
        nll = -self.log_likelihood(x, self.decode(self.reparameterize(mu, logvar)))
        return nll, self.kl_fn(mu, logvar)

    # -- what the loop asks --------------------------------------------------

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        nll, kl = self._terms(x)
        beta = self.kl_weight()
        loss = (nll + beta * kl).mean()
        with torch.no_grad():
            self.train_steps += 1
        return {"loss": loss, "recon": nll.mean(), "kl": kl.mean(), "beta": beta}

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        x, _ = batch
        nll, kl = self._terms(x)
        return {"elbo": (nll + kl).mean(), "recon": nll.mean(), "kl": kl.mean()}

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean images decoded from the posterior means."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode(mu))

    def sample(self, n: int, labels: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        """Mean images ``sigmoid(decode(z))`` of ``z`` ~ N(0, I); ``labels`` are ignored.

        :param z: the codes, ``n × latent_dim`` (interpolation, exported decoders); default N(0, I).
        """
        if z is None:
            # torch.randn, not batch_randn: the sample-grid plugin seeds the global RNG for fixed noise.
            z = torch.randn(n, self.config.latent_dim, device=self.device)
        return torch.sigmoid(self.decode(z))
