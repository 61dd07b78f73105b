"""Ray Train: the per-worker loop of :mod:`engine.loop` on a ``TorchTrainer``.

:func:`make_trainer` builds the one ``TorchTrainer`` of a run config, and
:func:`fit_trainer` runs it; together they serve a single run (:func:`fit_ray`,
what :func:`engine.fit` calls when ``scaling.num_workers > 0``) and a Tune
trial (:func:`engine.ray.trial.fit_on_train`, which adds a callback that
relays every report to Tune), as Ray's own Train-in-Tune pattern has one
driver function for a run and a trial::

    driver (engine.fit, or a Tune trial)       every Ray Train worker
    ------------------------------------       ----------------------
    prepare(config)        validated, paths absolute
    cluster.connect()      a `ray start` cluster, RAY_ADDRESS, or a local one;
                           fail fast if the cluster can never place the workers
    make_trainer(config)   TorchTrainer (+ a trial's report relay)
    fit_trainer()   -->                        train_loop_per_worker(config)
                                                 plugins.current()   (own plugin manager)
                                                 resolve(config)     once, against those plugins
                                                 RayWorkerEnv        (rank, device, DDP, report)
                                                 loop.train(...)     rank 0 writes checkpoints/step=N.pt
                                                 ray.train.report    every rank, every epoch (a barrier)
    metrics  <--                                 return value of rank 0: the last metrics

Checkpoints. Rank 0 writes the real checkpoint file into the run directory
(``<output_dir>/<run name>/checkpoints``); what it hands to Ray is a
*pointer*: a directory holding one small JSON file naming that file, so Ray
copies a few bytes into its storage instead of the model a second time. On a
restart the loop resumes from the newest file in the run directory (Ray
registers checkpoints on its controller's poll, so its own can lag by one or
two); the pointer is only a fallback. Ray's own files live under the run
directory's ``.ray/`` folder (``storage_path=<run dir>/.ray``, ``name=run.name``),
so a rerun of the same run name finds both, and gentrain's files stay at the top.

Failures. ``scaling.max_failures`` worker-group restarts are allowed; each
restarts every worker, which resumes from the last checkpoint. An engine error
that a restart would only repeat (a config or data error raised in a worker, a
refused checkpoint, a non-finite loss under ``nan_policy=raise``) ends the run
at once instead (``GentrainError.retryable``). A worker group
that cannot start within ``scaling.start_timeout_s`` ends the run (no endless
retries); a request the cluster can never satisfy (more workers, CPUs, GPUs or
custom resources than its nodes have) fails before anything starts, with a
:class:`~engine.errors.ConfigError` (:mod:`engine.ray.cluster`). An error
raised by the engine in a worker (a :class:`~engine.errors.GentrainError`)
reaches the caller as itself; any other worker failure becomes a
:class:`~engine.errors.TrainingError` naming the rank and the original error
(Ray's error, with the worker's traceback, stays attached as ``__cause__``).
``run.resume=never`` means "not from an earlier run": a restart after a worker
failure still continues from this run's checkpoint.

Nodes and devices. The run directory must be on storage every node sees (NFS
or similar): rank 0 writes there, and every rank reads from it on a restart.
With ``scaling.use_gpu`` each worker trains on its own GPU
(``ray.train.torch.get_device()``) with the NCCL backend; otherwise gloo on CPU.
Console (:mod:`engine.ray.console`): the driver says it starts Ray and when the
workers are ready, prints rank 0's progress lines (handed to it through a queue,
so without Ray's ``(RayTrainWorker pid=...)`` prefix) and one line per worker
failure; Ray Train's own log lines and tracebacks go to Ray's log files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine import checkpoint as ckpt
from engine import loop
from engine.config import RunConfig, resolve
from engine.data import load_dataset, split
from engine.errors import GentrainError, TrainingError
from engine.plugins import current
from engine.ray import cluster, console
from engine.trainer import WorkerEnv

if TYPE_CHECKING:
    from ray.train.v2.api.callback import UserCallback
    from ray.train.v2.torch.torch_trainer import TorchTrainer

#: The file inside a Ray Train checkpoint directory that names the real checkpoint.
POINTER = "gentrain-checkpoint.json"
#: The folder of a run directory that holds Ray Train's own files.
RAY_FOLDER = ".ray"


# ---------------------------------------------------------------------------
# the driver side
# ---------------------------------------------------------------------------


def fit_ray(run_config: RunConfig) -> dict[str, float]:
    """Train ``run_config`` (already validated by :func:`engine.prepare.prepare`) on Ray Train workers.

    Returns rank 0's last metrics; :func:`engine.fit` wraps them in its ``FitResult``.

    :raises ConfigError: the scaling request cannot work (before any worker starts).
    :raises GentrainError: an engine error raised in a worker, as itself.
    :raises TrainingError: any other failure, once ``scaling.max_failures`` restarts are spent.
    """
    with cluster.ray_environment(cluster.start_timeout(run_config.scaling)):
        console.say(cluster.starting_line())
        cluster.connect(run_config.scaling)
        with cluster.train_finds_this_cluster(), console.driver_console() as shown:
            console.say(f"starting {run_config.scaling.num_workers} worker(s)")
            notes = console.failure_notes(
                shown.queue,
                max_failures=run_config.scaling.max_failures,
                checkpoint_dir=loop.run_dir_of(run_config) / "checkpoints",
                root_cause=root_cause,
                retryable=retryable,
            )
            return fit_trainer(make_trainer(run_config, [notes], console=shown.queue), run_config)


def make_trainer(run_config: RunConfig, callbacks: Iterable[UserCallback] = (), console: Any = None) -> TorchTrainer:
    """The ``TorchTrainer`` that runs :func:`train_loop_per_worker` for ``run_config``.

    :param callbacks: Ray Train callbacks (run in Train's controller), such as
        a Tune trial's relay of every report.
    :param console: where the workers' console lines go (:func:`engine.ray.console.install_worker_console`):
        the driver's queue, ``"off"``, or ``None`` (printed, with Ray's prefix).

    Each trainer is one *launch*: its workers tell a restart within it (after
    a worker failure) from a rerun of the same run name (:meth:`RayWorkerEnv.restarted`).
    """
    from ray.train.torch import TorchConfig
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    launch = {"id": uuid.uuid4().hex, "time": time.time()}
    per_worker: Any = train_loop_per_worker  # Ray types it as returning None; we return metrics
    datasets = ray_datasets(run_config)
    data_args: dict[str, Any] = {}
    if datasets:
        from ray.train import DataConfig as RayDataConfig

        # Each worker streams a disjoint shard of "train"; validation reads files (engine.data.make_loader).
        data_args = dict(datasets=datasets, dataset_config=RayDataConfig(datasets_to_split=["train"]))
    return TorchTrainer(
        per_worker,
        train_loop_config={
            "run_config": run_config.to_dict(),
            "launch": launch,
            "datasets": sorted(datasets),
            "console": console,
        },
        **data_args,
        torch_config=TorchConfig(backend="nccl" if run_config.scaling.use_gpu else "gloo"),
        scaling_config=ray_scaling_config(run_config),
        run_config=ray_run_config(run_config, callbacks),
    )


def ray_datasets(run_config: RunConfig) -> dict[str, Any]:
    """``data.loader=ray_data``: the run's training split as a Ray Dataset (decoded on the cluster)."""
    if run_config.data.loader != "ray_data":
        return {}
    train_set, _ = split(load_dataset(run_config.data, current()), run_config.data)
    return {"train": train_set.ray_dataset()}


