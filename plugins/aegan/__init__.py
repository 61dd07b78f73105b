"""The built-in AE-GAN plugin: registers model ``aegan``.

An autoencoder with a discriminator (:class:`~plugins.aegan.config.AEGANConfig`):
VAE-GAN (``encoder=vae adversary=image``, optionally ``feature_recon=true``),
adversarial autoencoder (``adversary=latent``), with an optional contractive
penalty::

    gentrain fit model.name=aegan model.encoder=vae model.adversary=image model.feature_recon=true
"""

from __future__ import annotations

from typing import Any

import engine

from .config import AEGANConfig
from .model import AEGAN

__all__ = ["AEGAN", "AEGANConfig"]


@engine.hookimpl
def gentrain_register_models(registry: engine.Registry[Any]) -> None:
    registry.add("aegan", AEGAN, AEGANConfig)
