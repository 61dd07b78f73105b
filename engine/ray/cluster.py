"""The Ray cluster as the engine sees it: connecting, environment, resources and what can fit.

Used by a single run (:func:`engine.ray.train.fit_ray`) and by a search
(:func:`engine.ray.tune.tune`) alike, before anything is placed::

    with ray_environment(...):     Ray's settings for this fit (RAY_DEFAULTS where unset)
        connect(scaling)           Train V2 check, join or start Ray, look at the nodes,
                                   refuse a request the nodes can never hold

Resources. A worker reserves :func:`worker_resources` (CPUs, GPUs, custom
resources). :func:`check_cluster` refuses, with a
:class:`~engine.errors.ConfigError`, a request that no arrangement of the
cluster's nodes can ever place; on an autoscaling cluster, where nodes appear
on demand, ``GENTRAIN_RAY_AUTOSCALING=1`` skips it and the start timeout
bounds the wait. :func:`max_concurrent` says how many trials, each with its
own workers, fit at once.

Environment. The plugin-selecting variables (``GENTRAIN_PLUGINS``,
``GENTRAIN_DISABLE_PLUGINS``, ``GENTRAIN_DISABLE_PLUGIN_AUTOLOAD``) and
``PYTHONPATH`` travel to the workers and trial actors, so they load the same
plugins as the driver (the plugin packages themselves must be installed on
every node). Ray's own INFO lines are turned off.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from engine.config import ScalingConfig
from engine.errors import ConfigError
from engine.plugins import AUTOLOAD_ENV, BLOCK_ENV, EXTRA_ENV

#: Environment variables the workers need to load the driver's plugins.
PROPAGATED_ENV = (EXTRA_ENV, BLOCK_ENV, AUTOLOAD_ENV, "PYTHONPATH")
#: Skip the static resource check (nodes appear on demand).
AUTOSCALING_ENV = "GENTRAIN_RAY_AUTOSCALING"
#: Ray Train's limit on how long a worker group may take to start; from ``scaling.start_timeout_s``.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
#: Spot-instance preemption cannot happen when every node is this machine; the
#: watcher then only logs a spurious core_worker error line (ray#53727).
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
#: Defaults for Ray, applied only where the user has not set them, in a run's
#: driver and (through :func:`driver_env`) in every trial of a search.
RAY_DEFAULTS = {
    # The Train controller polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
    # (2 s by default) and takes one report per poll, so short epochs would wait on it.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Without this every print() of a worker reaches the console twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
#: Logical memory a trial's driver reserves when its training runs on Ray Train
#: workers (Tune refuses a request of nothing, and CPUs are the workers').
DRIVER_MEMORY = 64 * 2**20

# Ray >= 2.59 turns token auth on for a new local cluster and warns about it
# each time; we silence that logger while starting one. (Setting
# RAY_AUTH_MODE=token ourselves did not do: on a machine without a token file
# the first local start then failed, its GCS server never came up.)
_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


# ---------------------------------------------------------------------------
# connecting
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """The alive nodes of the Ray cluster this process is connected to."""

    nodes: list[dict[str, float]]
    """Each node's total resources (``{"CPU": 4.0, "memory": ...}``)."""
    local: bool
    """Every node is this machine."""
    autoscaling: bool
    """``GENTRAIN_RAY_AUTOSCALING`` is set: nodes appear on demand, :attr:`nodes` is not the limit."""


def connect(scaling: ScalingConfig, log_to_driver: bool = True) -> Cluster:
    """Join or start Ray and fail fast if its nodes can never place ``scaling``'s workers.

    Call it inside :func:`ray_environment`: a local Ray started here takes its
    settings from this process's environment. On a cluster that is all this
    machine the preemption watcher is turned off (where the user has not set it).

    :raises ConfigError: Ray Train V2 is turned off, or the request can never fit.
    """
    per_worker = worker_resources(scaling)  # a bad request fails before Ray starts
    if scaling.num_workers > 0:
        require_train_v2()
    ensure_ray(log_to_driver)
    cluster = discover()
    if cluster.local:
        os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    if scaling.num_workers > 0 and not cluster.autoscaling:
        check_cluster(scaling, per_worker, cluster.nodes)
    return cluster


def ensure_ray(log_to_driver: bool = True) -> None:
    """Connect to a running cluster (``RAY_ADDRESS``, or one started with ``ray start``), else start a local one.

    ``log_to_driver=False`` keeps the workers' output off this console (it stays in
    Ray's log files): ``gentrain tune`` prints its own table instead.

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
        ray.init(logging_level=logging.WARNING, log_to_driver=log_to_driver)
    finally:
        token_log.setLevel(level)


def starting_line() -> str:
    """What :func:`ensure_ray` is about to do, for the driver's console."""
    import ray

    if ray.is_initialized():
        return "using the Ray this process is connected to"
    address = _cluster_address()
    return f"connecting to Ray at {address}" if address else "starting Ray (a local cluster on this machine)"


