"""A recorder and fault injector for the Tune tests (``GENTRAIN_PLUGINS=tune_test_plugins``).

It acts only in experiments whose directory (``<run dir>/../..``) holds
``tune-test.settings`` (JSON; not named ``*.json``, which a restored Tune
experiment rewrites in place from its staging copy); there it reads what to do:

* ``sleep``: seconds to sleep at the end of every epoch (slows trials down);
* ``crash``: ``"exit"`` (``os._exit(1)``) or ``"raise"`` at the first step of
  epoch ``crash_epoch`` (0-based), in the first trial to get there only
  (marker file ``<experiment>/crashed``, created atomically);

and it records, on rank 0, in the trial's run directory:

* ``lr.log``: ``<epoch> <lr of the first optimizer> <pid>`` at the start of every epoch;
* the same lr as the metric ``lr`` after each validation.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import engine


def _settings(trainer: Any) -> dict[str, Any] | None:
    path = Path(trainer.run_dir).parent.parent / "tune-test.settings"
    if not path.is_file():
        return None
    settings: dict[str, Any] = json.loads(path.read_text())
    return settings


def _lr(trainer: Any) -> float:
    optimizer = next(iter(trainer.optimizers.values()))
    return float(optimizer.param_groups[0]["lr"])


@engine.hookimpl
def gentrain_on_train_epoch_start(trainer: Any, epoch: int) -> None:
    if _settings(trainer) is None or not trainer.is_rank_zero:
        return
    with (Path(trainer.run_dir) / "lr.log").open("a") as f:
        f.write(f"{epoch} {_lr(trainer)!r} {os.getpid()}\n")


@engine.hookimpl
def gentrain_on_train_batch_end(trainer: Any, step: int) -> None:
    settings = _settings(trainer)
    if settings is None or settings.get("crash") is None or trainer.epoch != settings.get("crash_epoch", 1):
        return
    marker = Path(trainer.run_dir).parent.parent / "crashed"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"{Path(trainer.run_dir).name} step {step} pid {os.getpid()}\n".encode())
    os.close(fd)
    if settings["crash"] == "exit":
        os._exit(1)
    raise RuntimeError(f"injected failure at step {step}")


@engine.hookimpl
def gentrain_on_validation_end(trainer: Any, metrics: dict[str, float]) -> None:
    if _settings(trainer) is not None:
        metrics["lr"] = _lr(trainer)


@engine.hookimpl
def gentrain_on_train_epoch_end(trainer: Any) -> None:
    settings = _settings(trainer)
    if settings is not None and settings.get("sleep"):
        time.sleep(float(settings["sleep"]))
