"""The autoencoder: plain, denoising (gaussian or masking noise) and contractive."""

from __future__ import annotations

import torch
from torch import Tensor

import engine
from plugins.ae.config import AEConfig
from plugins.ae.nets import make_decoder, make_encoder


class AE(engine.Model):
    """A deterministic autoencoder ``x -> z = encode(x) -> decode(z)`` (logits).

    Training minimises the per-image reconstruction loss ``recon_loss``
    (summed over pixels, averaged over the batch). Options:

    * **denoising** (``noise``): the encoder sees a corrupted copy of the
      batch, the loss compares the reconstruction with the clean batch;
      validation always encodes clean images;
    * **contractive** (``contractive_weight`` λ > 0): adds λ·E‖∂z/∂x‖²_F, the
      registered ``contractive`` penalty (a Hutchinson estimate: one batched
      vector-Jacobian product per projection, no per-sample loop), evaluated
      at the encoder's (possibly corrupted) input.

    Validation reports per image: ``recon`` (the configured loss) and ``mse``
    (squared error of ``reconstruct(x)`` summed over pixels).

    :meth:`sample` decodes N(0, I) latents. An autoencoder puts no prior on
    its codes, so these samples only show what the decoder does with codes of
    roughly the right scale: an AE is not a proper generative model (use the
    VAE for that).
    """

    config: AEConfig

    def __init__(self, config: AEConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        self.encoder = make_encoder(config, data, config.latent_dim)
        self.decoder = make_decoder(config, data)
        # Logits in: a loss on images in [0, 1] comes back behind a sigmoid (its registered domain says which).
        self.recon_fn = engine.get_loss(config.recon_loss, "reconstruction", takes="logits", field="model.recon_loss")
        self.penalty_fn = engine.get_loss("contractive", "penalty") if config.contractive_weight > 0 else None

    # -- the maths ---------------------------------------------------------

    def encode(self, x: Tensor) -> Tensor:
        """Codes ``N×latent_dim`` of images ``x``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """Logits ``N×C×H×W`` of the images decoded from codes ``z``."""
        return self.decoder(z)

    def recon_loss(self, logits: Tensor, x: Tensor) -> Tensor:
        """Per-image reconstruction loss (shape ``N``) of decoder ``logits`` against clean ``x``."""
        return self.recon_fn(logits, x)

    def corrupt(self, x: Tensor) -> Tensor:
        """The denoising input: ``x`` with the configured noise (``x`` itself for ``noise=none``)."""
        c = self.config
        n, shape = x.shape[0], x.shape[1:]
        if c.noise == "gaussian":
            return (x + c.noise_level * self.batch_randn(n, *shape).to(x.dtype)).clamp(0.0, 1.0)
        if c.noise == "mask":
            return x * (self.batch_rand(n, *shape) >= c.noise_level).to(x.dtype)
        return x

    # -- what the loop asks --------------------------------------------------

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        x_in = self.corrupt(x)
        recon = self.recon_loss(self.decoder(self.encoder(x_in)), x).mean()
        out = {"loss": recon, "recon": recon}
        if self.penalty_fn is not None:
            penalty = self.penalty_fn(encoder=self.encoder, x=x_in, n_projections=self.config.contractive_projections)
            out["contractive"] = penalty
            out["loss"] = recon + self.config.contractive_weight * penalty
        return out

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        x, _ = batch
        logits = self.decoder(self.encoder(x))
        mse = (torch.sigmoid(logits) - x).pow(2).flatten(1).sum(1)
        return {"recon": self.recon_loss(logits, x).mean(), "mse": mse.mean()}

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decode(self.encode(x)))

    def sample(self, n: int, labels: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        """Decode ``n`` codes drawn from N(0, I); ``labels`` are ignored (see the class docstring).

        :param z: the codes, ``n × latent_dim`` (interpolation, exported decoders); default N(0, I).
        """
        if z is None:
            # torch.randn, not batch_randn: the sample-grid plugin seeds the global RNG for fixed noise.
            z = torch.randn(n, self.config.latent_dim, device=self.device)
        return torch.sigmoid(self.decode(z))
