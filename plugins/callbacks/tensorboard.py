"""TensorBoard event files under ``<run dir>/tensorboard``, written by rank 0.

Training losses every ``trainer.log_every`` steps, epoch metrics at each epoch end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine


@dataclass(frozen=True)
class TensorBoardOptions:
    """``callbacks.tensorboard``: write TensorBoard event files under ``<run dir>/tensorboard``."""

    tensorboard: bool = True


class TensorBoard:
    def __init__(self) -> None:
        self.writer: Any = None

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("tensorboard", TensorBoardOptions, TensorBoardOptions, kind="callbacks")

    @staticmethod
    def _on(trainer: Any) -> bool:
        return bool(trainer.is_rank_zero and trainer.config.callbacks.tensorboard)

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        if self._on(trainer):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(trainer.run_dir) / "tensorboard"), purge_step=trainer.step)

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, trainer: Any, step: int, losses: dict[str, Any]) -> None:
        if self.writer is not None and step % trainer.config.trainer.log_every == 0:
            for key, value in losses.items():
                self.writer.add_scalar(f"step/{key}", float(value), step)

    @engine.hookimpl
    def gentrain_on_train_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                if key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, epoch + 1)
            self.writer.flush()

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @engine.hookimpl
    def gentrain_on_fit_end(self) -> None:
        self._close()

    @engine.hookimpl
    def gentrain_on_exception(self) -> None:
        self._close()


plugin = TensorBoard()
