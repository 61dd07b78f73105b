"""AE-GAN on MNIST: a VAE encoder/decoder plus an image-space discriminator (VAE-GAN).

python recipes/aegan_mnist.py
python recipes/aegan_mnist.py model.adversary=latent model.encoder=ae    # an adversarial autoencoder
"""

from __future__ import annotations

import sys

from engine import recipes

CONFIG = {
    "model": {"name": "aegan", "arch": "mlp", "encoder": "vae", "adversary": "image", "latent_dim": 16},
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
    "trainer": {"epochs": 10, "batch_size": 64},
    "scaling": {"num_workers": 2},
}

SMOKE = {"data.limit": 512, "trainer.epochs": 1, "scaling.num_workers": 1}

if __name__ == "__main__":
    sys.exit(recipes.main(CONFIG, smoke=SMOKE, description=__doc__))
