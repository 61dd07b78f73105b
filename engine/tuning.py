"""Ray Tune driver: a hyperparameter search in which every trial is one gentrain training run.

:func:`tune` is what ``gentrain tune`` and the tuning recipes call::

    driver (engine.tune)                 Tune trial actor (one per trial)            Ray Train workers
    --------------------                 --------------------------------            -----------------
    check config, every searched key,    gentrain_trial(params)
      the metric, PBT's mutations          config = base + params, run.name = trial id
    connect to or start Ray                adopt a PBT donor's checkpoint, if any
    max_concurrent_trials from the         num_workers = 0: loop.train() right here
      cluster's resources                  num_workers > 0: TorchTrainer.fit() in a    _train_loop_per_worker
    Tuner(...).fit()            <-------     thread; a Train callback in the            (engine.distributed)
    table, trials.csv, trials.png,           controller hands each report to this
      best.yaml                              thread: tune.report(metrics, pointer)

Search spaces are Ray Tune's own distributions keyed by dotted config paths
(``{"optim.lr": tune.loguniform(1e-4, 1e-2)}``); a space file spells the same
distributions as ``optim.lr: {loguniform: [1e-4, 1e-2]}`` (:data:`SPECS`,
:func:`load_space`). Every key is checked before Ray starts by resolving the
config with the key set to each of its candidate values (both ends of a
range, every choice).

Resources. Tune reserves resources only for a trial's driver, so the Train
workers a trial starts are not counted: ``max_concurrent_trials`` is set to
the number of trials whose workers fit on the cluster at once
(:func:`max_concurrent`), and a driver takes a little logical memory and no
CPU (:func:`trial_resources`). ``num_workers=0`` trials train in their own
actor, which holds one worker's resources.

Where things are. An experiment lives in ``<run.output_dir>/<run.name>``
(``run.name`` defaults to ``tune-<model>-<time>``): Tune's files and one
folder per trial (named by the trial id), ``runs/<trial id>/`` (each trial's
gentrain run directory: config.yaml, metrics.csv, checkpoints, samples,
``tune-history.jsonl``), and at the end ``trials.csv``, ``trials.png`` and
``best.yaml`` (the best trial's whole run config, named ``<experiment>-best``).

Checkpoints and PBT. A trial's engine checkpoints are the loop's own files in
its run directory. What Tune receives with each report is a *pointer*: a
directory holding one JSON file that names a hard link of that file under
``runs/<trial id>/tune-checkpoints/``, out of reach of the loop's
``keep_checkpoints`` pruning (the newest ``trainer.keep_checkpoints`` links are
kept; more under PBT, which clones the checkpoint a trial had at its last
perturbation). Tune's ``TuneReportCallback`` is not used: it forwards only
metrics, and PBT's exploit step needs a Tune checkpoint. When PBT clones
trial A into trial B, Tune restarts B with A's pointer as
``tune.get_checkpoint()`` and B's perturbed config: B replaces the files in
its run directory's ``checkpoints/`` with A's file (``exploits.log`` records
it), and the loop resumes from it (model, optimizer state, epoch, RNG) while
taking hyperparameters from B's config
(:func:`engine.builtin.apply_hyperparameters`). PBT may only perturb what
leaves the shapes of the model's parameters alone (``optim.*``,
``model.beta``); other ``model.*`` mutations are refused before Ray starts.

Failures. A trial that fails (a raise, a dead worker once
``scaling.max_failures`` worker-group restarts are spent, a dead trial actor)
is started again by Tune up to ``tune.max_failures`` times; its run name is
its trial id, so it resumes from the newest checkpoint in its run directory.
``tune(..., resume=True)`` (``gentrain tune --resume``) continues an
interrupted experiment: finished trials stay finished, unfinished and failed
ones resume from their checkpoints. A metric that a trial's validation does
not report ends the whole search with a :class:`~engine.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import gc
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine import checkpoint as ckpt
from engine import loop
from engine.config import RunConfig, ScalingConfig, TuneSection, build_raw, read_yaml, resolve, set_dotted
from engine.errors import CheckpointError, ConfigError, GentrainError, TrainingError, suggest
from engine.plugins import PluginManager, load_plugins, using

log = logging.getLogger(__name__)

#: The file in an experiment directory that lets ``--resume`` rebuild the trials. (After a restore,
#: Tune re-uploads the top-level ``*.json`` of the experiment directory from its staging copy now and
#: then; this file never changes and is read only before Tune starts, so that does no harm.)
SETUP_FILE = "gentrain-tune.json"
#: The file inside a Tune checkpoint directory that names the engine checkpoint.
TUNE_POINTER = "gentrain-tune-checkpoint.json"
#: Folder of a trial's run directory holding the checkpoints Tune's pointers name.
PINS = "tune-checkpoints"
#: In a trial's run directory: every result handed to Tune, ``{"epoch": ..., "<metric>": ...}`` per line,
#: across restarts and PBT clones (Tune's own per-trial log starts again when PBT clones a trial).
HISTORY = "tune-history.jsonl"
#: Written when the metric is missing from what the trials report: the search stops.
METRIC_MARKER = ".gentrain-metric-missing"
#: Logical memory a trial's driver reserves when its training runs on Ray Train
#: workers (Tune refuses a request of nothing, and CPUs are the workers').
DRIVER_MEMORY = 64 * 2**20
#: Ray Train settings a trial's driver gets unless the tune driver's environment sets them (as engine.fit does).
TRAIN_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
_PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
#: Metrics the model reports, in order of preference, when ``tune.metric`` is not set.
DEFAULT_METRICS = ("val/loss", "val/elbo", "val/recon")

#: Distributions of a search space file: ``key: {name: [args...]}`` calls ``ray.tune.<name>(*args)``.
SPECS: dict[str, str] = {
    "uniform": "[lower, upper]",
    "quniform": "[lower, upper, q]",
    "loguniform": "[lower, upper] or [lower, upper, base]",
    "qloguniform": "[lower, upper, q] or [lower, upper, q, base]",
    "randn": "[mean, sd]",
    "qrandn": "[mean, sd, q]",
    "randint": "[lower, upper) (upper excluded)",
    "qrandint": "[lower, upper, q] (upper included)",
    "lograndint": "[lower, upper) or [lower, upper, base]",
    "qlograndint": "[lower, upper, q] or [lower, upper, q, base]",
    "choice": "[value, value, ...]",
    "grid_search": "[value, value, ...]",
}

# YAML 1.1 reads 1e-4 (no dot) as a string; a space file means a number.
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


# ---------------------------------------------------------------------------
# search spaces
# ---------------------------------------------------------------------------


def load_space(path: str | Path) -> dict[str, Any]:
    """Read a search space file: ``dotted.key: {distribution: [args]}`` per line.

    .. code-block:: yaml

        optim.lr: {loguniform: [1e-4, 1e-2]}
        model.beta: {choice: [1, 4]}
        model.latent_dim: {grid_search: [8, 16]}
        optim.per_optimizer.disc.lr: {uniform: [1e-4, 1e-3]}

    Each maps onto the Ray Tune function of the same name (:data:`SPECS`).
    """
    raw = read_yaml(path)
    space = {}
    for key, value in raw.items():
        if not (isinstance(value, Mapping) and len(value) == 1):
            raise ConfigError.one(
                f"<search space> {key}",
                value,
                "must be one distribution, {name: args}, e.g. {loguniform: [1e-4, 1e-2]} or {choice: [8, 16]}; "
                f"names: {', '.join(SPECS)}",
            )
        name = str(next(iter(value)))
        if name not in SPECS:
            raise ConfigError.one(
                f"<search space> {key}",
                dict(value),
                f"unknown distribution {name!r}{suggest(name, SPECS)}; one of: {', '.join(SPECS)}",
            )
        space[str(key)] = value
    return normalize_space(space)


def normalize_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{dotted key: Tune domain, grid search or constant}``.

    Accepts Ray Tune's own distributions (``tune.loguniform(...)``,
    ``tune.grid_search([...])``), the file form ``{"loguniform": [a, b]}``,
    constants, and nested mappings of those (``{"optim": {"lr": ...}}``).
    """
    out: dict[str, Any] = {}
    for key, value in space.items():
        key = str(key)
        if _is_spec(value):
            out[key] = _from_spec(key, value)
        elif isinstance(value, Mapping) and not _is_grid(value):
            nested = normalize_space(value)
            if not nested:
                out[key] = dict(value)
            for sub, v in nested.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def _is_grid(value: Any) -> bool:
    return isinstance(value, Mapping) and list(value) == ["grid_search"]