def fit_trainer(trainer: TorchTrainer, run_config: RunConfig) -> dict[str, float]:
    """Run ``trainer`` (from :func:`make_trainer`) under the engine's failure policy; rank 0's last metrics.

    :raises GentrainError: an engine error raised in a worker, as itself.
    :raises TrainingError: any other failed run (:func:`engine_error`).
    """
    from ray.train.v2.api.exceptions import TrainingFailedError

    try:
        with engine_failure_policy():
            result = trainer.fit()
    except TrainingFailedError as e:
        raise engine_error(e, run_config) from e
    # Rank 0's return value: the loop's last metrics. Result.metrics holds only
    # what was reported together with a checkpoint.
    returned = getattr(result, "return_value", None)
    metrics = returned if isinstance(returned, dict) else (result.metrics or {})
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def ray_scaling_config(run_config: RunConfig) -> Any:
    """Ray Train's ``ScalingConfig`` for ``run_config.scaling``."""
    from ray.train.v2.api.config import ScalingConfig as RayScalingConfig

    scaling = run_config.scaling
    return RayScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker=cluster.worker_resources(scaling),
        placement_strategy=scaling.placement_strategy,
    )


def ray_run_config(run_config: RunConfig, callbacks: Iterable[UserCallback] = ()) -> Any:
    """Ray Train's ``RunConfig``: storage in the run directory, the failure limits, the workers' environment."""
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, LoggingConfig
    from ray.train.v2.api.config import RunConfig as RayRunConfig

    run = run_config.run
    return RayRunConfig(
        name=run.name,
        # Ray's own files (checkpoint_<time>/ pointers, its checkpoint manager's JSON) under <run>/.ray/.
        storage_path=ray_storage_path(run_config),
        checkpoint_config=CheckpointConfig(num_to_keep=run_config.trainer.keep_checkpoints),
        # controller_failure_limit=0: a worker group that does not start within
        # start_timeout_s ends the run (Ray's default retries forever).
        failure_config=FailureConfig(max_failures=run_config.scaling.max_failures, controller_failure_limit=0),
        worker_runtime_env={"env_vars": cluster.worker_env_vars()},
        # Ray Train's log lines (worker failures with their tracebacks) go to its log files only.
        logging_config=LoggingConfig(log_level=console.RAY_TRAIN_CONSOLE_LEVEL),
        callbacks=list(callbacks),
    )


