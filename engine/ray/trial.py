"""What runs inside a Tune trial: one gentrain training run, its reports to Tune, and PBT's clones.

The Tune trial actor runs :func:`make_trainable`'s function, once per trial::

    Tune trial actor (one per trial)                 Ray Train workers
    --------------------------------                 -----------------
    gentrain_trial(params)
      config = base + params, run.name = trial id
      adopt a PBT donor's checkpoint, if any
      num_workers = 0: loop.train() right here
      num_workers > 0: fit_on_train():
        make_trainer(config, [relay])               train_loop_per_worker
        fit_trainer() in a thread; the relay,         (engine.ray.train)
        in Train's controller, hands each report
        to this thread: Reporter.report(metrics, pointer) -> tune.report

Checkpoints and PBT. A trial's engine checkpoints are the loop's own files in
its run directory. What Tune receives with each report is a *pointer*: a
directory holding one JSON file that names a hard link of that file under
``runs/<trial id>/.ray/tune-checkpoints/``, out of reach of the loop's
``keep_checkpoints`` pruning (the newest ``trainer.keep_checkpoints`` links are
kept; more under PBT, which clones the checkpoint a trial had at its last
perturbation). Tune's ``TuneReportCallback`` is not used: it forwards only
metrics, and PBT's exploit step needs a Tune checkpoint. When PBT clones
trial A into trial B, Tune restarts B with A's pointer as
``tune.get_checkpoint()`` and B's perturbed config: B replaces the files in
its run directory's ``checkpoints/`` with A's file (``exploits.log`` records
it), and the loop resumes from it (model, optimizer state, epoch, RNG) while
taking hyperparameters from B's config
(:func:`engine.optim.apply_hyperparameters`).

Failures. A trial's run name is its trial id, so a trial that Tune starts
again (after a raise, a dead worker once ``scaling.max_failures`` restarts are
spent, a dead trial actor) resumes from the newest checkpoint in its run
directory. A metric that the trial's validation does not report writes
:data:`METRIC_MARKER`, which stops the whole search.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import checkpoint as ckpt
from engine import loop
from engine.config import RunConfig, resolve, set_dotted
from engine.errors import CheckpointError, ConfigError, GentrainError, suggest
from engine.plugins import PluginManager, load_plugins, using
from engine.ray import cluster
from engine.ray import console as ray_console
from engine.ray.space import native
from engine.ray.train import POINTER, fit_trainer, make_trainer, pointer_directory, read_pointer, sendable_error
from engine.trainer import WorkerEnv

log = logging.getLogger(__name__)

#: The file inside a Tune checkpoint directory that names the engine checkpoint.
TUNE_POINTER = "gentrain-tune-checkpoint.json"
#: Folder of a trial's run directory holding the checkpoints Tune's pointers name (with Ray's own files).
PINS = ".ray/tune-checkpoints"
#: In a trial's run directory: every result handed to Tune, ``{"epoch": ..., "<metric>": ...}`` per line,
#: across restarts and PBT clones (Tune's own per-trial log starts again when PBT clones a trial).
HISTORY = "tune-history.jsonl"
#: Written when the metric is missing from what the trials report: the search stops.
METRIC_MARKER = ".gentrain-metric-missing"


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
        set_dotted(raw, key, native(value))
    raw.setdefault("run", {})["name"] = trial_id
    return resolve(raw, plugins)


def apply_env(env: Mapping[str, str | None]) -> None:
    """Give this trial actor the driver's plugin selection (and Ray settings): what ``GENTRAIN_*`` said there."""
    cluster.set_environ(env)
    for entry in reversed((env.get("PYTHONPATH") or "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)


# ---------------------------------------------------------------------------
# checkpoints Tune points to
# ---------------------------------------------------------------------------


def _link(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` atomically: a hard link where the file system allows, else a copy."""
    tmp = target.parent / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def pin(path: Path, keep: int) -> Path:
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
    _link(path, target)
    for old in sorted(pins.glob("*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return target


def adopt_checkpoint(run_dir: Path) -> str | None:
    """If Tune restarts this trial from another trial's checkpoint (PBT exploit), make it this run's newest.

    Returns the id of the trial cloned, or ``None``. A trial's own checkpoint
    (a retry, a resumed experiment) needs nothing: the run directory's newest
    file is at least as new.
    """
    from ray import tune as ray_tune

    pointer = read_pointer(ray_tune.get_checkpoint(), TUNE_POINTER)
    if pointer is None or Path(pointer["run_dir"]) == run_dir:
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
    name = source.name.split("-", 1)[1] if source.parent.name == Path(PINS).name else source.name  # step=N.pt
    _link(source, directory / name)
    _append_line(run_dir / "exploits.log", f"{time.time():.3f} cloned {pointer.get('trial_id')} {name}")
    return str(pointer.get("trial_id"))


def _append_line(path: Path, line: str) -> None:
    """Append ``line``; a line a killed trial left without its newline is ended first, not merged into."""
    torn = False
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, 2)
            torn = f.read(1) != b"\n"
    with path.open("ab") as f:
        f.write((b"\n" if torn else b"") + line.encode() + b"\n")


# ---------------------------------------------------------------------------
# reports to Tune
# ---------------------------------------------------------------------------


class Reporter:
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _append_line(
            self.run_dir / HISTORY,
            json.dumps({"epoch": values.get("epoch"), metric: values[metric], "time": time.time()}),
        )
        if pinned is None:
            ray_tune.report(values, checkpoint=None)
            return
        pointer = {"path": pinned, "run_dir": str(self.run_dir), "trial_id": self.trial_id}
        with pointer_directory(TUNE_POINTER, pointer) as tmp:
            ray_tune.report(values, checkpoint=ray_tune.Checkpoint.from_directory(tmp))

    def finish(self, final: Mapping[str, Any]) -> None:
        """After training: a run that resumed at its end reported nothing, so report its last metrics."""
        if self.last is None and self.setup.metric in final:
            latest = ckpt.latest(self.run_dir / "checkpoints")
            self.report(final, str(pin(latest, self.setup.keep)) if latest is not None else None)
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
class TuneWorkerEnv(WorkerEnv):
    """The loop inside a trial actor (``num_workers=0``): reports go straight to Tune."""

    reporter: Reporter | None = None
    keep: int = 3

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        assert self.reporter is not None
        pinned = str(pin(checkpoint, self.keep)) if checkpoint is not None else None
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
            pinned = None
            if checkpoint is not None:
                try:
                    pointer = read_pointer(checkpoint, POINTER)
                    if pointer is None:
                        raise KeyError(POINTER)
                    pinned = str(pin(Path(pointer["path"]), self.keep))
                except (OSError, ValueError, KeyError) as e:
                    log.warning("gentrain: could not keep checkpoint of this report for Tune: %s", e)
            self.queue.put((dict(metrics[0]) if metrics else {}, pinned))

    Relay.__qualname__ = Relay.__name__ = "GentrainTuneRelay"
    return Relay


# ---------------------------------------------------------------------------
# the trial
# ---------------------------------------------------------------------------


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


def fit_on_train(run_config: RunConfig, reporter: Reporter, keep: int, console: Any = None) -> dict[str, float]:
    """Run the trial's training on Ray Train workers; relay each report to Tune from this thread.

    The same trainer as a single run's (:func:`engine.ray.train.make_trainer`),
    with a callback that queues every report; ``fit()`` runs in a second
    thread, since ``tune.report`` must be called from this one. Returns rank 0's last metrics.
    """
    from ray.util.queue import Empty, Queue

    _name_this_cluster_for_train()
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = make_trainer(run_config, callbacks=[_relay_class()(queue, keep)], console=console)
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["metrics"] = fit_trainer(trainer, run_config)
        except BaseException as e:
            outcome["error"] = e

    # Ray Train reads its settings from the environment of the process calling fit().
    with cluster.ray_environment(cluster.start_timeout(run_config.scaling)):
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
    if "error" in outcome:
        raise outcome["error"]
    metrics: dict[str, float] = outcome["metrics"]
    return metrics


def make_trainable(setup: TrialSetup) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable of an experiment: one gentrain run per trial."""

    def gentrain_trial(params: dict[str, Any]) -> None:
        from ray import tune as ray_tune

        apply_env(setup.env)
        quiet = os.environ.get(ray_console.TRIAL_CONSOLE_ENV) == ray_console.OFF
        if quiet:  # gentrain tune prints its own table
            ray_console.install_worker_console(ray_console.OFF, 0, 1)
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
            adopt_checkpoint(run_dir)
            reporter = Reporter(setup, trial_id, run_dir)
            if run_config.scaling.num_workers == 0:
                device = torch.device("cuda") if run_config.scaling.use_gpu else torch.device("cpu")
                env = TuneWorkerEnv(device=device, reporter=reporter, keep=setup.keep)
                final = loop.train(run_config, env, plugins)
            else:
                final = fit_on_train(run_config, reporter, setup.keep, ray_console.OFF if quiet else None)
            reporter.finish(final)

    def run_trial(params: dict[str, Any]) -> None:
        try:
            gentrain_trial(params)
        except GentrainError as e:
            # Tune sends the error to the driver pickled: send one that survives that.
            sendable = sendable_error(e, 0)
            if sendable is e:
                raise
            raise sendable from None

    run_trial.__name__ = run_trial.__qualname__ = "gentrain_trial"
    return run_trial


__all__ = [
    "HISTORY",
    "METRIC_MARKER",
    "Reporter",
    "TrialSetup",
    "TuneWorkerEnv",
    "adopt_checkpoint",
    "fit_on_train",
    "make_trainable",
    "pin",
    "trial_config",
]
