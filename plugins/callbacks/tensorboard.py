"""TensorBoard event files under ``<run dir>/tensorboard``, written by rank 0.

Training losses every ``trainer.log_every`` steps; at each epoch end the epoch
metrics (``lr/<optimizer>`` among them when a schedule is configured) and the
sample and reconstruction grids the ``sample_grids`` plugin wrote for that
epoch (``samples/samples``, ``samples/reconstructions``); at the end of the
run the hyperparameters (the resolved config, flattened) with the final
metrics (TensorBoard's HPARAMS tab). One event tree per run, a Tune trial's
under its own run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
from plugins.callbacks.tracking import epoch_grids, flatten


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

    @engine.hookimpl(trylast=True)  # after sample_grids has written this epoch's PNGs
    def gentrain_on_train_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                if key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, epoch + 1)
            for kind, path in epoch_grids(Path(trainer.run_dir), epoch + 1).items():
                self._add_image(f"samples/{kind}", path, epoch + 1)
            self.writer.flush()

    def _add_image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, array, step, dataformats="HWC")

    def _add_hparams(self, trainer: Any) -> None:
        """The resolved config and the final metrics, in the run's own event file (no sub-run folder)."""
        from torch.utils.tensorboard.summary import hparams

        final = {k: float(v) for k, v in (trainer.metrics or {}).items() if k not in ("epoch", "step")}
        if not final:
            return
        values = {
            k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in flatten(trainer.config.to_dict()).items()
        }
        exp, ssi, sei = hparams(values, final)
        writer = self.writer.file_writer
        for summary in (exp, ssi, sei):
            writer.add_summary(summary, trainer.step)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @engine.hookimpl
    def gentrain_on_fit_end(self, trainer: Any) -> None:
        if self.writer is not None:
            self._add_hparams(trainer)
        self._close()

    @engine.hookimpl
    def gentrain_on_exception(self) -> None:
        self._close()


plugin = TensorBoard()
