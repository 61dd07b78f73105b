"""``python tests/engine/streaming_run.py CONFIG_JSON LOSSES_JSONL``: one ``engine.fit`` in a process of its own.

What ``tests/engine/test_streaming.py`` runs where it measures memory or kills the run: every
step's losses are appended to ``LOSSES_JSONL`` as ``[step, {name: value}]`` (flushed, so a
killed run leaves the steps it took), and at the end one JSON line goes to stdout:

* ``step``: the run's last step;
* ``main_hwm_mb``: ``VmHWM`` of this process, the training process (its own peak RSS, exact);
* ``worker_hwm_mb``: the largest ``VmHWM`` of its child processes (the ``DataLoader`` workers),
  sampled every 0.1 s while they live, so exact for workers that lived past one sample;
* ``tree_pss_mb``: the peak over those samples of the PSS of this process plus its children
  (shared pages counted once, split among the processes that map them): the memory the
  whole training process tree costs the machine.

``ru_maxrss`` is not used: Linux carries it across ``exec``, so it would start at the size of
the pytest process that forked this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import torch

import engine
from engine.testing import plugin_manager


def _kb(path: str, field: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:  # the process has exited
        pass
    return 0


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(f"/proc/self/task/{task}/children").read_text().split()]
    return pids


class Memory(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.worker_hwm_kb = 0
        self.tree_pss_kb = 0

    def sample(self) -> None:
        kids = _children()
        for pid in kids:
            self.worker_hwm_kb = max(self.worker_hwm_kb, _kb(f"/proc/{pid}/status", "VmHWM:"))
        pss = sum(_kb(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in ["self", *kids])
        self.tree_pss_kb = max(self.tree_pss_kb, pss)

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.sample()


class Losses:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a")  # noqa: SIM115 - open for the whole run

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        self.file.write(json.dumps([step, {k: float(v) for k, v in losses.items()}]) + "\n")
        self.file.flush()


def main(config: dict[str, Any], losses: str) -> None:
    memory = Memory()
    memory.start()
    with plugin_manager(Losses(losses)):
        result = engine.fit(config)
    memory.done.set()
    memory.join()
    print(
        json.dumps(
            {
                "step": result.metrics["step"],
                "main_hwm_mb": _kb("/proc/self/status", "VmHWM:") / 1024,
                "worker_hwm_mb": memory.worker_hwm_kb / 1024,
                "tree_pss_mb": memory.tree_pss_kb / 1024,
            }
        )
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), sys.argv[2])
