"""Everything of the engine that talks to Ray: one training run on Ray Train, and searches on Ray Tune.

One home per concern:

* :mod:`engine.ray.cluster` – connect to or start Ray, its environment, worker
  resources and what the cluster can hold;
* :mod:`engine.ray.train` – the ``TorchTrainer`` of a run (:func:`make_trainer`,
  the same for :func:`fit_ray` and a Tune trial), the worker entry point and
  how a failed run is reported;
* :mod:`engine.ray.space` – search spaces: loading, checks, sampling;
* :mod:`engine.ray.trial` – what runs inside a Tune trial;
* :mod:`engine.ray.tune` – the search driver, :func:`tune`;
* :mod:`engine.ray.results` – the table of trials, ``trials.csv``, ``trials.png``, ``best.yaml``.
* :mod:`engine.ray.tasks` – plain Ray tasks, one per worker, for work that is not training
  (``gentrain eval``'s samples).

Ray itself is imported only when one of these runs, so importing
:mod:`engine` stays cheap. ``engine.ray.tune`` is the function re-exported
here; import the module's other names with ``from engine.ray.tune import ...``.
"""

from __future__ import annotations

from engine.ray.results import TrialSummary, TuneResult
from engine.ray.space import SPECS, load_space, normalize_space
from engine.ray.train import fit_ray, make_trainer, train_loop_per_worker
from engine.ray.tune import tune

__all__ = [
    "SPECS",
    "TrialSummary",
    "TuneResult",
    "fit_ray",
    "load_space",
    "make_trainer",
    "normalize_space",
    "train_loop_per_worker",
    "tune",
]
