"""Search a DCGAN's learning rates, Adam betas and adversarial loss on MNIST, scored by a Fréchet distance.

    python recipes/tune_gan.py                                  # 12 trials, 1 worker each, downloads MNIST if missing
    python recipes/tune_gan.py data.root=/path/to/mnist tune.num_samples=24 scaling.num_workers=2
    python recipes/tune_gan.py --smoke                          # 2 tiny trials on procedural shapes
    python recipes/tune_gan.py --resume                         # continue the newest search after an interruption
    ray submit cluster.yaml recipes/tune_gan.py -- scaling.use_gpu=true

A GAN's losses say little about its samples, so this file is also a plugin
(loaded by every trial and worker through ``GENTRAIN_PLUGINS``) that adds
``val/frechet`` after each validation: the Fréchet distance between 1,000
samples and held-out images in the feature space of a small classifier
trained on the dataset's labels (:class:`engine.metrics.FeatureClassifier`,
trained once before the search and cached under ``~/.cache/gentrain``; on a
cluster every node trains or loads its own copy). Lower is better; the figure
is for ranking trials, not for comparison with published FIDs.

It joins a running Ray cluster (``RAY_ADDRESS`` or ``ray start``) or starts a
local one. Outputs: ``runs/tune-gan-<time>/`` holds ``trials.csv``,
``trials.png``, ``best.yaml`` (``gentrain fit runs/tune-gan-<time>/best.yaml``
trains the winner again; set ``GENTRAIN_PLUGINS=tune_gan`` and
``PYTHONPATH=recipes`` to log ``val/frechet`` there too) and each trial's run
directory under ``runs/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from ray import tune

import engine
from engine import recipes

CONFIG = {
    "model": {"name": "gan", "arch": "dcgan", "latent_dim": 64, "channels": 32, "loss": "nonsaturating"},
    "data": {"name": "mnist", "root": "data", "download": True, "split": "train"},
    "optim": {"algo": "adam", "lr": 2e-4, "betas": [0.5, 0.999]},
    "trainer": {"epochs": 10, "batch_size": 64},
    "scaling": {"num_workers": 1},
    "callbacks": {"progress": False, "sample_every": 2},
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
    "model": {"name": "gan", "arch": "mlp", "hidden": 32, "depth": 1, "latent_dim": 8},
    "data": {"name": "shapes", "n": 512, "size": 16},
    "trainer.epochs": 2,
    "trainer.batch_size": 32,
    "scaling.num_workers": 0,
    "callbacks.sample_every": 0,
    "tune.num_samples": 2,
    "tune.grace_period": 1,
}

SMOKE_SPACE = {"optim.lr": tune.loguniform(1e-4, 1e-3), "model.loss": tune.choice(["nonsaturating", "hinge"])}

#: Generated and held-out images per Fréchet distance (fewer if the validation split is smaller).
FRECHET_SAMPLES = 1000

# ---------------------------------------------------------------------------
# the plugin: val/frechet after each validation, on rank 0
# ---------------------------------------------------------------------------

_reference: dict[str, Any] = {}


def _classifier(config: Any, plugins: Any) -> tuple[Any, Any]:
    """The dataset's feature classifier and the features of up to FRECHET_SAMPLES held-out images (cached)."""
    from engine.data import load_data, split
    from engine.metrics import FeatureClassifier, classifier_features

    key = f"{config.data.name}-{config.data.split_seed}-{config.data.val_fraction}-{config.data.limit}"
    if key not in _reference:
        dataset = load_data(config.data, plugins)
        train, held = split(dataset, config.data)
        if dataset.num_classes is None or dataset.num_classes < 2:
            raise engine.ConfigError.one("data.name", config.data.name, "val/frechet needs a labelled dataset")
        name = f"tune-gan-{config.data.name}-{len(train)}"
        classifier = FeatureClassifier.for_dataset(name, train.images, train.labels, dataset.num_classes)
        reference = held if len(held) >= 2 else train
        real = classifier_features(classifier, reference.images[:FRECHET_SAMPLES])
        _reference[key] = (classifier, real)
    found: tuple[Any, Any] = _reference[key]
    return found


@engine.hookimpl
def gentrain_on_validation_end(trainer: Any, metrics: dict[str, float]) -> None:
    from engine.metrics import classifier_features, frechet_distance

    if not trainer.is_rank_zero or trainer.config.model.name not in ("gan", "aegan"):
        return
    classifier, real = _classifier(trainer.config, trainer.plugins)
    with trainer.unwrapped() as model:
        was_training = model.training
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same noise every epoch
            fake = model.sample(len(real)).cpu()
        model.train(was_training)
    metrics["val/frechet"] = frechet_distance(classifier_features(classifier, fake), real)


def warm_classifier(raw: dict[str, Any]) -> None:
    """Train (or load) the classifier once before the search, so the trials only load it."""
    config, _ = engine.prepare({**raw, "run": {**raw.get("run", {}), "name": "classifier"}})
    _classifier(config, engine.load_plugins())


def main() -> int:
    # Trials and their workers load this file as a plugin.
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    plugins = [p for p in os.environ.get("GENTRAIN_PLUGINS", "").split(",") if p]
    os.environ["GENTRAIN_PLUGINS"] = ",".join([*plugins, "tune_gan"] if "tune_gan" not in plugins else plugins)
    sys.path.insert(0, here)
    return recipes.tune_main(
        CONFIG, SPACE, smoke=SMOKE, smoke_space=SMOKE_SPACE, before=warm_classifier, description=__doc__
    )


if __name__ == "__main__":
    sys.exit(main())