def _is_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in SPECS


def _from_spec(key: str, spec: Mapping[str, Any]) -> Any:
    from ray import tune as ray_tune

    (name, args), *_ = spec.items()
    if name in ("choice", "grid_search"):
        if not isinstance(args, list) or not args:
            raise ConfigError.one(key, dict(spec), f"{name} takes a non-empty list of values")
        values = [_number(v) for v in args]
        return ray_tune.grid_search(values) if name == "grid_search" else ray_tune.choice(values)
    try:
        if isinstance(args, Mapping):
            return getattr(ray_tune, name)(**{k: _number(v) for k, v in args.items()})
        if not isinstance(args, list):
            args = [args]
        return getattr(ray_tune, name)(*[_number(v) for v in args])
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError.one(key, dict(spec), f"{name} takes {SPECS[name]}: {e}") from e


def _number(value: Any) -> Any:
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)
    return value


def _native(value: Any) -> Any:
    """Python scalars and lists for what Tune sampled (numpy scalars do not go into YAML or pydantic)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_native(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _native(v) for k, v in value.items()}
    return value


def candidate_values(value: Any) -> list[Any]:
    """Values that stand for a distribution when the config is checked: bounds, every choice, a sample."""
    from ray.tune.search.sample import Categorical, Domain, Float, Integer

    if _is_grid(value):
        return [_native(v) for v in value["grid_search"]]
    if isinstance(value, Categorical):
        return [_native(v) for v in value.categories]
    if isinstance(value, Float):
        lower, upper = value.lower, value.upper
        if lower is not None and upper is not None and math.isfinite(lower) and math.isfinite(upper):
            return [math.nextafter(float(lower), float(upper)), math.nextafter(float(upper), float(lower))]
    if isinstance(value, Integer) and value.lower is not None and value.upper is not None:
        return [int(value.lower), int(value.upper) - 1]
    if isinstance(value, Domain):
        return [_native(value.sample())]
    return [_native(value)]


class _Shown:
    """A value that shows as the given text in a :class:`ConfigError`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def describe(value: Any) -> Any:
    """``loguniform(0.0001, 0.01)`` for a Tune domain (its repr is an object address); other values as they are."""
    from ray.tune.search.sample import Categorical, Domain, Float, Integer

    if _is_grid(value):
        return _Shown(f"grid_search({list(value['grid_search'])!r})")
    if isinstance(value, Categorical):
        return _Shown(f"choice({list(value.categories)!r})")
    if isinstance(value, (Float, Integer)):
        sampler: Any = value.sampler
        q = ""
        if type(sampler).__name__ == "Quantized":
            q, sampler = "q", sampler.sampler
        kind = type(sampler).__name__.strip("_").lower()  # uniform, loguniform, normal
        if isinstance(value, Integer):
            name = {"uniform": "randint", "loguniform": "lograndint"}.get(kind, kind)
        else:
            name = {"normal": "randn"}.get(kind, kind)
        return _Shown(f"{q}{name}({value.lower!r}, {value.upper!r})")
    if isinstance(value, Domain):
        return _Shown(type(value).__name__)
    return value


