"""Conditional GAN on MNIST: class labels fed to generator and (projection) discriminator.

The sample grids hold one column per digit.

    python recipes/cgan_mnist.py
"""

from __future__ import annotations

import sys

from engine import recipes

CONFIG = {
    "model": {"name": "gan", "arch": "mlp", "latent_dim": 64, "loss": "nonsaturating", "conditional": True},
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 2e-4, "betas": [0.5, 0.999], "per_optimizer": {"disc": {"lr": 2e-4}}},
    "trainer": {"epochs": 20, "batch_size": 64},
    "scaling": {"num_workers": 2},
    "callbacks": {"num_samples": 100},
}

SMOKE = {"data.limit": 512, "trainer.epochs": 1, "scaling.num_workers": 1}

if __name__ == "__main__":
    sys.exit(recipes.main(CONFIG, smoke=SMOKE, description=__doc__))
