"""The built-in autoencoder plugin: model ``ae`` (plain, denoising, contractive).

Written only against the public :mod:`engine` API, registered through the
entry point ``ae = "plugins.ae"`` of the gentrain distribution. Try it with::

    gentrain fit model.name=ae model.arch=conv model.noise=mask data.name=mnist
"""

from __future__ import annotations

from typing import Any

import engine
from plugins.ae.config import AEConfig, ArchConfig
from plugins.ae.model import AE

__all__ = ["AE", "AEConfig", "ArchConfig", "gentrain_register_models"]


@engine.hookimpl
def gentrain_register_models(registry: engine.Registry[Any]) -> None:
    registry.add("ae", AE, AEConfig)
