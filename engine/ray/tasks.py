"""Plain Ray tasks, one per worker, for work that is not training (``gentrain eval``'s samples).

:func:`run_on_workers` runs ``fn(*args)`` once per argument tuple, each call a
Ray task on a worker of ``scaling``'s resources, all at once, with the checks
:func:`engine.ray.train.fit_ray` makes::

    cluster.connect(scaling)    join RAY_ADDRESS / a `ray start` cluster, or start a local Ray;
                                a request the nodes can never hold fails here (ConfigError),
                                before any task starts
    placement group             one bundle per worker, scaling.placement_strategy,
                                ready within scaling.start_timeout_s or TrainingError
    one task per bundle         the driver's plugin selection in its environment;
                                scaling.max_failures retries when its worker process dies
    results, in order   <--     an engine error raised in a task reaches the caller as itself,
                                any other as a TrainingError naming the worker

The function must be importable on the workers (a module-level function of an
installed package): Ray carries it by reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from engine.config import ScalingConfig
from engine.errors import GentrainError, TrainingError
from engine.ray import cluster, console
from engine.ray.train import root_cause, sendable_error

__all__ = ["check_workers", "run_on_workers"]

T = TypeVar("T")


def check_workers(scaling: ScalingConfig) -> None:
    """Join or start Ray; a request its nodes can never hold is :func:`engine.fit`'s ``ConfigError``."""
    import ray

    with cluster.ray_environment():
        if not ray.is_initialized():  # said when Ray is started or joined, not for the Ray already in use
            console.say(cluster.starting_line())
        cluster.connect(scaling)


def run_on_workers(
    scaling: ScalingConfig, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], what: str = "workers"
) -> list[T]:
    """``[fn(*args) for args in calls]``, each call a Ray task holding one worker's resources, all in parallel.

    ``len(calls)`` may be less than ``scaling.num_workers`` (less work than
    workers); the cluster is checked against ``scaling.num_workers`` as
    :func:`engine.fit` checks it.

    :raises ConfigError: the cluster can never place the workers (before any task starts).
    :raises GentrainError: an engine error raised in a task, as itself.
    :raises TrainingError: the workers could not start within ``scaling.start_timeout_s``, or a task failed.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    with cluster.ray_environment():
        if not ray.is_initialized():
            console.say(cluster.starting_line())
        cluster.connect(scaling)
        if not calls:
            return []
        per_worker = cluster.worker_resources(scaling)
        pg = placement_group([dict(per_worker) for _ in calls], strategy=scaling.placement_strategy)
        try:
            if not pg.wait(timeout_seconds=scaling.start_timeout_s):
                raise TrainingError(
                    f"{what}: could not start {len(calls)} worker(s) within "
                    f"scaling.start_timeout_s={scaling.start_timeout_s:g}s: the cluster has no room for them now"
                )
            console.say(f"{what}: {len(calls)} worker(s) started")
            options: dict[str, Any] = {
                "num_cpus": per_worker.get("CPU", 0.0),
                "num_gpus": per_worker.get("GPU", 0.0),
                "resources": {k: v for k, v in per_worker.items() if k not in ("CPU", "GPU")},
                "max_retries": scaling.max_failures,
                "runtime_env": {"env_vars": cluster.worker_env_vars()},
            }
            task: Any = ray.remote(_call)
            threads = max(1, int(per_worker.get("CPU", 1.0)))
            refs = [
                task.options(
                    **options,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
                ).remote(fn, i, args, threads)
                for i, args in enumerate(calls)
            ]
            try:
                return list(ray.get(refs))
            except Exception as e:
                for ref in refs:
                    ray.cancel(ref, force=True)
                cause = root_cause(e)
                if isinstance(cause, GentrainError):
                    raise cause from e
                raise TrainingError(f"{what}: a worker failed: {type(cause).__name__}: {cause}") from e
        finally:
            remove_placement_group(pg)


def _call(fn: Callable[..., T], index: int, args: tuple[Any, ...], threads: int) -> T:
    """One task: ``fn(*args)`` with as many torch threads as the worker has CPUs; errors made sendable."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    except BaseException as e:
        raise sendable_error(e, index) from None
