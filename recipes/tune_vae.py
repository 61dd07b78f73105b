"""Search a VAE's learning rate, β and latent size on MNIST with ASHA; every trial is a Ray Train run.

    python recipes/tune_vae.py                                # 16 trials, 2 workers each, downloads MNIST if missing
    python recipes/tune_vae.py data.root=/path/to/mnist tune.num_samples=32
    python recipes/tune_vae.py tune.scheduler=pbt tune.perturbation_interval=2   # PBT on lr and beta
    python recipes/tune_vae.py --smoke                        # 2 tiny trials on procedural shapes
    python recipes/tune_vae.py --resume                       # continue the newest search after an interruption
    ray submit cluster.yaml recipes/tune_vae.py -- scaling.use_gpu=true
    gentrain tune recipes/tune_vae.py                         # the same CONFIG and SPACE from the CLI

It joins a running Ray cluster (``RAY_ADDRESS`` or ``ray start``) or starts a
local one. Outputs: ``runs/tune-vae-<time>/`` holds ``trials.csv``,
``trials.png``, ``best.yaml`` (``gentrain fit runs/tune-vae-<time>/best.yaml``
trains the winner again) and each trial's run directory under ``runs/``.

``val/elbo`` is the negative ELBO with a KL weight of 1 whatever ``model.beta``
is, so trials with different β are compared on the same bound.
"""

from __future__ import annotations

import sys

from ray import tune

from engine import recipes

CONFIG = {
    "model": {"name": "vae", "arch": "mlp", "hidden": [400], "latent_dim": 20, "recon_loss": "bce", "beta": 1.0},
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 1e-3},
    "trainer": {"epochs": 10, "batch_size": 128},
    "scaling": {"num_workers": 2},
    "callbacks": {"progress": False, "sample_every": 0},
    "tune": {"metric": "val/elbo", "mode": "min", "num_samples": 16, "scheduler": "asha", "reduction_factor": 3},
}

SPACE = {
    "optim.lr": tune.loguniform(1e-4, 3e-3),
    "model.beta": tune.uniform(0.5, 2.0),
    "model.latent_dim": tune.choice([10, 20, 32]),
}

#: What PBT perturbs (tune.scheduler=pbt): the latent size changes the model's shapes, so not that.
MUTATIONS = {"optim.lr": tune.loguniform(1e-4, 3e-3), "model.beta": tune.uniform(0.5, 2.0)}

SMOKE = {
    "data": {"name": "shapes", "n": 512, "size": 16},
    "model.hidden": [32],
    "trainer.epochs": 2,
    "trainer.batch_size": 32,
    "scaling.num_workers": 0,
    "tune.num_samples": 2,
}

SMOKE_SPACE = {"optim.lr": tune.loguniform(1e-3, 1e-2), "model.beta": tune.choice([1.0, 2.0])}

if __name__ == "__main__":
    sys.exit(
        recipes.tune_main(CONFIG, SPACE, smoke=SMOKE, smoke_space=SMOKE_SPACE, mutations=MUTATIONS, description=__doc__)
    )
