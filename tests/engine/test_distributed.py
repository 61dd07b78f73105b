"""Ray Train: DDP across workers and nodes, on a real local Ray (CPU, gloo).

The models come from ``ray_test_plugins`` (next to this file), which every
worker loads through ``GENTRAIN_PLUGINS``; the built-in AE and GAN join the
equivalence test when they are registered. Runs are tiny (512 shapes of
16×16, MLPs of 16 units): what costs time is Ray starting worker groups.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

import engine
from engine import checkpoint as ckpt
from engine.config import ScalingConfig
from engine.errors import ConfigError, PluginError, TrainingError
from engine.plugins import PluginManager, load_plugins
from engine.ray.cluster import AUTOSCALING_ENV, check_cluster, worker_resources
from engine.ray.train import engine_error, is_deterministic_failure, sendable_error

HERE = Path(__file__).resolve().parent
TEST_PLUGINS = "ray_test_plugins"

pytestmark = pytest.mark.ray

# Small settings of the built-in models, so they take part in the equivalence test.
BUILTIN_PARAMS: dict[str, dict[str, Any]] = {
    "ae": {"arch": "mlp", "hidden": [16], "latent_dim": 4},
    "gan": {"arch": "mlp", "hidden": 16, "depth": 1, "latent_dim": 4},
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_env() -> Iterator[PluginManager]:
    """Environment that makes every worker load the test plugins; the driver's plugin manager."""
    with pytest.MonkeyPatch.context() as mp:
        path = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", str(HERE) + (os.pathsep + path if path else ""))
        mp.syspath_prepend(str(HERE))
        mp.setenv("GENTRAIN_PLUGINS", TEST_PLUGINS)
        mp.setenv("GENTRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
        # Outputs these tests do not look at (and matplotlib's start-up cost).
        mp.setenv("GENTRAIN_DISABLE_PLUGINS", "plots,tensorboard,sample_grids")
        yield load_plugins()


def run_config(
    out: Path,
    name: str,
    model: str = "ddp_ae",
    *,
    workers: int = 2,
    batch: int = 16,
    epochs: int = 3,
    params: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"name": model, **(params or {})},
        "data": {"name": "shapes", "n": 512, "size": 16, "val_fraction": 0.1},
        "trainer": {"epochs": epochs, "batch_size": batch, "seed": 3, "checkpoint_every": 1, "keep_checkpoints": 3},
        # A generous start timeout: worker processes start slowly on a busy machine.
        "scaling": {"num_workers": workers, "max_failures": 0, "start_timeout_s": 300},
        "run": {"name": name, "output_dir": str(out)},
        "callbacks": {"tensorboard": False, "sample_every": 0},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def epochs_started(run_dir: Path) -> list[tuple[int, int]]:
    """``(epoch, pid)`` for every epoch rank 0 started, in order."""
    path = run_dir.with_name(run_dir.name + ".epochs.log")
    if not path.exists():
        return []
    return [(int(e), int(p)) for e, p in (line.split() for line in path.read_text().splitlines())]


def csv_epochs(run_dir: Path) -> list[int]:
    import csv

    with (run_dir / "metrics.csv").open(newline="") as f:
        return [round(float(row["epoch"])) for row in csv.DictReader(f)]


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


#: How long a fault test waits for the crashing rank to write its PID. The wait ends as soon
#: as the file exists; the bound is generous because on a loaded 2-core machine starting the
#: Ray workers alone has taken 214 s.
PID_WAIT_S = 600


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def models() -> list[Any]:
    names = ["ddp_ae", "ddp_gan"]
    registered = load_plugins(autoload=False).models.names()
    for name in BUILTIN_PARAMS:
        if name in registered:
            names.append(name)
        else:
            names.append(pytest.param(name, marks=pytest.mark.skip(reason=f"built-in model {name!r} not registered")))
    return names


# ---------------------------------------------------------------------------
# (1) 2 workers × B == 1 worker × 2B, and (2) replicas agree
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=models())
def trained(
    request: pytest.FixtureRequest,
    worker_env: PluginManager,
    ray_session: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    model = request.param
    params = BUILTIN_PARAMS.get(model, {})
    out = tmp_path_factory.mktemp(f"equiv-{model}")
    ray_session.local()
    single = engine.fit(
        run_config(out, "single", model, workers=0, batch=32, epochs=2, params=params), plugins=worker_env
    )
    t0 = time.perf_counter()
    double = engine.fit(run_config(out, "ddp", model, workers=2, batch=16, epochs=2, params=params), plugins=worker_env)
    seconds = time.perf_counter() - t0
    assert single.checkpoint is not None
    assert double.checkpoint is not None
    return {
        "model": model,
        "single": single,
        "double": double,
        "single_state": ckpt.load(single.checkpoint),
        "double_state": ckpt.load(double.checkpoint),
        "seconds": seconds,
    }


def test_two_workers_match_one_worker_with_twice_the_batch(trained: dict[str, Any]) -> None:
    one, two = trained["single_state"], trained["double_state"]
    assert two["world_size"] == 2
    assert one["world_size"] == 1
    assert one["step"] == two["step"] > 20  # 2 epochs of 14 steps
    diff = max_abs_diff(one["model"], two["model"])
    print(f"\n{trained['model']}: max |Δθ| = {diff:.2e} after {two['step']} steps; Ray fit {trained['seconds']:.1f}s")
    assert diff <= 1e-5
    # The training losses (averaged over ranks) agree as well.
    m1, m2 = trained["single"].metrics, trained["double"].metrics
    train_keys = [k for k in m1 if k.startswith("train/")]
    assert train_keys
    for k in train_keys:
        assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6)
    assert m2["epoch"] == 2