# ---------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------


def ray_storage_path(run_config: RunConfig) -> str:
    """Ray Train's ``storage_path`` for a run: ``<run dir>/.ray`` (its files named after the run below it)."""
    return f"{str(run_config.run.output_dir).rstrip('/')}/{run_config.run.name}/{RAY_FOLDER}"


def retryable(error: BaseException) -> bool:
    """Whether a restart could help with one worker's failure (not a deterministic engine error)."""
    root = root_cause(error)
    return not (isinstance(root, GentrainError) and not root.retryable)


def is_deterministic_failure(error: BaseException) -> bool:
    """Whether a failed worker group raised an engine error that a restart would only raise again."""
    failures = getattr(error, "worker_failures", None)
    if not isinstance(failures, Mapping):
        return False
    for failure in failures.values():
        root = root_cause(failure)
        if isinstance(root, GentrainError) and not root.retryable:
            return True
    return False


_policy_class: Any = None


def _engine_failure_policy_class() -> Any:
    """Ray's default failure policy, except that deterministic engine errors end the run at once.

    Ray Train restarts the worker group for any worker error, up to
    ``max_failures``: for a config error raised in a worker, or a NaN that
    recurs from the same checkpoint, that only repeats the failure.
    """
    global _policy_class
    if _policy_class is None:
        from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

        class EngineFailurePolicy(DefaultFailurePolicy):
            def make_decision(self, training_failed_error: Any) -> Any:
                if is_deterministic_failure(training_failed_error):
                    return FailureDecision.RAISE
                return super().make_decision(training_failed_error)

        _policy_class = EngineFailurePolicy
    return _policy_class


@contextlib.contextmanager
def engine_failure_policy() -> Iterator[None]:
    """Make ``TorchTrainer.fit()`` in this block use :func:`_engine_failure_policy_class`.

    Ray 2.60 has no public hook for a failure policy: ``fit()`` builds one with
    ``create_failure_policy`` from its module. If that moves in another Ray
    version, Ray's own policy stays (it retries every error up to max_failures).
    """
    try:
        from ray.train.v2.api import data_parallel_trainer as dpt

        policy_class = _engine_failure_policy_class()
    except ImportError:
        yield
        return
    original = getattr(dpt, "create_failure_policy", None)
    if original is None:
        yield
        return
    dpt.create_failure_policy = policy_class  # called with the FailureConfig, as the original
    try:
        yield
    finally:
        dpt.create_failure_policy = original


