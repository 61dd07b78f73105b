"""DCGAN on MNIST with the non-saturating loss; WGAN-GP is one override away.

    python recipes/gan_mnist.py
    python recipes/gan_mnist.py model.loss=wasserstein model.penalty=gradient_penalty model.n_critic=5 \\
        optim.betas=[0.0,0.9] optim.lr=1e-4
"""

from __future__ import annotations

import sys

from engine import recipes

CONFIG = {
    "model": {"name": "gan", "arch": "dcgan", "latent_dim": 64, "loss": "nonsaturating"},
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
    "trainer": {"epochs": 10, "batch_size": 64},
    "scaling": {"num_workers": 2},
}

SMOKE = {"data.limit": 512, "trainer.epochs": 1, "scaling.num_workers": 1, "model.channels": 8}

if __name__ == "__main__":
    sys.exit(recipes.main(CONFIG, smoke=SMOKE, description=__doc__))
