"""Progress on the console: a header, one line per epoch and a summary, on rank 0.

On a terminal a step counter updates in place during the epoch.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import engine


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step"))


@dataclass(frozen=True)
class ProgressOptions:
    """``callbacks.progress``: print progress on rank 0."""

    progress: bool = True


class Progress:
    def __init__(self) -> None:
        self.t0 = 0.0
        self.epoch_t0 = 0.0

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("progress", ProgressOptions, ProgressOptions, kind="callbacks")

    @staticmethod
    def _on(trainer: Any) -> bool:
        return bool(trainer.is_rank_zero and trainer.config.callbacks.progress)

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        self.t0 = time.perf_counter()
        if self._on(trainer):
            c = trainer.config
            where = f"{trainer.world_size} worker(s) on {trainer.device.type}"
            resumed = f", resuming after epoch {trainer.epoch}" if trainer.epoch else ""
            print(f"[gentrain] {c.run.name}: {c.model.name} on {c.data.name}, {where}{resumed}", flush=True)

    @engine.hookimpl
    def gentrain_on_train_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.epoch_t0 = time.perf_counter()

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, trainer: Any, step: int) -> None:
        if step % 10 == 0 and self._on(trainer) and sys.stdout.isatty():
            print(f"\r  epoch {trainer.epoch + 1}/{trainer.config.trainer.epochs} step {step}", end="", flush=True)

    @engine.hookimpl
    def gentrain_on_train_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self._on(trainer):
            dt = time.perf_counter() - self.epoch_t0
            cr = "\r" if sys.stdout.isatty() else ""
            print(
                f"{cr}  epoch {epoch + 1}/{trainer.config.trainer.epochs} {dt:.1f}s  {format_metrics(metrics)}",
                flush=True,
            )

    @engine.hookimpl
    def gentrain_on_fit_end(self, trainer: Any) -> None:
        if self._on(trainer):
            total = time.perf_counter() - self.t0
            print(f"[gentrain] done in {total:.1f}s; outputs in {trainer.run_dir}", flush=True)


plugin = Progress()