def dotted_keys(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every leaf key of a config dict, dotted (``optim.lr``, ``model.latent_dim``)."""
    out = []
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += dotted_keys(value, name + ".")
        else:
            out.append(name)
    return out


def check_space(raw: Mapping[str, Any], space: Mapping[str, Any], plugins: PluginManager) -> None:
    """Raise :class:`ConfigError` if a key of ``space`` is not a config field or a value is not allowed there.

    Each key is checked by resolving ``raw`` with that key set to each of its
    candidate values (bounds of a range, every choice).
    """
    known = dotted_keys(resolve(raw, plugins).to_dict())
    problems: list[tuple[str, object, str]] = []
    for key, value in space.items():
        if key.startswith("run.") or key == "run":
            problems.append((key, describe(value), "run.* names the experiment and cannot be searched"))
            continue
        for candidate in candidate_values(value):
            trial = copy.deepcopy(dict(raw))
            try:
                set_dotted(trial, key, candidate)
                resolve(trial, plugins)
            except ConfigError as e:
                for fieldname, _, allowed in e.problems:
                    if allowed.startswith(("unknown field", "unknown section")) or "is not a section" in allowed:
                        allowed = f"is not a config field{suggest(key, known)}"
                        problems.append((f"search space key {key!r}", describe(value), allowed))
                    else:
                        problems.append((f"search space key {key!r}", candidate, f"{fieldname}: {allowed}"))
                break
    if problems:
        raise ConfigError(problems)


def representative(space: Mapping[str, Any]) -> dict[str, Any]:
    """One value per key: what the whole config is prepared with before Ray starts."""
    return {key: candidate_values(value)[0] for key, value in space.items()}


def pbt_mutations(space: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``: ``given`` or every searched key; choices and grids become lists.

    A list is perturbed to a neighbouring value; a range is multiplied by 0.8
    or 1.2 (or resampled with ``tune.resample_probability``).
    """
    from ray.tune.search.sample import Categorical, Domain

    source = normalize_space(given) if given is not None else space
    out: dict[str, Any] = {}
    for key, value in source.items():
        if _is_grid(value):
            out[key] = [_native(v) for v in value["grid_search"]]
        elif isinstance(value, Categorical):
            out[key] = [_native(v) for v in value.categories]
        elif isinstance(value, (Domain, list)) or callable(value):
            out[key] = value
    return out


def check_mutations(raw: Mapping[str, Any], dataset: Any, mutations: Mapping[str, Any], plugins: PluginManager) -> None:
    """Refuse PBT mutations of model fields that change the shapes of its parameters.

    PBT continues a trial from another trial's checkpoint with a perturbed
    config; a checkpoint of a 16-unit latent space does not load into a model
    with 32.
    """

    def shapes(overrides: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        config = resolve(build_raw(raw, overrides), plugins)
        with torch.random.fork_rng():
            model = plugins.models.get(config.model.name).obj(config.model.params, dataset.spec)
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}

    problems: list[tuple[str, object, str]] = []
    for key, value in mutations.items():
        if not key.startswith("model."):
            continue
        values = [_native(v) for v in value] if isinstance(value, list) else candidate_values(value)
        if len(values) < 2:
            continue
        reference = shapes({key: values[0]})
        if any(shapes({key: v}) != reference for v in values[1:]):
            problems.append(
                (
                    f"PBT mutation {key!r}",
                    describe(value),
                    "changes the shapes of the model's parameters, so a trial cannot continue from another's "
                    "checkpoint; search it with tune.scheduler=asha, or give PBT the keys it may perturb "
                    "(hyperparam_mutations)",
                )
            )
    if problems:
        raise ConfigError(problems)


# ---------------------------------------------------------------------------
# resources
# ---------------------------------------------------------------------------


def trial_resources(scaling: ScalingConfig) -> dict[str, float]:
    """What Tune reserves for a trial's driver.

    ``num_workers=0``: the trial trains in its own process, so it takes one
    worker's resources. Otherwise the Train workers reserve theirs when the
    trial starts them, and the driver takes only :data:`DRIVER_MEMORY`.
    """
    from engine.distributed import worker_resources

    if scaling.num_workers == 0:
        return worker_resources(scaling)
    return {"CPU": 0.0, "memory": float(DRIVER_MEMORY)}


def max_concurrent(scaling: ScalingConfig, per_worker: Mapping[str, float], nodes: list[dict[str, float]]) -> int:
    """How many trials the cluster ``nodes`` can run at once, each with its own workers.

    Tune counts only trial drivers, so without this limit it would start more
    trials than the cluster has room for workers, and their worker groups
    would wait. ``num_workers=0`` trials hold one worker's resources each.
    """
    slots = [_fits(node, per_worker) for node in nodes]
    n = scaling.num_workers
    if n == 0:
        return sum(slots)
    strategy = scaling.placement_strategy
    if strategy == "STRICT_PACK":
        return sum(k // n for k in slots)
    if strategy == "STRICT_SPREAD":
        # Each trial needs n distinct nodes: k trials fit iff sum(min(slots, k)) >= k * n.
        k = 0
        while sum(min(s, k + 1) for s in slots) >= (k + 1) * n:
            k += 1
        return k
    return sum(slots) // n


def _fits(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many ``bundle``s fit on ``node``."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 0


# ---------------------------------------------------------------------------
# what runs in a trial
# ---------------------------------------------------------------------------


@dataclass
class TrialSetup:
    """Everything a trial needs, carried to the trial actors (plain data)."""

    base: dict[str, Any]
    """The run config every trial starts from (paths absolute, ``run.output_dir`` = ``<experiment>/runs``)."""
    experiment_dir: str
    metric: str
    mode: str
    env: dict[str, str | None]
    keep: int
    driver_resources: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrialSetup:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def trial_config(setup: TrialSetup, params: Mapping[str, Any], trial_id: str, plugins: PluginManager) -> RunConfig:
    """The run config of one trial: the base with the sampled ``params``, named after the trial."""
    raw = copy.deepcopy(setup.base)
    for key, value in params.items():
        set_dotted(raw, key, _native(value))
    raw.setdefault("run", {})["name"] = trial_id
    return resolve(raw, plugins)


def _apply_env(env: Mapping[str, str | None]) -> None:
    """Give this trial actor the driver's plugin selection (and Ray settings): what ``GENTRAIN_*`` said there."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for entry in reversed((env.get("PYTHONPATH") or "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)


def _pin(path: Path, keep: int) -> Path:
    """A hard link of checkpoint ``path`` in its run directory's :data:`PINS`, which the loop does not prune.

    Links are named ``<time ns>-<file name>`` and the ``keep`` newest are kept:
    by time, not by step, since a trial PBT cloned goes on from an earlier step.
    """
    pins = path.parent.parent / PINS
    pins.mkdir(parents=True, exist_ok=True)
    for found in pins.glob(f"*-{path.name}"):
        with contextlib.suppress(OSError):
            if os.path.samefile(found, path):
                return found
    target = pins / f"{time.time_ns():020d}-{path.name}"
    tmp = pins / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copy2(path, tmp)
    os.replace(tmp, target)
    for old in sorted(pins.glob("*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return target


class _Reporter:
    """Hands one trial's epoch metrics to Tune, each with a pointer to its engine checkpoint."""

    def __init__(self, setup: TrialSetup, trial_id: str, run_dir: Path) -> None:
        self.setup = setup
        self.trial_id = trial_id
        self.run_dir = run_dir
        self.last: float | None = None
        self.reported: list[str] = []

    def report(self, metrics: Mapping[str, Any], pinned: str | None) -> None:
        from ray import tune as ray_tune

        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.reported = sorted(values)
        metric = self.setup.metric
        if metric in values:
            self.last = values[metric]
        elif self.last is not None:
            # Validation runs every trainer.val_every epochs; Tune wants the metric in every result.
            values[metric] = self.last
        elif any(k.startswith("val/") for k in values):
            raise self.missing()
        else:
            return  # an epoch without validation before the first one with it
        pointer = None
        if pinned is not None:
            pointer = {"path": pinned, "run_dir": str(self.run_dir), "trial_id": self.trial_id}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / HISTORY).open("a") as f:
            f.write(json.dumps({"epoch": values.get("epoch"), metric: values[metric], "time": time.time()}) + "\n")
        with tempfile.TemporaryDirectory(prefix="gentrain-tune-") as tmp:
            checkpoint = None
            if pointer is not None:
                (Path(tmp) / TUNE_POINTER).write_text(json.dumps(pointer))
                checkpoint = ray_tune.Checkpoint.from_directory(tmp)
            ray_tune.report(values, checkpoint=checkpoint)

    def finish(self, final: Mapping[str, Any]) -> None:
        """After training: a run that resumed at its end reported nothing, so report its last metrics."""
        if self.last is None and self.setup.metric in final:
            latest = ckpt.latest(self.run_dir / "checkpoints")
            self.report(final, str(_pin(latest, self.setup.keep)) if latest is not None else None)
        if self.last is None:
            raise self.missing()

    def missing(self) -> ConfigError:
        metric = self.setup.metric
        error = ConfigError.one(
            "tune.metric",
            metric,
            f"is not among the metrics trial {self.trial_id} reports{suggest(metric, self.reported)}: "
            f"{', '.join(self.reported) or 'none'}",
        )
        marker = Path(self.setup.experiment_dir) / METRIC_MARKER
        with contextlib.suppress(OSError):
            marker.write_text(str(error))
        return error


@dataclass
class TuneWorkerEnv(loop.WorkerEnv):
    """The loop inside a trial actor (``num_workers=0``): reports go straight to Tune."""

    reporter: _Reporter | None = None
    keep: int = 3

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        assert self.reporter is not None
        pinned = str(_pin(checkpoint, self.keep)) if checkpoint is not None else None
        self.reporter.report(metrics, pinned)


def _relay_class() -> type:
    from ray.train.v2.api.callback import UserCallback

    class Relay(UserCallback):
        """Runs in the Ray Train controller: hands every report (rank 0's metrics, pinned checkpoint) to the trial.

        The queue holds one item, so training runs at most a report ahead of Tune.
        """

        def __init__(self, queue: Any, keep: int) -> None:
            self.queue = queue
            self.keep = keep

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            from engine.distributed import POINTER

            pinned = None
            if checkpoint is not None:
                try:
                    with checkpoint.as_directory() as directory:
                        data = json.loads((Path(directory) / POINTER).read_text())
                    pinned = str(_pin(Path(data["path"]), self.keep))
                except (OSError, ValueError, KeyError) as e:
                    log.warning("gentrain: could not keep checkpoint of this report for Tune: %s", e)
            self.queue.put((dict(metrics[0]) if metrics else {}, pinned))

    Relay.__qualname__ = Relay.__name__ = "GentrainTuneRelay"
    return Relay


def _name_this_cluster_for_train() -> None:
    """Let Ray Train's placement-group cleaner find this cluster when several run on one machine.

    When Tune stops a trial it kills the trial actor, and with it the Train
    controller; the worker group's placement group is then removed by Train's
    ``PlacementGroupCleaner``, which asks the State API whether the controller
    is alive. In Ray 2.60 that call finds the cluster from ``RAY_ADDRESS``, else
    by looking for running GCS processes, and fails on a machine with two or
    more Ray clusters ("Found multiple active Ray instances"): the placement
    group leaks and later trials wait for its CPUs until they time out.
    Passing ``RAY_ADDRESS`` to the controller (whose children, the cleaner
    among them, inherit it) avoids that.
    """
    import ray

    try:
        from ray.train.v2._internal import constants
    except ImportError:
        return
    address = ray.get_runtime_context().gcs_address
    propagated = getattr(constants, "ENV_VARS_TO_PROPAGATE", None)
    if address and isinstance(propagated, set):
        os.environ["RAY_ADDRESS"] = address
        propagated.add("RAY_ADDRESS")


def _fit_on_train(run_config: RunConfig, reporter: _Reporter, keep: int) -> dict[str, float]:
    """Run the trial's training on Ray Train workers; relay each report to Tune from this thread.

    Returns rank 0's last metrics.
    """
    from ray.train.torch import TorchConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer
    from ray.util.queue import Empty, Queue

    from engine import distributed

    _name_this_cluster_for_train()
    scaling = run_config.scaling
    resources = distributed.worker_resources(scaling)
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    train_run = distributed.ray_run_config(run_config)
    train_run.callbacks = [*(train_run.callbacks or []), _relay_class()(queue, keep)]
    per_worker: Any = distributed._train_loop_per_worker
    launch = {"id": uuid.uuid4().hex, "time": time.time()}
    outcome: dict[str, Any] = {}
    trainer = TorchTrainer(
        per_worker,
        train_loop_config={"run_config": run_config.to_dict(), "launch": launch},
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=distributed.ray_scaling_config(scaling, resources),
        run_config=train_run,
    )

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="gentrain-train-fit", daemon=True)
    thread.start()
    while True:
        try:
            item = queue.get(timeout=0.5)
        except Empty:
            if thread.is_alive():
                continue
            try:  # reports put before fit() returned
                item = queue.get_nowait()
            except Empty:
                break
        reporter.report(*item)
    thread.join()
    error = outcome.get("error")
    if error is not None:
        if isinstance(error, Exception):
            raise distributed.engine_error(error, run_config) from error
        raise error
    # Rank 0's return value: the loop's last metrics (Result.metrics holds only reports with a checkpoint).
    returned = getattr(outcome.get("result"), "return_value", None)
    return dict(returned) if isinstance(returned, Mapping) else {}


def _adopt_checkpoint(run_dir: Path) -> str | None:
    """If Tune restarts this trial from another trial's checkpoint (PBT exploit), make it this run's newest.

    Returns the id of the trial cloned, or ``None``. A trial's own checkpoint
    (a retry, a resumed experiment) needs nothing: the run directory's newest
    file is at least as new.
    """
    from ray import tune as ray_tune

    found = ray_tune.get_checkpoint()
    if found is None:
        return None
    with found.as_directory() as directory:
        path = Path(directory) / TUNE_POINTER
        if not path.is_file():
            return None
        pointer = json.loads(path.read_text())
    if Path(pointer["run_dir"]) == run_dir:
        return None
    source = Path(pointer["path"])
    if not source.is_file():
        raise CheckpointError(
            f"trial {pointer.get('trial_id')}'s checkpoint {source}, which PBT cloned into this trial, no longer "
            f"exists; raise trainer.keep_checkpoints"
        )
    directory = run_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    for old in ckpt.list_checkpoints(directory):
        old.unlink(missing_ok=True)
    name = source.name.split("-", 1)[1] if source.parent.name == PINS else source.name  # step=N.pt
    tmp = directory / f".{name}.adopt.tmp"
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, directory / name)
    with (run_dir / "exploits.log").open("a") as f:
        f.write(f"{time.time():.3f} cloned {pointer.get('trial_id')} {name}\n")
    return str(pointer.get("trial_id"))


