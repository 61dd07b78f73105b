"""Stop training when ``callbacks.early_stopping_metric`` stops improving.

The patience counter is kept in the checkpoint, so a resumed run stops when
an uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import engine


@dataclass(frozen=True)
class EarlyStoppingOptions:
    """``callbacks.early_stopping_*``: stop when a validation metric stops improving for ``patience`` epochs."""

    early_stopping_metric: str | None = None
    early_stopping_mode: Literal["min", "max"] = "min"
    early_stopping_patience: engine.PositiveInt = 3


class EarlyStopping:
    def __init__(self) -> None:
        self.best = math.nan
        self.bad_epochs = 0

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("early_stopping", EarlyStoppingOptions, EarlyStoppingOptions, kind="callbacks")

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        if trainer.epoch == 0:
            self.best, self.bad_epochs = math.nan, 0

    @engine.hookimpl
    def gentrain_on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        c = trainer.config.callbacks
        if c.early_stopping_metric is None:
            return
        if c.early_stopping_metric not in metrics:
            raise engine.ConfigError.one(
                "callbacks.early_stopping_metric",
                c.early_stopping_metric,
                f"is not among the reported metrics: {', '.join(sorted(metrics))}",
            )
        value = metrics[c.early_stopping_metric]
        better = value < self.best if c.early_stopping_mode == "min" else value > self.best
        if math.isnan(self.best) or better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= c.early_stopping_patience:
                trainer.should_stop = True

    @engine.hookimpl
    def gentrain_on_save_checkpoint(self, state: dict[str, Any]) -> None:
        state["plugin_state"]["early_stopping"] = {"best": self.best, "bad_epochs": self.bad_epochs}

    @engine.hookimpl
    def gentrain_on_load_checkpoint(self, state: dict[str, Any]) -> None:
        saved = state.get("plugin_state", {}).get("early_stopping")
        if saved:
            self.best, self.bad_epochs = float(saved["best"]), int(saved["bad_epochs"])


plugin = EarlyStopping()