def engine_error(error: Exception, run_config: RunConfig) -> Exception:
    """The error :func:`fit_trainer` raises for a failed Ray Train run."""
    from ray.train.v2.api.exceptions import WorkerGroupError

    scaling = run_config.scaling
    if isinstance(error, WorkerGroupError):
        failures = sorted(error.worker_failures.items())
        for _, failure in failures:
            root = root_cause(failure)
            if isinstance(root, GentrainError):
                return root
        rank, failure = failures[0] if failures else (None, error)
        root = root_cause(failure)
        restarts = f" after {scaling.max_failures} restart(s)" if scaling.max_failures else ""
        first = str(root).strip().splitlines()
        detail = f"{type(root).__name__}: {first[0] if first else ''}"
        return TrainingError(
            f"training of run {run_config.run.name!r} failed{restarts} on rank {rank}: {detail}. "
            f"Checkpoints written so far are in {loop.run_dir_of(run_config) / 'checkpoints'}; "
            f"run again with the same run.name to resume"
        )
    controller_failure = getattr(error, "controller_failure", None)
    cause = controller_failure if controller_failure is not None else error
    text = str(cause).strip().splitlines()
    if "Timeout" in type(cause).__name__ or "timed out" in str(cause).lower():
        return TrainingError(
            f"Ray could not start {scaling.num_workers} worker(s) within scaling.start_timeout_s="
            f"{scaling.start_timeout_s:g}s ({type(cause).__name__}): the cluster's free resources do not "
            f"cover the request now; free them, lower the request or raise scaling.start_timeout_s"
        )
    return TrainingError(
        f"Ray Train failed to run {run_config.run.name!r}: {type(cause).__name__}: {text[0] if text else ''}"
    )


