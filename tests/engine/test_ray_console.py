"""The console and the run folder of a Ray fit: gentrain's own lines, no Ray prefixes, a short failure note.

One 2-worker run, SIGKILLed in rank 1 during epoch 2 (the machinery of
``test_distributed``), shows everything at once: the driver's start lines,
periodic progress lines before the first epoch ends, the restart line, at
most a few lines of Ray traceback, and Ray's files under ``<run>/.ray/``.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_distributed import PID_WAIT_S, epochs_started, run_config, wait_for, worker_env

import engine
from engine.plugins import PluginManager
from engine.ray.console import describe_failure, failure_line
from engine.ray.train import RAY_FOLDER, root_cause

pytestmark = pytest.mark.ray

__all__ = ["worker_env"]  # the fixture, from test_distributed


def traceback_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "Traceback (most recent call last)" in line or line.lstrip().startswith('File "')]


def test_a_killed_worker_gets_one_line_and_the_run_goes_on(
    worker_env: PluginManager, ray_local: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = run_config(
        tmp_path,
        "console",
        params={"crash": "wait_for_kill", "crash_epoch": 1, "crash_rank": 1},
        scaling={"max_failures": 3},
        callbacks={"progress": True, "progress_every_s": 1e-9},
    )
    run_dir = tmp_path / "console"
    capfd.readouterr()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(engine.fit, config, plugins=worker_env)
        wait_for(lambda: (run_dir / "pid").exists() or future.done(), PID_WAIT_S, "rank 1 to write its PID")
        if future.done():
            future.result()
            pytest.fail("fit ended before the worker could be killed")
        os.kill(int((run_dir / "pid").read_text()), signal.SIGKILL)
        result = future.result(timeout=PID_WAIT_S)
    assert result.metrics["epoch"] == 3
    assert [e for e, _ in epochs_started(run_dir)] == [0, 1, 1, 2]

    out = ""

    def seen() -> bool:
        nonlocal out
        got = capfd.readouterr()
        out += got.out + got.err
        return "[gentrain] done" in out

    wait_for(seen, 15, "the last progress line")
    lines = out.splitlines()
    print("\n--- console of the run ---\n" + out)

    # The driver's own lines.
    assert any(line.startswith("[gentrain] using the Ray") or "starting Ray" in line for line in lines)
    assert sum(line.startswith("[gentrain] 2 worker(s) ready after ") for line in lines) == 2  # start, restart
    # Periodic lines under Ray, before the first epoch ended.
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("  epoch 1/3 ") and "train/loss" in line)
    periodic = [i for i, line in enumerate(lines) if line.startswith("  epoch 1/3 step ") and "img/s" in line]
    assert periodic, lines
    assert periodic[0] < first_epoch
    # gentrain's lines carry no Ray prefix.
    assert not [line for line in lines if "pid=" in line and ("[gentrain]" in line or "img/s" in line)]
    # One restart line, from the checkpoint of epoch 1.
    restarts = [line for line in lines if "restarting from checkpoint" in line]
    assert len(restarts) == 1, lines
    assert restarts[0].startswith("[gentrain] worker 1 died (")
    assert restarts[0].endswith("restarting from checkpoint step=14, attempt 2 of 4")
    # At most a few lines of Ray traceback.
    assert len(traceback_lines(lines)) <= 4, traceback_lines(lines)

    # The run folder: gentrain's files at the top, Ray's under .ray/.
    top = {p.name for p in run_dir.iterdir()}
    assert "checkpoints" in top
    assert not [name for name in top if name.startswith("checkpoint_") or name.endswith(".json")], top
    assert list((run_dir / RAY_FOLDER).rglob("checkpoint_*"))
    trees = [p for p in run_dir.rglob("*") if p.is_dir() and p.name == "checkpoints"]
    assert trees == [run_dir / "checkpoints"]


def test_failure_lines() -> None:
    from engine.errors import ConfigError

    died = type("ActorDiedError", (Exception,), {})("The actor died. Worker exit type: SYSTEM_ERROR Worker exit detail")
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    assert describe_failure(WorkerHealthCheckFailedError("health check failed", died), root_cause).startswith("died")
    args: dict[str, Any] = dict(max_failures=3, checkpoint_dir=Path("/nonexistent"), root_cause=root_cause)
    assert describe_failure(died, root_cause) == "died (SYSTEM_ERROR)"
    assert describe_failure(RuntimeError("boom\nmore"), root_cause) == "raised RuntimeError: boom"
    line = failure_line(1, {0: RuntimeError("gloo reset"), 1: died}, retryable=lambda e: True, **args)
    assert line == (
        "[gentrain] worker 1 died (SYSTEM_ERROR) (and 1 other worker(s) failed with it); "
        "restarting from the start (no checkpoint yet), attempt 2 of 4"
    )
    assert failure_line(4, {0: died}, retryable=lambda e: True, **args).endswith(
        "no restarts left (scaling.max_failures=3)"
    )
    config_error = ConfigError.one("model.x", 1, "bad")
    assert "not restarted" in failure_line(1, {1: config_error}, retryable=lambda e: False, **args)
