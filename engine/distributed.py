"""Ray Train launcher: the per-worker loop of :mod:`engine.loop` on a ``TorchTrainer``.

:func:`fit_ray` is what :func:`engine.fit` calls when ``scaling.num_workers > 0``::

    driver (engine.fit)                        every Ray Train worker
    -------------------                        ----------------------
    prepare(config)        validated, paths absolute
    connect or start Ray   a `ray start` cluster, RAY_ADDRESS, or a local one
    check_cluster()        fail fast if the cluster can never place the workers
    TorchTrainer.fit() -->                     _train_loop_per_worker(config)
                                                 plugins.current()   (own plugin manager)
                                                 RayWorkerEnv        (rank, device, DDP, report)
                                                 loop.train(...)     rank 0 writes checkpoints/step=N.pt
                                                 ray.train.report    every rank, every epoch (a barrier)
    FitResult  <--                               return value of rank 0: the last metrics

Checkpoints. Rank 0 writes the real checkpoint file into the run directory
(``<output_dir>/<run name>/checkpoints``); what it hands to Ray is a
*pointer*: a directory holding one small JSON file naming that file, so Ray
copies a few bytes into its storage instead of the model a second time. On a
restart the loop resumes from the newest file in the run directory (Ray
registers checkpoints on its controller's poll, so its own can lag by one or
two); the pointer is only a fallback. Ray's storage is the run directory
itself (``storage_path=output_dir``, ``name=run.name``), so a rerun of the
same run name finds both.

Failures. ``scaling.max_failures`` worker-group restarts are allowed; each
restarts every worker, which resumes from the last checkpoint. An engine error
that a restart would only repeat (a config or data error raised in a worker, a
refused checkpoint, a non-finite loss under ``nan_policy=raise``) ends the run
at once instead (``GentrainError.retryable``). A worker group
that cannot start within ``scaling.start_timeout_s`` ends the run (no endless
retries); a request the cluster can never satisfy (more workers, CPUs, GPUs or
custom resources than its nodes have) fails before anything starts, with a
:class:`~engine.errors.ConfigError`. On an autoscaling cluster, where nodes
appear on demand, set ``GENTRAIN_RAY_AUTOSCALING=1`` to skip that check and
rely on the start timeout. An error raised by the engine in a worker (a
:class:`~engine.errors.GentrainError`) reaches the caller as itself; any other
worker failure becomes a :class:`~engine.errors.TrainingError` naming the rank
and the original error (Ray's error, with the worker's traceback, stays
attached as ``__cause__``). ``run.resume=never`` means "not from an earlier
run": a restart after a worker failure still continues from this run's
checkpoint.

Nodes and devices. The run directory must be on storage every node sees (NFS
or similar): rank 0 writes there, and every rank reads from it on a restart.
With ``scaling.use_gpu`` each worker trains on its own GPU
(``ray.train.torch.get_device()``) with the NCCL backend; otherwise gloo on CPU.

Environment. The plugin-selecting variables (``GENTRAIN_PLUGINS``,
``GENTRAIN_DISABLE_PLUGINS``, ``GENTRAIN_DISABLE_PLUGIN_AUTOLOAD``) and
``PYTHONPATH`` are passed to the workers, so they load the same plugins as
the driver. The plugin packages themselves must be installed on every node.
Console: Ray's own INFO lines are turned off; the engine's progress lines from
rank 0 arrive once, prefixed by Ray with the worker's name and PID.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine import checkpoint as ckpt
from engine import loop
from engine.config import RunConfig, ScalingConfig
from engine.errors import ConfigError, GentrainError, TrainingError
from engine.plugins import AUTOLOAD_ENV, BLOCK_ENV, EXTRA_ENV

#: Environment variables the workers need to load the driver's plugins.
PROPAGATED_ENV = (EXTRA_ENV, BLOCK_ENV, AUTOLOAD_ENV, "PYTHONPATH")
#: Skip the static resource check (nodes appear on demand).
AUTOSCALING_ENV = "GENTRAIN_RAY_AUTOSCALING"
#: The file inside a Ray checkpoint directory that names the real checkpoint.
POINTER = "gentrain-checkpoint.json"

# Defaults for Ray, applied only where the user has not set them. The Train
# controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default) and takes one report per poll, so short epochs would wait on it.
_RAY_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Without this every print() of a worker reaches the console twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Spot-instance preemption cannot happen when every node is this machine; the
# watcher then only logs a spurious core_worker error line (ray#53727).
_PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Ray >= 2.59 turns token auth on for a new local cluster and warns about it
# each time; we silence that logger while starting one. (Setting
# RAY_AUTH_MODE=token ourselves did not do: on a machine without a token file
# the first local start then failed, its GCS server never came up.)
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


# ---------------------------------------------------------------------------
# the driver side
# ---------------------------------------------------------------------------


def fit_ray(run_config: RunConfig) -> dict[str, float]:
    """Train ``run_config`` (already validated by :func:`engine.api.prepare`) on Ray Train workers.

    :raises ConfigError: the scaling request cannot work (before any worker starts).
    :raises GentrainError: an engine error raised in a worker, as itself.
    :raises TrainingError: any other failure, once ``scaling.max_failures`` restarts are spent.
    """
    from ray.train.torch import TorchConfig
    from ray.train.v2.api.exceptions import TrainingFailedError
    from ray.train.v2.torch.torch_trainer import TorchTrainer

    scaling = run_config.scaling
    resources = worker_resources(scaling)
    launch = {"id": uuid.uuid4().hex, "time": time.time()}
    _require_train_v2()
    with _environment({_START_TIMEOUT_ENV: _num(scaling.start_timeout_s)}):
        ensure_ray()
        nodes = _alive_nodes()
        if _on_this_machine(nodes):
            os.environ.setdefault(_PREEMPTION_WATCHER_ENV, "0")
        if os.environ.get(AUTOSCALING_ENV, "").lower() not in ("1", "true", "yes"):
            check_cluster(scaling, resources, [dict(n.get("Resources", {})) for n in nodes])
        per_worker: Any = _train_loop_per_worker  # Ray types it as returning None; we return metrics
        trainer = TorchTrainer(
            per_worker,
            train_loop_config={"run_config": run_config.to_dict(), "launch": launch},
            torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
            scaling_config=ray_scaling_config(scaling, resources),
            run_config=ray_run_config(run_config),
        )
        try:
            with _engine_failure_policy():
                result = trainer.fit()
        except TrainingFailedError as e:
            raise engine_error(e, run_config) from e
    # Rank 0's return value: the loop's last metrics. Result.metrics holds only
    # what was reported together with a checkpoint.
    returned = getattr(result, "return_value", None)
    metrics = returned if isinstance(returned, dict) else (result.metrics or {})
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


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
def _engine_failure_policy() -> Iterator[None]:
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


def worker_resources(scaling: ScalingConfig) -> dict[str, float]:
    """What one worker reserves: CPUs, GPUs (with ``use_gpu``) and custom resources.

    ``resources_per_worker`` is applied last, so ``{"CPU": 4}`` there wins over
    ``cpus_per_worker``.
    """
    extra = dict(scaling.resources_per_worker)
    gpus = scaling.gpus_per_worker
    problems: list[tuple[str, object, str]] = []
    if not scaling.use_gpu:
        if gpus:
            problems.append(("scaling.gpus_per_worker", gpus, "needs scaling.use_gpu=true"))
        if extra.get("GPU"):
            problems.append(("scaling.resources_per_worker", extra, "asks for GPUs; set scaling.use_gpu=true"))
    elif gpus == 0 or extra.get("GPU", 1) == 0:
        problems.append(("scaling.gpus_per_worker", gpus, "must be positive with scaling.use_gpu=true"))
    if problems:
        raise ConfigError(problems)
    out: dict[str, float] = {"CPU": float(scaling.cpus_per_worker)}
    if scaling.use_gpu:
        out["GPU"] = float(gpus if gpus is not None else 1)
    out.update({k: float(v) for k, v in extra.items()})
    return {k: v for k, v in out.items() if v > 0}


def ray_scaling_config(scaling: ScalingConfig, resources: Mapping[str, float]) -> Any:
    from ray.train.v2.api.config import ScalingConfig as RayScalingConfig

    return RayScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker=dict(resources),
        placement_strategy=scaling.placement_strategy,
    )


def ray_run_config(run_config: RunConfig) -> Any:
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, LoggingConfig
    from ray.train.v2.api.config import RunConfig as RayRunConfig

    run = run_config.run
    return RayRunConfig(
        name=run.name,
        storage_path=run.output_dir,
        checkpoint_config=CheckpointConfig(num_to_keep=run_config.trainer.keep_checkpoints),
        # controller_failure_limit=0: a worker group that does not start within
        # start_timeout_s ends the run (Ray's default retries forever).
        failure_config=FailureConfig(max_failures=run_config.scaling.max_failures, controller_failure_limit=0),
        worker_runtime_env={"env_vars": worker_env_vars()},
        logging_config=LoggingConfig(log_level="WARNING"),
    )


def worker_env_vars() -> dict[str, str]:
    """Environment of the Train workers: the plugin selection, and no doubled print().

    On a cluster started elsewhere (``ray start``, ``ray job submit``) workers
    inherit the raylet's environment, not the driver's, so the print patch
    setting must travel with the job.
    """
    # The plugin variables always travel, empty when unset here: otherwise a
    # worker would keep whatever the raylet's environment had when the cluster started.
    env = {k: os.environ.get(k, "") for k in (EXTRA_ENV, BLOCK_ENV, AUTOLOAD_ENV)}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    return env


def _require_train_v2() -> None:
    from ray.train.v2._internal.constants import is_v2_enabled

    if not is_v2_enabled():
        raise ConfigError.one(
            "scaling.num_workers",
            "RAY_TRAIN_V2_ENABLED=0",
            "gentrain runs on Ray Train V2 (Ray's default); unset RAY_TRAIN_V2_ENABLED",
        )


def ensure_ray() -> None:
    """Connect to a running cluster (``RAY_ADDRESS``, or one started with ``ray start``), else start a local one.

    An already initialised Ray (a test fixture, a notebook, ``ray job submit``)
    is used as it is. The Ray we start keeps running until the process ends,
    so a second :func:`engine.fit` in the same process does not pay for it again.
    """
    import ray

    if ray.is_initialized():
        return
    local = _cluster_address() is None
    token_log = logging.getLogger(_TOKEN_LOGGER)
    level = token_log.level
    if local and "RAY_AUTH_MODE" not in os.environ:
        token_log.setLevel(logging.ERROR)
    try:
        # Worker output reaches the console (the progress lines of rank 0);
        # Ray's own INFO lines do not.
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
    finally:
        token_log.setLevel(level)


def _cluster_address() -> str | None:
    """The cluster ``ray.init()`` would connect to, or ``None`` if it would start a local one."""
    address = os.environ.get("RAY_ADDRESS")
    if address == "local":
        return None
    if address:
        return address
    try:
        from ray._private.utils import read_ray_address  # where `ray start` records its address

        found: str | None = read_ray_address()
    except Exception:  # a private helper: if it moved, assume nothing is running
        return None
    return found


@contextlib.contextmanager
def _environment(overrides: Mapping[str, str]) -> Iterator[None]:
    """Ray's settings for one fit: :data:`_RAY_DEFAULTS` where unset, ``overrides`` always.

    Ray Train passes these variables from the driver's environment to its
    controller and workers when ``fit()`` starts; they are restored afterwards.
    """
    saved = {k: os.environ.get(k) for k in [*_RAY_DEFAULTS, _PREEMPTION_WATCHER_ENV, *overrides]}
    for key, value in _RAY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _on_this_machine(nodes: list[dict[str, Any]]) -> bool:
    import ray.util

    here = ray.util.get_node_ip_address()
    return all(n.get("NodeManagerAddress") == here for n in nodes)


def check_cluster(scaling: ScalingConfig, per_worker: Mapping[str, float], nodes: list[dict[str, float]]) -> None:
    """Raise :class:`ConfigError` if ``nodes`` can never hold ``num_workers`` workers of ``per_worker``.

    A worker's resources must fit on one node. ``STRICT_SPREAD`` needs a node
    per worker, ``STRICT_PACK`` one node for all; ``PACK`` and ``SPREAD`` may
    use every node. Resources in use by other jobs are not counted against
    the request: they are freed eventually (``start_timeout_s`` bounds the wait).
    """
    n = scaling.num_workers
    per_node = [_fits(node, per_worker) for node in nodes]
    strategy = scaling.placement_strategy
    if strategy == "STRICT_SPREAD":
        possible = sum(1 for k in per_node if k >= 1)
    elif strategy == "STRICT_PACK":
        possible = max(per_node, default=0)
    else:
        possible = sum(per_node)
    if possible >= n:
        return
    totals: dict[str, float] = {}
    for node in nodes:
        for key in per_worker:
            totals[key] = totals.get(key, 0.0) + node.get(key, 0.0)
    have = ", ".join(f"{_num(totals[k])} {k}" for k in per_worker)
    ask = ", ".join(f"{_num(v)} {k}" for k, v in per_worker.items())
    where = {
        "STRICT_SPREAD": "each on its own node",
        "STRICT_PACK": "all on one node",
    }.get(strategy, "over all nodes")
    field = "scaling.num_workers"
    value: object = n
    if possible == 0:
        # Not even one worker fits: the per-worker request is the problem.
        field, value = "scaling", dict(per_worker)
    raise ConfigError.one(
        field,
        value,
        f"the Ray cluster can never run {n} worker(s) of {{{ask}}} {where} (placement_strategy={strategy}): "
        f"it has {len(nodes)} node(s) with {have} in total, room for {possible} such worker(s). "
        f"Lower scaling.num_workers or the per-worker resources, add nodes, "
        f"or set {AUTOSCALING_ENV}=1 on an autoscaling cluster",
    )


def _fits(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many ``bundle``s fit on ``node``."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 0


def _num(x: float) -> str:
    return f"{x:g}"


def engine_error(error: Exception, run_config: RunConfig) -> Exception:
    """The error :func:`fit_ray` raises for a failed Ray Train run."""
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


# ---------------------------------------------------------------------------
# the worker side
# ---------------------------------------------------------------------------


@dataclass
class RayWorkerEnv(loop.WorkerEnv):
    """A Ray Train worker: ranks from the train context, gradients through DDP, reports to Ray."""

    launch_id: str = ""
    launch_time: float = 0.0

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
        with tempfile.TemporaryDirectory(prefix="gentrain-pointer-") as tmp:
            pointer = {"path": str(checkpoint), "launch": self.launch_id, "step": int(values.get("step", 0))}
            (Path(tmp) / POINTER).write_text(json.dumps(pointer))
            report(values, checkpoint=Checkpoint.from_directory(tmp))

    def _pointer(self) -> dict[str, Any] | None:
        from ray.train.v2.api.train_fn_utils import get_checkpoint

        registered = get_checkpoint()
        if registered is None:
            return None
        with registered.as_directory() as directory:
            path = Path(directory) / POINTER
            if not path.is_file():
                return None
            data: dict[str, Any] = json.loads(path.read_text())
            return data

    def resume_checkpoint(self) -> Path | None:
        pointer = self._pointer()
        if pointer is None:
            return None
        path = Path(pointer["path"])
        return path if path.is_file() else None

    def restarted(self, checkpoint_dir: Path) -> bool:
        """Whether this is a restart within the same :func:`fit_ray` call (after a worker failure)."""
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


def _train_loop_per_worker(config: dict[str, Any]) -> dict[str, float]:
    """Ray Train's ``train_loop_per_worker``: one copy of :func:`engine.loop.train` per worker."""
    from engine.config import resolve
    from engine.plugins import current

    _quiet_worker_logs()
    plugins = current()  # this worker's own plugin manager, from its environment
    run_dict = copy.deepcopy(config["run_config"])
    env = RayWorkerEnv.from_context(config["launch"])
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if run_dict.get("run", {}).get("resume") == "never":
        # "never" means: not from an earlier run. A restart after a worker
        # failure within this run still continues from its own checkpoint.
        run_config = resolve(run_dict, plugins)
        if env.restarted(loop.run_dir_of(run_config) / "checkpoints"):
            run_dict["run"]["resume"] = "auto"
    try:
        metrics = loop.train(run_config, env, plugins)
    except Exception as error:
        sendable = sendable_error(error, env.rank)
        if sendable is error:
            raise
        raise sendable from None
    return dict(metrics)


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


__all__ = [
    "PROPAGATED_ENV",
    "RayWorkerEnv",
    "check_cluster",
    "ensure_ray",
    "fit_ray",
    "sendable_error",
    "worker_resources",
]
