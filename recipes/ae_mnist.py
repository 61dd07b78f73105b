"""Denoising convolutional autoencoder on MNIST.

python recipes/ae_mnist.py
python recipes/ae_mnist.py model.noise=none model.contractive_weight=0.1   # a contractive AE instead
"""

from __future__ import annotations

import sys

from engine import recipes

CONFIG = {
    "model": {
        "name": "ae",
        "arch": "conv",
        "latent_dim": 16,
        "recon_loss": "bce",
        "noise": "gaussian",
        "noise_level": 0.3,
    },
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 1e-3},
    "trainer": {"epochs": 10, "batch_size": 128},
    "scaling": {"num_workers": 2},
}

SMOKE = {"data.limit": 1000, "trainer.epochs": 1, "scaling.num_workers": 1}

if __name__ == "__main__":
    sys.exit(recipes.main(CONFIG, smoke=SMOKE, description=__doc__))