def root_cause(error: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (``RayTaskError`` and friends)."""
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None)
        if isinstance(inner, BaseException):
            error = inner
            continue
        if error.__cause__ is not None and type(error).__module__.startswith("ray."):
            error = error.__cause__
            continue
        break
    return error


def sendable_error(error: BaseException, rank: int) -> BaseException:
    """``error`` if Ray can carry it to the driver, else a :class:`TrainingError` saying what it was.

    Ray reports an exception it cannot unpickle on the driver (any class whose
    ``__init__`` does not take its ``args`` back, such as ``ConfigError``) as a
    failed worker health check, which hides the real error.
    """
    if _survives_pickling(error):
        return error
    trace = "".join(traceback.format_exception(error))
    sent = TrainingError(
        f"{type(error).__name__}: {error}\n(raised on rank {rank}; the original could not be sent to the "
        f"driver: its class cannot be rebuilt from its pickled arguments)\n{trace}"
    )
    sent.retryable = not isinstance(error, GentrainError) or error.retryable
    return sent


def _survives_pickling(error: BaseException) -> bool:
    """Whether ``error`` comes back from a pickle round trip (Ray's, which also carries classes by value)."""
    from ray import cloudpickle

    try:
        cloudpickle.loads(cloudpickle.dumps(error))
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------
# checkpoint pointers (a Train report's, and a Tune result's)
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def pointer_directory(name: str, pointer: Mapping[str, Any]) -> Iterator[str]:
    """A temporary directory holding one JSON file ``name``: what a report hands to Ray as its checkpoint."""
    with tempfile.TemporaryDirectory(prefix="gentrain-pointer-") as tmp:
        (Path(tmp) / name).write_text(json.dumps(dict(pointer)))
        yield tmp


def read_pointer(checkpoint: Any, name: str) -> dict[str, Any] | None:
    """The JSON file ``name`` in a Ray (Train or Tune) checkpoint; ``None`` without a checkpoint or that file."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory) / name
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data


# ---------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------


@dataclass
class RayWorkerEnv(WorkerEnv):
    """A Ray Train worker: ranks from the train context, gradients through DDP, reports to Ray."""

    launch_id: str = ""
    launch_time: float = 0.0
    #: Names of the Ray Datasets the trainer was handed (``data.loader=ray_data``).
    datasets: tuple[str, ...] = ()

    @classmethod
    def from_context(cls, launch: Mapping[str, Any]) -> RayWorkerEnv:
        from ray.train.v2.api.train_fn_utils import get_context
        from ray.train.v2.torch.train_loop_utils import get_device

        context = get_context()
        return cls(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            local_rank=context.get_local_rank(),
            device=get_device(),
            launch_id=str(launch.get("id", "")),
            launch_time=float(launch.get("time", 0.0)),
        )

    def dataset_shard(self, name: str) -> Any:
        if name not in self.datasets:
            return None
        from ray.train import get_dataset_shard

        return get_dataset_shard(name)

    def wrap_ddp(self, module: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return module
        # Not ray.train.torch.prepare_model: the loop wraps each sub-network
        # on its own, and moves the model to env.device itself.
        device_ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        from ray.train import Checkpoint
        from ray.train.v2.api.train_fn_utils import report

        values = {k: float(v) for k, v in metrics.items()}
        if checkpoint is None or self.rank != 0:
            report(values, checkpoint=None)
            return
        pointer = {"path": str(checkpoint), "launch": self.launch_id, "step": int(values.get("step", 0))}
        with pointer_directory(POINTER, pointer) as tmp:
            report(values, checkpoint=Checkpoint.from_directory(tmp))

    def _pointer(self) -> dict[str, Any] | None:
        from ray.train.v2.api.train_fn_utils import get_checkpoint

        return read_pointer(get_checkpoint(), POINTER)

    def resume_checkpoint(self) -> Path | None:
        pointer = self._pointer()
        if pointer is None:
            return None
        path = Path(pointer["path"])
        return path if path.is_file() else None

    def restarted(self, checkpoint_dir: Path) -> bool:
        """Whether this is a restart within the same launch (:func:`make_trainer`), after a worker failure."""
        pointer = self._pointer()
        if pointer is not None and pointer.get("launch") == self.launch_id:
            return True
        newest = ckpt.latest(checkpoint_dir)
        return newest is not None and newest.stat().st_mtime >= self.launch_time


def _quiet_worker_logs() -> None:
    """Drop Ray Train's INFO line for every report (two per epoch and rank on the console).

    Its logger is named after the file path, outside ``ray.train``, so
    ``LoggingConfig(log_level=...)`` does not reach it (Ray 2.60).
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    found = getattr(context, "logger", None)
    if isinstance(found, logging.Logger):
        found.setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, float]:
    """Ray Train's ``train_loop_per_worker``: one copy of :func:`engine.loop.train` per worker.

    :param config: ``{"run_config": <RunConfig.to_dict()>, "launch": {"id": ..., "time": ...}}``,
        as :func:`make_trainer` passes it.

    The worker loads its own plugin manager (from the environment
    :func:`engine.ray.cluster.worker_env_vars` gives it), resolves the config
    once against it and trains; rank 0's return value, the last metrics, is
    what :func:`fit_trainer` returns. An error Ray could not carry to the
    driver is sent as a :class:`TrainingError` that says what it was.
    """
    _quiet_worker_logs()
    plugins = current()  # this worker's own plugin manager, from its environment
    env = dataclasses.replace(RayWorkerEnv.from_context(config["launch"]), datasets=tuple(config.get("datasets", ())))
    console.install_worker_console(config.get("console"), env.rank, env.world_size)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    run_config = resolve(config["run_config"], plugins)
    if run_config.run.resume == "never" and env.restarted(loop.run_dir_of(run_config) / "checkpoints"):
        # "never" means: not from an earlier run. A restart after a worker
        # failure within this run still continues from its own checkpoint.
        run_config = dataclasses.replace(run_config, run=dataclasses.replace(run_config.run, resume="auto"))
    try:
        metrics = loop.train(run_config, env, plugins)
    except Exception as error:
        sendable = sendable_error(error, env.rank)
        if sendable is error:
            raise
        raise sendable from None
    return dict(metrics)


__all__ = [
    "POINTER",
    "RayWorkerEnv",
    "engine_error",
    "fit_ray",
    "fit_trainer",
    "is_deterministic_failure",
    "make_trainer",
    "root_cause",
    "sendable_error",
    "train_loop_per_worker",
]
