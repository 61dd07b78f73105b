"""Search a DCGAN's learning rates, Adam betas and adversarial loss on MNIST, scored by a Fréchet distance.

    python recipes/tune_gan.py                                  # 12 trials, 1 worker each, downloads MNIST if missing
    python recipes/tune_gan.py data.root=/path/to/mnist tune.num_samples=24 scaling.num_workers=2
    python recipes/tune_gan.py --smoke                          # 2 tiny trials on procedural shapes
    python recipes/tune_gan.py --resume                         # continue the newest search after an interruption
    ray submit cluster.yaml recipes/tune_gan.py -- scaling.use_gpu=true

A GAN's losses say little about its samples, so the trials are scored by
``val/frechet`` from the built-in ``sample_metrics`` plugin, switched on in
the config alone (``callbacks.sample_metrics``): the Fréchet distance between
1,000 samples and training images in the feature space of a small classifier
trained on the dataset's labels, reported only when a second, independently
trained classifier agrees on the samples' classes (NaN otherwise; see
:mod:`engine.classifier`). Both classifiers are trained once before the search
and cached under ``~/.cache/gentrain``; on a cluster every node trains or loads
its own copy. Lower is better; the figure is for ranking trials, not for
comparison with published FIDs.

It joins a running Ray cluster (``RAY_ADDRESS`` or ``ray start``) or starts a
local one. Outputs: ``runs/tune-gan-<time>/`` holds ``trials.csv``,
``trials.png``, ``best.yaml`` (``gentrain fit runs/tune-gan-<time>/best.yaml``
trains the winner again, logging ``val/frechet`` too) and each trial's run
directory under ``runs/``.
"""

from __future__ import annotations

import sys
from typing import Any

from ray import tune

import engine
from engine import recipes

CONFIG = {
    "model": {"name": "gan", "arch": "dcgan", "latent_dim": 64, "channels": 32, "loss": "nonsaturating"},
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
    "trainer": {"epochs": 10, "batch_size": 64},
    "scaling": {"num_workers": 1},
    "callbacks": {
        "progress": False,
        "sample_every": 2,
        "sample_metrics": ["frechet", "kid", "classifier_score", "class_coverage"],
        "sample_metrics_n": 1000,
    },
    "tune": {
        "metric": "val/frechet",
        "mode": "min",
        "num_samples": 12,
        "scheduler": "asha",
        "grace_period": 2,
        "reduction_factor": 3,
    },
}

SPACE = {
    "optim.lr": tune.loguniform(5e-5, 1e-3),  # the generator's (and the default for the discriminator)
    "optim.per_optimizer.disc.lr": tune.loguniform(5e-5, 1e-3),
    "optim.betas": tune.choice([[0.5, 0.999], [0.0, 0.9]]),
    "model.loss": tune.choice(["nonsaturating", "hinge", "least_squares"]),
}

SMOKE = {
    "model": {"name": "gan", "arch": "dcgan", "channels": 8, "latent_dim": 8},
    "data": {"name": "shapes", "n": 512, "size": 16},
    "callbacks.sample_metrics_n": 128,
    "callbacks.sample_metrics_classifier_epochs": 2,
    # Two epochs of a tiny GAN make blobs the classifiers need not agree on: report what they say.
    "callbacks.sample_metrics_max_disagreement": 1.0,
    "trainer.epochs": 2,
    "trainer.batch_size": 32,
    "scaling.num_workers": 0,
    "callbacks.sample_every": 0,
    "tune.num_samples": 2,
    "tune.grace_period": 1,
}

SMOKE_SPACE = {"optim.lr": tune.loguniform(1e-4, 1e-3), "model.loss": tune.choice(["nonsaturating", "hinge"])}


def warm_classifier(raw: dict[str, Any]) -> None:
    """Train (or load) both classifiers once before the search, so the trials only load them."""
    from plugins.callbacks.sample_metrics import classifiers_for

    config, _ = engine.prepare({**raw, "run": {**raw.get("run", {}), "name": "classifier"}})
    classifiers_for(config, engine.load_plugins())


def main() -> int:
    return recipes.tune_main(
        CONFIG, SPACE, smoke=SMOKE, smoke_space=SMOKE_SPACE, before=warm_classifier, description=__doc__
    )


if __name__ == "__main__":
    sys.exit(main())