def make_trainable(setup: TrialSetup) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable of an experiment: one gentrain run per trial."""

    def gentrain_trial(params: dict[str, Any]) -> None:
        from ray import tune as ray_tune

        _apply_env(setup.env)
        # One INFO line per checkpoint handed to Tune, in every trial.
        for name in ("ray.train", "ray.train._internal.storage", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)
        marker = Path(setup.experiment_dir) / METRIC_MARKER
        if marker.exists():
            raise ConfigError.one("tune.metric", setup.metric, f"the search was stopped: {marker.read_text()}")
        trial_id = ray_tune.get_context().get_trial_id()
        plugins = load_plugins()
        with using(plugins):
            run_config = trial_config(setup, params, trial_id, plugins)
            run_dir = loop.run_dir_of(run_config)
            _adopt_checkpoint(run_dir)
            reporter = _Reporter(setup, trial_id, run_dir)
            if run_config.scaling.num_workers == 0:
                device = torch.device("cuda") if run_config.scaling.use_gpu else torch.device("cpu")
                env = TuneWorkerEnv(device=device, reporter=reporter, keep=setup.keep)
                final = loop.train(run_config, env, plugins)
            else:
                # Ray Train reads its settings from the environment of the process calling fit().
                os.environ[_START_TIMEOUT_ENV] = f"{run_config.scaling.start_timeout_s:g}"
                final = _fit_on_train(run_config, reporter, setup.keep)
            reporter.finish(final)

    def run_trial(params: dict[str, Any]) -> None:
        try:
            gentrain_trial(params)
        except GentrainError as e:
            # Tune sends the error to the driver pickled: send one that survives that.
            from engine.distributed import sendable_error

            sendable = sendable_error(e, 0)
            if sendable is e:
                raise
            raise sendable from None

    run_trial.__name__ = run_trial.__qualname__ = "gentrain_trial"
    return run_trial


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _stopper_class() -> type:
    from ray.tune import Stopper

    class MetricMissingStopper(Stopper):
        """Ends the whole search once a trial found that the metric is never reported."""

        def __init__(self, experiment_dir: str) -> None:
            self.marker = Path(experiment_dir) / METRIC_MARKER

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.marker.exists()

    return MetricMissingStopper


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


@dataclass
class TrialSummary:
    """One trial, as the table, the CSV and the plot show it."""

    trial_id: str
    params: dict[str, Any]
    epochs: int
    metric: float | None
    best: float | None
    status: str
    run_dir: Path
    error: str | None = None
    history: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class TuneResult:
    """What :func:`tune` returns."""

    experiment_dir: Path
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config: RunConfig | None
    best_config_path: Path | None
    csv_path: Path
    plot_path: Path | None
    result_grid: Any = None

    def table(self) -> str:
        """The trials, best first: id, searched values, epochs, last and best metric, status."""
        keys = sorted({k for t in self.trials for k in t.params})
        head = ["trial", *keys, "epochs", self.metric, "best", "status"]
        rows = [
            [t.trial_id, *(_fmt(t.params.get(k)) for k in keys), str(t.epochs), _fmt(t.metric), _fmt(t.best), t.status]
            for t in self.trials
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        """The table and where the outputs are."""
        lines = ["", f"{len(self.trials)} trial(s), {self.metric} ({self.mode}):", self.table(), ""]
        if self.best is not None:
            lines.append(f"best trial: {self.best.trial_id}  {self.metric} = {_fmt(self.best.metric)}")
        lines.append(f"experiment: {self.experiment_dir}")
        lines.append(f"  trials.csv: {self.csv_path}")
        if self.plot_path is not None:
            lines.append(f"  trials.png: {self.plot_path}")
        if self.best_config_path is not None:
            lines.append(f"  best.yaml:  {self.best_config_path}   (gentrain fit {self.best_config_path})")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def tune(
    config: RunConfig | Mapping[str, Any],
    search_space: Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    hyperparam_mutations: Mapping[str, Any] | None = None,
    resume: bool = False,
    plugins: PluginManager | None = None,
    verbose: int = 1,
) -> TuneResult:
    """Search hyperparameters of ``config``: every trial is one training run, on its own Ray Train workers.

    :param config: the run config every trial starts from (a :class:`RunConfig` or a dict);
        its ``tune`` section says what to optimise and how (:class:`~engine.config.TuneSection`).
    :param search_space: ``{dotted config key: distribution}`` with Ray Tune's distributions
        (``tune.loguniform(1e-4, 1e-2)``, ``tune.choice([8, 16])``, ``tune.grid_search([...])``),
        the file form (``{"loguniform": [1e-4, 1e-2]}``, :func:`load_space`) or constants.
    :param overrides: dotted overrides applied to ``config``.
    :param hyperparam_mutations: what PBT perturbs (default: every searched key).
    :param resume: continue the experiment named ``run.name`` (default: the newest
        ``tune-<model>-*`` in ``run.output_dir``) where it stopped.
    :param verbose: Tune's console output, 0 (none) to 3.
    :raises ConfigError: before Ray starts, for a bad config, a key that is not a config field,
        a value a field does not allow, a metric the model does not report, a missing optional package.
    """
    from engine.api import prepare

    with using(plugins) as pm:
        raw = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        raw = build_raw(raw, overrides)
        given = resolve(raw, pm)
        space = normalize_space(search_space or {})
        output_dir = Path(given.run.output_dir).expanduser().resolve()
        scheduler = search_alg = None
        if resume:
            experiment_dir = _find_experiment(output_dir, given)
            setup = TrialSetup.from_json(json.loads((experiment_dir / SETUP_FILE).read_text()))
            setup.env = _driver_env()
            settings = resolve(setup.base, pm).tune
        else:
            if not space:
                raise ConfigError.one("<search space>", {}, "is empty: give at least one dotted key to search")
            check_space(raw, space, pm)
            name = given.run.name or f"tune-{given.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            experiment_dir = output_dir / name
            if (experiment_dir / SETUP_FILE).exists():
                raise ConfigError.one(
                    "run.name",
                    name,
                    f"an experiment of this name exists in {output_dir}; resume it (gentrain tune --resume, "
                    f"tune(..., resume=True)) or choose another run.name",
                )
            sample = build_raw(raw, representative(space))
            set_dotted(sample, "run.name", "trial")
            prepared, dataset = prepare(sample, (), pm)
            settings = prepared.tune
            metric = choose_metric(prepared, dataset, pm)
            setup = _setup(prepared, experiment_dir, metric)
            epochs = prepared.trainer.epochs
            scheduler = make_scheduler(settings, epochs, setup, space, hyperparam_mutations)
            if settings.scheduler == "pbt":
                if hyperparam_mutations:
                    check_space(raw, normalize_space(hyperparam_mutations), pm)
                check_mutations(sample, dataset, pbt_mutations(space, hyperparam_mutations), pm)
            search_alg = make_search(settings, space)
        scaling = resolve(setup.base, pm).scaling
        concurrency, local = _connect_and_count(settings, scaling)
        if local:
            # Spot-instance preemption cannot happen on this machine (ray#53727).
            setup.env[_PREEMPTION_WATCHER_ENV] = os.environ.get(_PREEMPTION_WATCHER_ENV, "0")
        setup.driver_resources = trial_resources(scaling)
        if not resume:
            experiment_dir.mkdir(parents=True, exist_ok=True)
            (experiment_dir / SETUP_FILE).write_text(json.dumps(setup.to_json(), indent=1))
        grid = _run_tuner(setup, space, settings, scheduler, search_alg, concurrency, resume, verbose)
        return summarize(grid, setup, None if resume else str(output_dir))


def _driver_env() -> dict[str, str | None]:
    """What trials take from this process: the plugin selection, ``PYTHONPATH``, Ray Train's settings."""
    from engine.distributed import PROPAGATED_ENV

    env: dict[str, str | None] = {k: os.environ.get(k) for k in PROPAGATED_ENV}
    for key, value in TRAIN_ENV_DEFAULTS.items():
        env[key] = os.environ.get(key, value)
    return env