def test_every_rank_holds_the_same_weights(trained: dict[str, Any]) -> None:
    replicas = trained["double"].run_dir / "replicas"
    ranks = [json.loads((replicas / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["hashes"].keys() == ranks[1]["hashes"].keys()
    assert len(ranks[0]["hashes"]) == 2  # both sub-networks
    assert ranks[0]["hashes"] == ranks[1]["hashes"]


def test_a_nan_on_one_rank_is_skipped_on_every_rank(worker_env: PluginManager, ray_local: Any, tmp_path: Path) -> None:
    # Rank 1's loss is NaN once; DDP averages its NaN gradients into rank 0's. If only rank 1
    # skipped the update, rank 0 would step on NaN gradients and the replicas would part ways.
    config = run_config(
        tmp_path, "nan", epochs=2, params={"nan_rank": 1, "nan_call": 3}, trainer={"nan_policy": "skip"}
    )
    result = engine.fit(config, plugins=worker_env)
    replicas = result.run_dir / "replicas"
    ranks = [json.loads((replicas / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["hashes"] == ranks[1]["hashes"]
    assert result.checkpoint is not None
    state = ckpt.load(result.checkpoint)["model"]
    assert all(bool(torch.isfinite(v).all()) for v in state.values())
    # 461 training images, global batch 32: 14 steps an epoch, each counted, one of them without an update.
    assert result.metrics["step"] == 2 * 14
    assert torch.isfinite(torch.tensor(result.metrics["train/loss"]))


# ---------------------------------------------------------------------------
# (3) faults: a worker dies mid-training and the run goes on
# ---------------------------------------------------------------------------


def test_worker_exit_inside_is_restarted_from_the_last_checkpoint(
    worker_env: PluginManager, ray_local: Any, tmp_path: Path
) -> None:
    # resume=never: not from an earlier run, but a restart within this run still resumes.
    config = run_config(
        tmp_path,
        "exit",
        params={"crash": "exit", "crash_epoch": 1, "crash_rank": 1},
        scaling={"max_failures": 2},
        run={"resume": "never"},
    )
    t0 = time.perf_counter()
    result = engine.fit(config, plugins=worker_env)
    total = time.perf_counter() - t0
    run_dir = result.run_dir
    assert (run_dir / "crashed").exists()
    started = epochs_started(run_dir)
    # Epoch 1 was cut short and redone from the checkpoint after epoch 0:
    # at most one checkpoint interval (1 epoch) was lost.
    assert [e for e, _ in started] == [0, 1, 1, 2]
    assert started[1][1] != started[2][1]  # a new process took over
    assert csv_epochs(run_dir) == [1, 2, 3]
    assert result.metrics["epoch"] == 3
    assert result.checkpoint is not None
    assert ckpt.load(result.checkpoint)["epoch"] == 3
    print(f"\nos._exit(1) in rank 1: run finished in {total:.1f}s")


def test_worker_killed_from_outside_is_restarted(worker_env: PluginManager, ray_local: Any, tmp_path: Path) -> None:
    config = run_config(
        tmp_path,
        "sigkill",
        params={"crash": "wait_for_kill", "crash_epoch": 1, "crash_rank": 0},
        scaling={"max_failures": 2},
    )
    run_dir = tmp_path / "sigkill"
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(engine.fit, config, plugins=worker_env)
        wait_for(lambda: (run_dir / "pid").exists() or future.done(), PID_WAIT_S, "rank 0 to write its PID")
        if future.done():
            future.result()
            pytest.fail("fit ended before the worker could be killed")
        pid = int((run_dir / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        wait_for(lambda: len(epochs_started(run_dir)) > 2 or future.done(), PID_WAIT_S, "the restarted worker group")
        recovery = time.perf_counter() - killed
        result = future.result(timeout=PID_WAIT_S)
    started = epochs_started(run_dir)
    assert [e for e, _ in started] == [0, 1, 1, 2]
    assert pid in {p for _, p in started[:2]}
    assert pid not in {p for _, p in started[2:]}
    assert csv_epochs(run_dir) == [1, 2, 3]
    assert result.metrics["epoch"] == 3
    print(f"\nSIGKILL of rank 0: training resumed {recovery:.1f}s after the kill")


def test_worker_errors_reach_the_caller_after_the_restarts(
    worker_env: PluginManager, ray_local: Any, tmp_path: Path
) -> None:
    # Any other exception may be transient: Ray restarts the group (max_failures=1), then a
    # TrainingError names the rank and the original error.
    config = run_config(
        tmp_path, "raise", epochs=2, params={"crash": "raise", "crash_rank": 1}, scaling={"max_failures": 1}
    )
    with pytest.raises(TrainingError, match=r"after 1 restart\(s\) on rank 1: RuntimeError: injected failure") as info:
        engine.fit(config, plugins=worker_env)
    assert "run again with the same run.name to resume" in str(info.value)
    assert info.value.__cause__ is not None  # Ray's error, with the worker's traceback
    assert len({pid for _, pid in epochs_started(tmp_path / "raise")}) == 2  # two attempts


def test_a_deterministic_engine_error_is_not_retried(worker_env: PluginManager, ray_local: Any, tmp_path: Path) -> None:
    # A ConfigError raised in a worker would only recur: the run ends at the first attempt,
    # although max_failures allows 3 restarts.
    config = run_config(
        tmp_path, "det", epochs=2, params={"crash": "raise_config", "crash_rank": 1}, scaling={"max_failures": 3}
    )
    with pytest.raises(ConfigError, match=r"model\.crash = 'raise_config': injected config error"):
        engine.fit(config, plugins=worker_env)
    assert len(epochs_started(tmp_path / "det")) == 1


def test_retryable_is_decided_per_error() -> None:
    from ray.train.v2.api.exceptions import WorkerGroupError

    assert not ConfigError.one("a", 1, "b").retryable
    assert not TrainingError("non-finite loss").retryable
    assert sendable_error(Unrebuildable("x", 1), rank=0).retryable
    for error, deterministic in [
        (ConfigError.one("a", 1, "b"), True),
        (TrainingError("non-finite loss at step 3"), True),
        (RuntimeError("connection reset"), False),
        (sendable_error(Unrebuildable("x", 1), rank=0), False),
    ]:
        failed = WorkerGroupError("failed", {0: error, 1: RuntimeError("collective aborted")})
        assert is_deterministic_failure(failed) is deterministic, error


class Unrebuildable(Exception):
    """An exception whose class cannot be rebuilt from its pickled args."""

    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"{field} = {value!r}")


def test_errors_ray_cannot_unpickle_still_reach_the_caller() -> None:
    import pickle

    # Ray would call an error it cannot unpickle a failed health check
    # (checked by hand: 'A worker health check failed').
    error = Unrebuildable("model.crash", "x")
    sent = sendable_error(error, rank=1)
    assert isinstance(sent, TrainingError)
    assert "Unrebuildable: model.crash = 'x'" in str(sent)
    assert "raised on rank 1" in str(sent)
    assert str(pickle.loads(pickle.dumps(sent))) == str(sent)
    plain = RuntimeError("fine")
    assert sendable_error(plain, rank=0) is plain
    # The engine's own ConfigError is rebuilt from its problems, so it travels as itself.
    config_error = ConfigError.one("model.crash", "x", "injected")
    assert sendable_error(config_error, rank=1) is config_error


def test_engine_errors_from_workers_arrive_as_themselves(worker_env: PluginManager, tmp_path: Path) -> None:
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    config = engine.resolve(run_config(tmp_path, "x", workers=2), worker_env)
    error = PluginError("plugin 'p' raised in hook gentrain_on_fit_start: KeyError: 'x'")
    wrapped = RayTaskError("train_fn", "Traceback ...", error)
    for failure in (error, wrapped):
        assert engine_error(WorkerGroupError("rank 1 failed", {1: failure}), config) is error
    other = engine_error(WorkerGroupError("rank 0 failed", {0: KeyError("x")}), config)
    assert isinstance(other, TrainingError)
    assert "rank 0: KeyError: 'x'" in str(other)


# ---------------------------------------------------------------------------
# (5) a rerun of the same name resumes; a new name starts fresh
# ---------------------------------------------------------------------------


def test_rerun_resumes_and_a_new_name_starts_fresh(
    worker_env: PluginManager, ray_local: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Another run with checkpoints in the same output directory (in-process: cheap).
    other = engine.fit(run_config(tmp_path, "other", workers=0, batch=32, epochs=2), plugins=worker_env)
    assert other.checkpoint is not None

    first = engine.fit(run_config(tmp_path, "again", epochs=2), plugins=worker_env)
    assert [e for e, _ in epochs_started(first.run_dir)] == [0, 1]  # a new name starts fresh
    assert first.metrics["epoch"] == 2
    capfd.readouterr()

    second = engine.fit(run_config(tmp_path, "again", epochs=3), plugins=worker_env)
    assert second.run_dir == first.run_dir
    assert [e for e, _ in epochs_started(second.run_dir)] == [0, 1, 2]  # only epoch 2 ran
    assert second.metrics["epoch"] == 3
    assert csv_epochs(second.run_dir) == [1, 2, 3]
    assert second.checkpoint is not None
    assert ckpt.load(second.checkpoint)["epoch"] == 3

    # What the user saw: rank 0's progress lines, once each; no Ray INFO lines.
    out = ""

    def seen() -> bool:
        nonlocal out
        got = capfd.readouterr()
        out += got.out + got.err
        return "[gentrain] done" in out

    wait_for(seen, 10, "rank 0's progress lines on the driver's console")
    lines = out.splitlines()
    assert sum("[gentrain] again: ddp_ae on shapes, 2 worker(s)" in line for line in lines) == 1
    assert sum("epoch 3/3" in line for line in lines) == 1
    assert not [line for line in lines if " INFO " in line or "Reporting training result" in line]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "ray-2-workers"])
def test_killed_driver_rerun_resumes(worker_env: PluginManager, ray_local: Any, tmp_path: Path, workers: int) -> None:
    """``gentrain fit`` SIGKILLed mid-run (driver and all), then the same command again: it resumes."""
    import ray
    import yaml

    config = run_config(
        tmp_path, "driver", workers=workers, params={"crash": "wait_for_kill", "crash_epoch": 1, "crash_rank": 0}
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "engine.cli", "fit", str(config_path)]
    # The test session's cluster, as a `ray start` cluster would be found: killing the driver leaves it up.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    run_dir = tmp_path / "driver"
    first = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Rank 0 writes its PID once epoch 1 is under way (epoch 0's checkpoint is on disk), then waits.
        wait_for(lambda: (run_dir / "pid").exists() or first.poll() is not None, 180, "rank 0 in epoch 1")
        assert first.poll() is None, first.communicate()[0].decode()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    worker_pid = int((run_dir / "pid").read_text())
    # Ray ends the dead driver's workers: nothing of the first run keeps training or writing.
    wait_for(lambda: not _alive(worker_pid), 60, f"the first run's rank 0 (pid {worker_pid}) to end")

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    started = epochs_started(run_dir)
    # Epoch 0 ran once; epoch 1, cut short by the kill, ran again from epoch 0's checkpoint.
    assert [e for e, _ in started] == [0, 1, 1, 2]
    assert worker_pid not in {p for _, p in started[2:]}
    assert csv_epochs(run_dir) == [1, 2, 3]
    latest = ckpt.latest(run_dir / "checkpoints")
    assert latest is not None
    assert ckpt.load(latest)["epoch"] == 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) no longer runs.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


# ---------------------------------------------------------------------------
# (6) a scaling request the cluster cannot satisfy fails fast
# ---------------------------------------------------------------------------


def test_too_many_workers_fail_fast_with_a_clear_message(
    worker_env: PluginManager, ray_local: dict[str, Any], tmp_path: Path
) -> None:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"can never run 8 worker\(s\) of \{1 CPU\}") as info:
        engine.fit(run_config(tmp_path, "greedy", workers=8, batch=8), plugins=worker_env)
    assert time.perf_counter() - t0 < 30
    assert f"{ray_local['CPU']:g} CPU in total" in str(info.value)
    assert info.value.problems[0][0] == "scaling.num_workers"

    with pytest.raises(ConfigError, match="can never run 2 worker") as info:
        engine.fit(
            run_config(tmp_path, "custom", scaling={"resources_per_worker": {"accelerator_x": 1}}),
            plugins=worker_env,
        )
    assert "0 accelerator_x" in str(info.value)


def test_start_timeout_bounds_the_wait_when_the_check_is_skipped(
    worker_env: PluginManager, ray_local: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(AUTOSCALING_ENV, "1")
    config = run_config(tmp_path, "timeout", workers=8, batch=8, scaling={"start_timeout_s": 3})
    t0 = time.perf_counter()
    with pytest.raises(TrainingError, match=r"could not start 8 worker\(s\) within scaling.start_timeout_s=3s"):
        engine.fit(config, plugins=worker_env)
    elapsed = time.perf_counter() - t0
    print(f"\nstart timeout 3s: fit gave up after {elapsed:.1f}s")
    assert elapsed < 60


@pytest.mark.parametrize(
    ("scaling", "nodes", "possible"),
    [
        ({"num_workers": 2}, [{"CPU": 2}], True),
        ({"num_workers": 3}, [{"CPU": 2}], False),
        ({"num_workers": 2, "placement_strategy": "STRICT_SPREAD"}, [{"CPU": 4}], False),
        ({"num_workers": 2, "placement_strategy": "STRICT_SPREAD"}, [{"CPU": 1}, {"CPU": 1}], True),
        ({"num_workers": 2, "placement_strategy": "STRICT_PACK"}, [{"CPU": 1}, {"CPU": 1}], False),
        ({"num_workers": 2, "cpus_per_worker": 1.5}, [{"CPU": 2}, {"CPU": 2}], True),
        ({"num_workers": 2, "cpus_per_worker": 1.5}, [{"CPU": 2}, {"CPU": 1}], False),
        ({"num_workers": 1, "use_gpu": True}, [{"CPU": 8}], False),
        ({"num_workers": 2, "use_gpu": True, "gpus_per_worker": 0.5}, [{"CPU": 2, "GPU": 1}], True),
    ],
)
def test_cluster_check(scaling: dict[str, Any], nodes: list[dict[str, float]], possible: bool) -> None:
    config = ScalingConfig(**scaling)
    resources = worker_resources(config)
    if possible:
        check_cluster(config, resources, nodes)
    else:
        with pytest.raises(ConfigError, match="can never run"):
            check_cluster(config, resources, nodes)


def test_gpu_fields_need_use_gpu() -> None:
    with pytest.raises(ConfigError, match="gpus_per_worker"):
        worker_resources(ScalingConfig(num_workers=1, gpus_per_worker=1))
    assert worker_resources(ScalingConfig(num_workers=1, use_gpu=True)) == {"CPU": 1.0, "GPU": 1.0}
    assert worker_resources(
        ScalingConfig(num_workers=1, cpus_per_worker=2, resources_per_worker={"special": 1})
    ) == {"CPU": 2.0, "special": 1.0}


# ---------------------------------------------------------------------------
# (4) two nodes, one worker each (its own cluster; runs last)
# ---------------------------------------------------------------------------


def test_two_nodes_one_worker_each(worker_env: PluginManager, ray_session: Any, tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    ray_session.shutdown()  # the session's local cluster must not run beside this one
    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=True)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        config = run_config(tmp_path, "two-nodes", epochs=2, scaling={"placement_strategy": "STRICT_SPREAD"})
        result = engine.fit(config, plugins=worker_env)
        replicas = [json.loads((result.run_dir / "replicas" / f"rank{r}.json").read_text()) for r in range(2)]
        assert replicas[0]["hashes"] == replicas[1]["hashes"]
        assert replicas[0]["node"] != replicas[1]["node"]  # one worker per node
        assert result.metrics["epoch"] == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
