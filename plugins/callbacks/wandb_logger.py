"""Weights & Biases, rank 0 only: the resolved config, metrics per epoch, the sample grids as images.

Optional: ``pip install 'gentrain[wandb]'``, then ``wandb.enabled=true``. Its
own section of the run config::

    wandb: {enabled: true, project: gentrain, entity: null, base_url: null, mode: null, run_name: null}

``mode`` (``online``, ``offline``, ``disabled``) defaults to ``WANDB_MODE`` or
W&B's own default; ``base_url`` (the server, W&B's tracking URI) to
``WANDB_BASE_URL``. W&B's files go under ``<run dir>/wandb/``. A resumed run
continues the same W&B run (its id is kept in the checkpoint).
"""

from __future__ import annotations

import importlib.util
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import engine
from plugins.callbacks.tracking import epoch_grids, flatten


@dataclass(frozen=True)
class WandbOptions:
    """``wandb:``: log the config, epoch metrics and sample grids to Weights & Biases (rank 0)."""

    enabled: bool = False
    project: str = "gentrain"
    entity: str | None = None
    base_url: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.enabled and importlib.util.find_spec("wandb") is None:
            raise ValueError(
                "enabled=true needs the wandb package, which is not installed: pip install 'gentrain[wandb]'"
            )


class WandbLogger:
    def __init__(self) -> None:
        self.run: Any = None
        self.run_id: str | None = None
        self.resumed_id: str | None = None

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("wandb", self, WandbOptions)

    @staticmethod
    def options(trainer: Any) -> WandbOptions:
        options: WandbOptions = trainer.config.section("wandb")
        return options

    @engine.hookimpl
    def gentrain_on_load_checkpoint(self, state: dict[str, Any]) -> None:
        saved = state.get("plugin_state", {}).get("wandb") or {}
        self.resumed_id = saved.get("run_id")

    @engine.hookimpl
    def gentrain_on_save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.run_id is not None:
            state["plugin_state"]["wandb"] = {"run_id": self.run_id}

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        options = self.options(trainer)
        if not (trainer.is_rank_zero and options.enabled):
            return
        try:
            import wandb
        except ImportError as e:
            raise engine.ConfigError.one(
                "wandb.enabled", True, f"needs the wandb package: pip install 'gentrain[wandb]' ({e})"
            ) from None
        settings: dict[str, Any] = {"console": "off", "silent": True}
        if options.base_url:
            settings["base_url"] = options.base_url
        run_dir = Path(trainer.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self.resumed_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=options.project,
            entity=options.entity,
            name=options.run_name or trainer.config.run.name,
            id=self.run_id,
            resume="allow",
            dir=str(run_dir),
            mode=options.mode,
            config=flatten(trainer.config.to_dict()),
            settings=wandb.Settings(**settings),
            reinit="create_new",
        )

    @engine.hookimpl(trylast=True)  # after sample_grids has written this epoch's PNGs
    def gentrain_on_train_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self.run is None:
            return
        import wandb

        values: dict[str, Any] = {k: float(v) for k, v in metrics.items() if k != "step"}
        for kind, path in epoch_grids(Path(trainer.run_dir), epoch + 1).items():
            values[f"samples/{kind}"] = wandb.Image(str(path))
        self.run.log(values, step=epoch + 1)

    def _end(self, exit_code: int) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
        self.run = None
        self.run_id = self.resumed_id = None

    @engine.hookimpl
    def gentrain_on_fit_end(self) -> None:
        self._end(0)

    @engine.hookimpl
    def gentrain_on_exception(self) -> None:
        self._end(1)


plugin = WandbLogger()