def _setup(prepared: RunConfig, experiment_dir: Path, metric: str) -> TrialSetup:
    base = prepared.to_dict()
    base["run"] = {**base["run"], "name": None, "output_dir": str(experiment_dir / "runs"), "resume": "auto"}
    t = prepared.tune
    keep = prepared.trainer.keep_checkpoints
    if t.scheduler == "pbt":
        # PBT clones the checkpoint a trial had at its last perturbation time.
        every = prepared.trainer.checkpoint_every
        keep = max(keep, 2 * math.ceil(t.perturbation_interval / every) + 2)
    return TrialSetup(
        base=base,
        experiment_dir=str(experiment_dir),
        metric=metric,
        mode=t.mode,
        env=_driver_env(),
        keep=keep,
        driver_resources={},
    )


def _find_experiment(output_dir: Path, given: RunConfig) -> Path:
    if given.run.name is not None:
        found = output_dir / given.run.name
        if not (found / SETUP_FILE).is_file():
            raise ConfigError.one("run.name", given.run.name, f"no gentrain tune experiment in {found} to resume")
        return found
    candidates = sorted(
        (p for p in output_dir.glob(f"tune-{given.model.name}-*") if (p / SETUP_FILE).is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise ConfigError.one(
            "run.name", None, f"no tune-{given.model.name}-* experiment in {output_dir} to resume; set run.name"
        )
    return candidates[-1]


def known_metrics(config: RunConfig, dataset: Any, plugins: PluginManager) -> set[str] | None:
    """The metric keys the loop will report for this model, from one step on four images (``None``: unknown)."""
    from engine.data import to_float

    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = plugins.models.get(config.model.name).obj(config.model.params, dataset.spec)
            batch = (to_float(dataset.images[:4]), dataset.labels[:4])
            phases = model.phases()
            keys = {"epoch", "step"}
            for phase in phases:
                prefix = f"{phase.name}/" if len(phases) > 1 else ""
                keys |= {f"train/{prefix}{k}" for k in model.training_step(batch, phase.name)}
            if config.data.val_fraction > 0:
                model.eval()
                with torch.no_grad():
                    keys |= {f"val/{k}" for k in model.validation_step(batch)}
    except Exception as e:  # a model that cannot run on four images: the trials will tell
        log.debug("could not list the metrics of %s: %s", config.model.name, e)
        return None
    return keys


def choose_metric(config: RunConfig, dataset: Any, plugins: PluginManager) -> str:
    """``tune.metric``, checked against what the model reports; a default if it is not set."""
    known = known_metrics(config, dataset, plugins)
    metric = config.tune.metric
    # Plugins may add metrics at the end of validation (a sample score, say).
    adders = [
        name
        for name, info in plugins.info.items()
        if not info.builtin
        and ("gentrain_on_validation_end" in info.hooks or "gentrain_on_train_epoch_end" in info.hooks)
    ]
    if metric is None:
        for candidate in DEFAULT_METRICS:
            if known is not None and candidate in known:
                return candidate
        listed = ", ".join(sorted(known)) if known else "unknown"
        raise ConfigError.one("tune.metric", None, f"required for model {config.model.name!r}; it reports: {listed}")
    if known is None or metric in known or adders:
        return metric
    raise ConfigError.one(
        "tune.metric",
        metric,
        f"is not reported by model {config.model.name!r}{suggest(metric, known)}; it reports: "
        f"{', '.join(sorted(known))}",
    )


def make_scheduler(
    settings: TuneSection,
    epochs: int,
    setup: TrialSetup,
    space: Mapping[str, Any],
    mutations: Mapping[str, Any] | None,
) -> Any:
    """Tune's trial scheduler for ``tune.scheduler``; time is counted in epochs."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "asha":
        if settings.grace_period > epochs:
            raise ConfigError.one(
                "tune.grace_period", settings.grace_period, f"must not exceed trainer.epochs={epochs}"
            )
        return ASHAScheduler(
            time_attr="epoch",
            max_t=epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if settings.scheduler == "pbt":
        every = int(setup.base["trainer"]["checkpoint_every"])
        if settings.perturbation_interval % every:
            raise ConfigError.one(
                "tune.perturbation_interval",
                settings.perturbation_interval,
                f"must be a multiple of trainer.checkpoint_every={every} (PBT clones checkpoints)",
            )
        found = pbt_mutations(space, mutations)
        if not found:
            raise ConfigError.one(
                "tune.scheduler", "pbt", "needs hyperparameters to perturb: a range or choice in the search space"
            )
        return _final_epoch_pbt()(
            last_epoch=epochs,
            time_attr="epoch",
            perturbation_interval=settings.perturbation_interval,
            hyperparam_mutations=found,
            quantile_fraction=settings.quantile_fraction,
            resample_probability=settings.resample_probability,
        )
    return FIFOScheduler()


def _final_epoch_pbt() -> Any:
    """Tune's PBT, except that a trial's last epoch is never a perturbation point.

    Tune's PBT also exploits on a trial's final result: the trial then takes the
    donor's perturbed hyperparameters and restores the donor's last checkpoint,
    with no epoch left to train, so its reported config (and ``best.yaml``) would
    name values it never trained with.
    """
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class FinalEpochPBT(PopulationBasedTraining):
        def __init__(self, *, last_epoch: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.last_epoch = last_epoch

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> Any:
            if result.get(self._time_attr, 0) >= self.last_epoch:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    return FinalEpochPBT


def make_search(settings: TuneSection, space: Mapping[str, Any]) -> Any:
    """Tune's search algorithm for ``tune.search``; Optuna and HyperOpt are optional packages.

    ``None`` for random and grid search: Tune's own variant generator, built
    in :func:`_run_tuner` once the number of concurrent trials is known (Tune
    ignores ``max_concurrent_trials`` for a generator passed in).
    """
    name = settings.search
    if name in ("random", "grid"):
        return None
    package = {"optuna": "optuna", "hyperopt": "hyperopt"}[name]
    if importlib.util.find_spec(package) is None:
        extra = "pip install 'gentrain[search]'" if name == "optuna" else "pip install hyperopt"
        raise ConfigError.one("tune.search", name, f"needs the {package} package, which is not installed: {extra}")
    grids = [k for k, v in space.items() if _is_grid(v)]
    if grids:
        raise ConfigError.one(
            "tune.search", name, f"cannot search grids ({', '.join(grids)}); use tune.choice or tune.search=random"
        )
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=settings.seed)
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(random_state_seed=settings.seed)


def _connect_and_count(settings: TuneSection, scaling: ScalingConfig) -> tuple[int, bool]:
    """Start or join Ray; check one trial fits; return how many trials run at once, and if all nodes are here."""
    import ray
    import ray.util

    from engine import distributed

    if scaling.num_workers > 0:
        from ray.train.v2._internal.constants import is_v2_enabled

        if not is_v2_enabled():
            raise ConfigError.one(
                "scaling.num_workers",
                "RAY_TRAIN_V2_ENABLED=0",
                "gentrain runs on Ray Train V2; unset RAY_TRAIN_V2_ENABLED",
            )
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    distributed.ensure_ray()
    alive = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.util.get_node_ip_address()
    local = all(n.get("NodeManagerAddress") == here for n in alive)
    nodes = [dict(n.get("Resources", {})) for n in alive]
    per_worker = distributed.worker_resources(scaling)
    autoscaling = os.environ.get(distributed.AUTOSCALING_ENV, "").lower() in ("1", "true", "yes")
    if autoscaling:
        return settings.max_concurrent_trials or settings.num_samples, local
    if scaling.num_workers > 0:
        distributed.check_cluster(scaling, per_worker, nodes)
    room = max_concurrent(scaling, per_worker, nodes)
    if room == 0:
        raise ConfigError.one(
            "scaling", dict(per_worker), "the Ray cluster has no node with room for one trial's resources"
        )
    return settings.max_concurrent_trials or room, local


def _run_tuner(
    setup: TrialSetup,
    space: Mapping[str, Any],
    settings: TuneSection,
    scheduler: Any,
    search_alg: Any,
    concurrency: int,
    resume: bool,
    verbose: int,
) -> Any:
    from ray import tune as ray_tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = ray_tune.with_resources(make_trainable(setup), dict(setup.driver_resources))
    experiment_dir = Path(setup.experiment_dir)
    with _quiet_tune():
        if resume:
            if not ray_tune.Tuner.can_restore(str(experiment_dir)):
                raise ConfigError.one(
                    "run.name",
                    experiment_dir.name,
                    f"Tune saved no experiment state in {experiment_dir} before it stopped, so there is nothing "
                    f"to resume; start the search again under another run.name",
                )
            (experiment_dir / METRIC_MARKER).unlink(missing_ok=True)
            tuner = ray_tune.Tuner.restore(
                str(experiment_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = ray_tune.Tuner(
                trainable,
                param_space=dict(space),
                tune_config=ray_tune.TuneConfig(
                    metric=setup.metric,
                    mode=setup.mode,
                    num_samples=settings.num_samples,
                    scheduler=scheduler,
                    search_alg=search_alg
                    or BasicVariantGenerator(max_concurrent=concurrency, random_state=settings.seed),
                    max_concurrent_trials=None if search_alg is None else concurrency,
                    reuse_actors=False,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=ray_tune.RunConfig(
                    name=experiment_dir.name,
                    storage_path=str(experiment_dir.parent),
                    failure_config=ray_tune.FailureConfig(max_failures=settings.max_failures),
                    # Tune keeps every pointer (a few bytes each); the files they name are
                    # pruned to setup.keep per trial (_pin). Tune's own pruning, under PBT,
                    # trips over checkpoints that exploited trials point to.
                    checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=None),
                    stop=_stopper_class()(str(experiment_dir)),
                    verbose=verbose,
                ),
            )
        with warnings.catch_warnings():
            # Each trial gets a fresh actor on purpose: its environment and plugins are the driver's.
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
            # Tune leaves the result.json of errored trials open when a stopper ends the search (Ray 2.60).
            warnings.simplefilter("ignore", ResourceWarning)
            grid = tuner.fit()
            gc.collect()
    marker = experiment_dir / METRIC_MARKER
    if marker.exists():
        raise ConfigError.one("tune.metric", setup.metric, marker.read_text().partition(": ")[2].strip() or "missing")
    return grid


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's INFO lines about each checkpoint and trial; warnings and errors stay."""
    names = ["ray.tune", "ray.train", "ray.air"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(max(logging.WARNING, saved[n]))
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


# ---------------------------------------------------------------------------
# results: table, CSV, plot, best config
# ---------------------------------------------------------------------------


def summarize(grid: Any, setup: TrialSetup, output_dir: str | None) -> TuneResult:
    """Turn Tune's results into the table, ``trials.csv``, ``trials.png`` and ``best.yaml``."""
    experiment_dir = Path(setup.experiment_dir)
    epochs_max = int(setup.base["trainer"]["epochs"])
    sign = 1.0 if setup.mode == "min" else -1.0
    trials = []
    for result in grid:
        trials.append(_summary(result, setup, epochs_max, sign))
    trials.sort(key=lambda t: (t.metric is None, sign * t.metric if t.metric is not None else 0.0, t.trial_id))
    best = next((t for t in trials if t.metric is not None and t.error is None), None)
    if best is None:
        best = next((t for t in trials if t.metric is not None), None)
    csv_path = experiment_dir / "trials.csv"
    write_csv(trials, setup, csv_path)
    plot_path = plot_trials(trials, setup.metric, experiment_dir / "trials.png")
    best_config = best_path = None
    if best is not None:
        best_config = best_run_config(setup, best, output_dir)
        best_path = experiment_dir / "best.yaml"
        best_config.save(best_path)
    elif trials and all(t.error for t in trials):
        raise TrainingError(
            f"every trial of {experiment_dir} failed; the first: {trials[0].trial_id}: {trials[0].error}"
        )
    return TuneResult(
        experiment_dir=experiment_dir,
        metric=setup.metric,
        mode=setup.mode,
        trials=trials,
        best=best,
        best_config=best_config,
        best_config_path=best_path,
        csv_path=csv_path,
        plot_path=plot_path,
        result_grid=grid,
    )


def _summary(result: Any, setup: TrialSetup, epochs_max: int, sign: float) -> TrialSummary:
    metric = setup.metric
    trial_id = Path(result.path).name
    params = {k: _native(result.config.get(k)) for k in result.config}
    run_dir = Path(setup.base["run"]["output_dir"]) / trial_id
    frame = result.metrics_dataframe
    history: list[tuple[float, float]] = []
    if (run_dir / HISTORY).is_file():
        for line in (run_dir / HISTORY).read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                history.append((float(entry["epoch"]), float(entry[metric])))
    elif frame is not None and len(frame) and metric in frame and "epoch" in frame:
        rows = frame[["epoch", metric]].dropna()
        history = [(float(e), float(v)) for e, v in zip(rows["epoch"], rows[metric], strict=True)]
    last = result.metrics.get(metric) if result.metrics else None
    epochs = int(result.metrics.get("epoch", 0)) if result.metrics else 0
    best = None
    if history:
        best = sign * min(sign * v for _, v in history)
    error = None
    if result.error is not None:
        text = str(_root(result.error)).strip().splitlines()
        error = f"{type(_root(result.error)).__name__}: {text[0] if text else ''}"
        status = "error"
    elif epochs >= epochs_max:
        status = "completed"
    else:
        status = "stopped early"
    return TrialSummary(
        trial_id=trial_id,
        params=params,
        epochs=epochs,
        metric=float(last) if isinstance(last, (int, float)) else None,
        best=best,
        status=status,
        run_dir=run_dir,
        error=error,
        history=history,
    )


def _root(error: BaseException) -> BaseException:
    from engine.distributed import root_cause

    return root_cause(error)


def write_csv(trials: list[TrialSummary], setup: TrialSetup, path: Path) -> None:
    keys = sorted({k for t in trials for k in t.params})
    metric = setup.metric
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", *keys, "epochs", metric, f"best {metric}", "status", "run_dir", "error"])
        for t in trials:
            values = [t.params.get(k, "") for k in keys]
            outcome = [t.status, str(t.run_dir), t.error or ""]
            writer.writerow([t.trial_id, *values, t.epochs, _csv(t.metric), _csv(t.best), *outcome])


def _csv(value: float | None) -> str:
    return "" if value is None else repr(value)


def plot_trials(trials: list[TrialSummary], metric: str, path: Path) -> Path | None:
    """Every trial's metric over epochs, one line per trial."""
    if not any(t.history for t in trials):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        if t.history:
            xs, ys = zip(*t.history, strict=True)
            label = t.trial_id + " " + " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in t.params.items())
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of every trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def best_run_config(setup: TrialSetup, best: TrialSummary, output_dir: str | None) -> RunConfig:
    """The best trial's whole run config, named for a new run: ``gentrain fit best.yaml`` trains it."""
    raw = copy.deepcopy(setup.base)
    for key, value in best.params.items():
        set_dotted(raw, key, value)
    experiment_dir = Path(setup.experiment_dir)
    raw["run"] = {
        **raw["run"],
        "name": f"{experiment_dir.name}-best",
        "output_dir": output_dir or str(experiment_dir.parent),
        "resume": "auto",
    }
    return resolve(raw)


__all__ = [
    "SPECS",
    "TrialSummary",
    "TuneResult",
    "check_space",
    "load_space",
    "max_concurrent",
    "normalize_space",
    "trial_resources",
    "tune",
]