@contextlib.contextmanager
def train_finds_this_cluster() -> Iterator[None]:
    """Let Ray Train's placement-group cleaner find this cluster when several run on one machine.

    The cleaner (a child of Train's controller) asks the State API whether the
    controller is alive; in Ray 2.60 that call finds the cluster from
    ``RAY_ADDRESS``, else by looking for running GCS processes, and fails
    ("Found multiple active Ray instances", a traceback on the console) when
    this machine runs two or more. Within this block ``RAY_ADDRESS`` is the
    connected cluster's address and travels to the controller.
    """
    import ray

    try:
        from ray.train.v2._internal import constants
    except ImportError:
        yield
        return
    address = ray.get_runtime_context().gcs_address
    propagated = getattr(constants, "ENV_VARS_TO_PROPAGATE", None)
    if not address or not isinstance(propagated, set):
        yield
        return
    saved = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    propagated.add("RAY_ADDRESS")
    try:
        yield
    finally:
        set_environ({"RAY_ADDRESS": saved})


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


def discover() -> Cluster:
    """The alive nodes of the connected cluster, whether they are all this machine, and the autoscaling switch."""
    import ray
    import ray.util

    alive = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.util.get_node_ip_address()
    return Cluster(
        nodes=[dict(n.get("Resources", {})) for n in alive],
        local=all(n.get("NodeManagerAddress") == here for n in alive),
        autoscaling=autoscaling(),
    )


def autoscaling() -> bool:
    """Whether ``GENTRAIN_RAY_AUTOSCALING`` says nodes appear on demand (skip :func:`check_cluster`)."""
    return os.environ.get(AUTOSCALING_ENV, "").lower() in ("1", "true", "yes")


def require_train_v2() -> None:
    """Raise :class:`ConfigError` if Ray Train V2 (Ray's default, which the engine is written for) is off."""
    from ray.train.v2._internal.constants import is_v2_enabled

    if not is_v2_enabled():
        raise ConfigError.one(
            "scaling.num_workers",
            "RAY_TRAIN_V2_ENABLED=0",
            "gentrain runs on Ray Train V2 (Ray's default); unset RAY_TRAIN_V2_ENABLED",
        )


# ---------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def ray_environment(overrides: Mapping[str, str] | None = None) -> Iterator[None]:
    """Ray's settings for one fit or search: :data:`RAY_DEFAULTS` where unset, ``overrides`` always.

    Ray Train passes these variables from the driver's environment to its
    controller and workers when ``fit()`` starts; they are restored afterwards.
    """
    overrides = overrides or {}
    saved = {k: os.environ.get(k) for k in [*RAY_DEFAULTS, PREEMPTION_WATCHER_ENV, *overrides]}
    for key, value in RAY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.update(overrides)
    try:
        yield
    finally:
        set_environ(saved)


def set_environ(values: Mapping[str, str | None]) -> None:
    """Set each variable of ``values`` in this process's environment; ``None`` removes it."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def start_timeout(scaling: ScalingConfig) -> dict[str, str]:
    """The :func:`ray_environment` override that bounds a worker group's start-up by ``scaling.start_timeout_s``."""
    return {START_TIMEOUT_ENV: _num(scaling.start_timeout_s)}


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


def driver_env() -> dict[str, str | None]:
    """What a trial's driver takes from this process: the plugin selection, ``PYTHONPATH``, Ray's settings."""
    env: dict[str, str | None] = {k: os.environ.get(k) for k in PROPAGATED_ENV}
    for key, value in RAY_DEFAULTS.items():
        env[key] = os.environ.get(key, value)
    return env


# ---------------------------------------------------------------------------
# resources and what fits
# ---------------------------------------------------------------------------


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


def trial_resources(scaling: ScalingConfig) -> dict[str, float]:
    """What Tune reserves for a trial's driver.

    ``num_workers=0``: the trial trains in its own process, so it takes one
    worker's resources. Otherwise the Train workers reserve theirs when the
    trial starts them, and the driver takes only :data:`DRIVER_MEMORY`.
    """
    if scaling.num_workers == 0:
        return worker_resources(scaling)
    return {"CPU": 0.0, "memory": float(DRIVER_MEMORY)}


def check_cluster(scaling: ScalingConfig, per_worker: Mapping[str, float], nodes: list[dict[str, float]]) -> None:
    """Raise :class:`ConfigError` if ``nodes`` can never hold ``num_workers`` workers of ``per_worker``.

    A worker's resources must fit on one node. ``STRICT_SPREAD`` needs a node
    per worker, ``STRICT_PACK`` one node for all; ``PACK`` and ``SPREAD`` may
    use every node. Resources in use by other jobs are not counted against
    the request: they are freed eventually (``start_timeout_s`` bounds the wait).
    """
    n = scaling.num_workers
    per_node = [fits(node, per_worker) for node in nodes]
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


def max_concurrent(scaling: ScalingConfig, per_worker: Mapping[str, float], nodes: list[dict[str, float]]) -> int:
    """How many trials the cluster ``nodes`` can run at once, each with its own workers.

    Tune counts only trial drivers, so without this limit it would start more
    trials than the cluster has room for workers, and their worker groups
    would wait. ``num_workers=0`` trials hold one worker's resources each.
    """
    slots = [fits(node, per_worker) for node in nodes]
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


def fits(node: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many ``bundle``s fit on ``node``."""
    counts = [math.floor(node.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 0


def _num(x: float) -> str:
    return f"{x:g}"


__all__ = [
    "AUTOSCALING_ENV",
    "PROPAGATED_ENV",
    "RAY_DEFAULTS",
    "Cluster",
    "check_cluster",
    "connect",
    "driver_env",
    "ensure_ray",
    "max_concurrent",
    "ray_environment",
    "starting_line",
    "train_finds_this_cluster",
    "trial_resources",
    "worker_env_vars",
    "worker_resources",
]
