"""Quickstart: a VAE on the procedural `shapes` dataset, on a local Ray cluster.

No files and no network needed:

    python recipes/quickstart.py                      # 2 Ray workers, ~1 minute on 2 cores
    python recipes/quickstart.py --smoke              # a few seconds' check
    python recipes/quickstart.py trainer.epochs=20 model.beta=4 scaling.num_workers=0

Outputs (config, metrics CSV, TensorBoard logs, sample and reconstruction
grids, checkpoints) go to runs/<run name>/, printed at the end.
"""

from __future__ import annotations

import sys

from engine import recipes

CONFIG = {
    "model": {"name": "vae", "arch": "mlp", "hidden": [256], "latent_dim": 8, "recon_loss": "bce"},
    "data": {"name": "shapes", "n": 10_000, "size": 32},
    "optim": {"algo": "adam", "lr": 1e-3},
    "trainer": {"epochs": 5, "batch_size": 64, "seed": 0},
    "scaling": {"num_workers": 2},
    "run": {"output_dir": "runs"},
}

SMOKE = {"data.n": 1000, "trainer.epochs": 1}

if __name__ == "__main__":
    sys.exit(recipes.main(CONFIG, smoke=SMOKE, description=__doc__))
