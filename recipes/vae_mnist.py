"""VAE on MNIST: the pytorch/examples model (784-400-20, Bernoulli likelihood), on Ray workers.

python recipes/vae_mnist.py                                  # downloads MNIST into data/ if missing
python recipes/vae_mnist.py data.root=/path/to/mnist model.beta=4
python recipes/vae_mnist.py scaling.num_workers=4 scaling.use_gpu=true   # on a GPU cluster
ray submit cluster.yaml recipes/vae_mnist.py -- trainer.epochs=20
"""

from __future__ import annotations

import sys

from engine import recipes

CONFIG = {
    "model": {"name": "vae", "arch": "mlp", "hidden": [400], "latent_dim": 20, "recon_loss": "bce", "beta": 1.0},
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 1e-3},
    "trainer": {"epochs": 10, "batch_size": 128},
    "scaling": {"num_workers": 2},
}

SMOKE = {"data.limit": 1000, "trainer.epochs": 1, "scaling.num_workers": 1}

if __name__ == "__main__":
    sys.exit(recipes.main(CONFIG, smoke=SMOKE, description=__doc__))
