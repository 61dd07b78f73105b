"""The built-in GAN plugin: registers model ``gan``.

MLP or DCGAN generator and discriminator; the adversarial loss, the
discriminator penalty, ``n_critic`` and class conditioning are config fields
(:class:`~plugins.gan.config.GANConfig`)::

    gentrain fit model.name=gan model.arch=dcgan model.loss=wasserstein \\
        model.penalty=gradient_penalty model.n_critic=5 optim.per_optimizer.disc.lr=4e-4
"""

from __future__ import annotations

from typing import Any

import engine

from .config import GANConfig
from .model import GAN

__all__ = ["GAN", "GANConfig"]


@engine.hookimpl
def gentrain_register_models(registry: engine.Registry[Any]) -> None:
    registry.add("gan", GAN, GANConfig)
