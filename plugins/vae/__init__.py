"""The built-in variational autoencoder plugin: model ``vae`` (β-VAE, KL warm-up).

Written only against the public :mod:`engine` API, registered through the
entry point ``vae = "plugins.vae"`` of the gentrain distribution. Try it with::

    gentrain fit model.name=vae model.beta=4 model.kl_warmup_steps=1000 data.name=mnist
"""

from __future__ import annotations

from typing import Any

import engine
from plugins.vae.config import VAEConfig
from plugins.vae.model import VAE

__all__ = ["VAE", "VAEConfig", "gentrain_register_models"]


@engine.hookimpl
def gentrain_register_models(registry: engine.Registry[Any]) -> None:
    registry.add("vae", VAE, VAEConfig)
