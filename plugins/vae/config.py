"""Config of the variational autoencoder."""

from __future__ import annotations

from dataclasses import dataclass

import engine
from plugins.ae.config import ArchConfig


@dataclass(frozen=True)
class VAEConfig(ArchConfig):
    """A VAE (Kingma & Welling 2014); the defaults are the paper's MNIST MLP, 784-400-20.

    ``recon_loss`` picks the likelihood p(x|z): ``bce`` Bernoulli on the decoder's
    logits, ``mse`` a unit-variance Gaussian with mean ``sigmoid(logits)``, ``l1`` a
    unit-scale Laplace; any other registered loss is used as an unnormalised
    ``-log p(x|z)``, on the logits or on ``sigmoid(logits)`` as its domain says.
    """

    latent_dim: engine.PositiveInt = 20
    hidden: tuple[engine.PositiveInt, ...] = (400,)
    beta: engine.NonNegativeFloat = 1.0
    """Weight of the KL term (β-VAE, Higgins et al. 2017; 1 is the plain VAE)."""
    kl_warmup_steps: engine.NonNegativeInt = 0
    """Ramp the KL weight linearly from 0 to ``beta`` over this many training steps (0: off)."""
