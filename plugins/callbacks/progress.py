"""Progress on the console, from rank 0: a header, a progress bar or periodic lines, one line per epoch, a summary.

- On a terminal (in-process runs), a tqdm bar over the whole run: steps done of
  the total, ETA, images per second and a running loss; epoch lines print above it.
- Off a terminal, and under Ray, a plain line every ``callbacks.progress_every_s``
  seconds during an epoch (step, percent, images/s, running loss, ETA), so a run
  is not silent before its first epoch ends.
- A rerun of a run that already finished says so and trains nothing.

Every line goes through :func:`emit`: printed, unless a launcher has put a
handler on the ``gentrain.console`` logger (Ray Train workers hand the lines to
the driver, which prints them without Ray's ``(RayTrainWorker pid=...)`` prefix;
a Tune trial drops them in favour of the search's own table).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import engine

#: The logger gentrain's console lines go through when a launcher gave it a handler.
CONSOLE_LOGGER = "gentrain.console"


def emit(line: str) -> None:
    """Print one console line, or hand it to the ``gentrain.console`` logger's handlers when it has any."""
    log = logging.getLogger(CONSOLE_LOGGER)
    if log.handlers:
        log.info(line)
    else:
        print(line, flush=True)


def redirected() -> bool:
    """Whether a launcher takes the console lines (then no bar: the lines end up off this process's terminal)."""
    return bool(logging.getLogger(CONSOLE_LOGGER).handlers)


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step"))


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@dataclass(frozen=True)
class ProgressOptions:
    """``callbacks.progress``: print progress on rank 0; ``callbacks.progress_every_s``: seconds between the
    plain progress lines during an epoch off a terminal and under Ray (0: none)."""

    progress: bool = True
    progress_every_s: engine.NonNegativeFloat = 15.0


class Progress:
    def __init__(self) -> None:
        self.t0 = 0.0
        self.epoch_t0 = 0.0
        self.last_line = 0.0
        self.bar: Any = None
        self.finished = False
        self.rate_t0 = 0.0
        self.rate_step0 = 0
        self.loss_sums: dict[str, Any] = {}
        self.loss_count = 0

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("progress", ProgressOptions, ProgressOptions, kind="callbacks")

    @staticmethod
    def _on(trainer: Any) -> bool:
        return bool(trainer.is_rank_zero and trainer.config.callbacks.progress)

    # -- sizes -----------------------------------------------------------------

    @staticmethod
    def _steps_per_epoch(trainer: Any) -> int | None:
        spec = trainer.data_spec
        steps = getattr(spec, "steps_per_epoch", None)
        if not steps:
            return None
        return max(int(steps) // max(trainer.config.trainer.accumulate_grad_batches, 1), 1)

    def _total_steps(self, trainer: Any) -> int | None:
        per_epoch = self._steps_per_epoch(trainer)
        if per_epoch is None:
            return None
        total = per_epoch * trainer.config.trainer.epochs
        max_steps = trainer.config.trainer.max_steps
        return min(total, max_steps) if max_steps else total

    @staticmethod
    def _images_per_step(trainer: Any) -> int:
        t = trainer.config.trainer
        return int(t.batch_size * trainer.world_size * t.accumulate_grad_batches)

    # -- the running loss ----------------------------------------------------

    def _add_losses(self, losses: dict[str, Any]) -> None:
        # Summed as tensors (no device sync per step); turned into floats when shown.
        for key, value in losses.items():
            if key == "loss" or key.endswith("/loss") or len(losses) == 1:
                previous = self.loss_sums.get(key)
                value = value.detach() if hasattr(value, "detach") else value
                self.loss_sums[key] = value if previous is None else previous + value
        self.loss_count += 1

    def _running_loss(self) -> str:
        if not self.loss_count:
            return ""
        shown = {k: float(v) / self.loss_count for k, v in list(self.loss_sums.items())[:3]}
        self.loss_sums, self.loss_count = {}, 0
        return " ".join(f"{k}={v:.4g}" for k, v in shown.items())

    def _rate(self, step: int) -> float:
        dt = time.perf_counter() - self.rate_t0
        return (step - self.rate_step0) / dt if dt > 0 else 0.0

    # -- hooks -----------------------------------------------------------------

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        self.t0 = self.rate_t0 = self.last_line = time.perf_counter()
        self.rate_step0 = trainer.step
        self.loss_sums, self.loss_count = {}, 0
        c = trainer.config
        self.finished = trainer.epoch >= c.trainer.epochs
        if not self._on(trainer):
            return
        if self.finished:
            emit(
                f"[gentrain] run {c.run.name} already finished at epoch {trainer.epoch}; nothing to do — "
                f"use run.resume=never or a new run.name"
            )
            return
        where = f"{trainer.world_size} worker(s) on {trainer.device.type}"
        resumed = f", resuming after epoch {trainer.epoch}" if trainer.epoch else ""
        emit(f"[gentrain] {c.run.name}: {c.model.name} on {c.data.name}, {where}{resumed}")
        total = self._total_steps(trainer)
        if sys.stdout.isatty() and not redirected():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=trainer.step,
                unit="step",
                dynamic_ncols=True,
                leave=False,
                file=sys.stdout,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]",
            )

    @engine.hookimpl
    def gentrain_on_train_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.epoch_t0 = time.perf_counter()

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, trainer: Any, step: int, losses: dict[str, Any]) -> None:
        if not self._on(trainer):
            return
        self._add_losses(losses)
        done = step + 1
        if self.bar is not None:
            if done % 10 == 0:
                self.bar.update(done - self.bar.n)
                ips = self._rate(done) * self._images_per_step(trainer)
                epochs = trainer.config.trainer.epochs
                self.bar.set_postfix_str(
                    f"epoch {trainer.epoch + 1}/{epochs}, {ips:.0f} img/s, {self._running_loss()}", refresh=True
                )
            return
        every = trainer.config.callbacks.progress_every_s
        now = time.perf_counter()
        if every <= 0 or now - self.last_line < every:
            return
        self.last_line = now
        rate = self._rate(done)
        per_epoch = self._steps_per_epoch(trainer)
        total = self._total_steps(trainer)
        epochs = trainer.config.trainer.epochs
        where = f"  epoch {trainer.epoch + 1}/{epochs}"
        if per_epoch:
            in_epoch = done - trainer.epoch * per_epoch
            where += f" step {in_epoch}/{per_epoch} ({100 * in_epoch / per_epoch:.0f}%)"
        else:
            where += f" step {done}"
        eta = f"  eta {format_seconds((total - done) / rate)}" if total and rate > 0 else ""
        ips = rate * self._images_per_step(trainer)
        emit(f"{where}  {ips:.1f} img/s  {self._running_loss()}{eta}")

    @engine.hookimpl
    def gentrain_on_train_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if not self._on(trainer):
            return
        dt = time.perf_counter() - self.epoch_t0
        self.last_line = time.perf_counter()
        line = f"  epoch {epoch + 1}/{trainer.config.trainer.epochs} {dt:.1f}s  {format_metrics(metrics)}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            emit(line)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @engine.hookimpl
    def gentrain_on_fit_end(self, trainer: Any) -> None:
        self._close()
        if self._on(trainer) and not self.finished:
            total = time.perf_counter() - self.t0
            emit(f"[gentrain] done in {total:.1f}s; outputs in {trainer.run_dir}")

    @engine.hookimpl
    def gentrain_on_exception(self) -> None:
        self._close()


plugin = Progress()
