"""MLflow tracking, rank 0 only: the resolved config as params, metrics per epoch, the sample grids as artifacts.

Optional: ``pip install 'gentrain[mlflow]'``, then ``mlflow.enabled=true``. Its
own section of the run config::

    mlflow: {enabled: true, experiment: gentrain, tracking_uri: null, run_name: null}

``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``, else an SQLite store
``<run.output_dir>/mlflow.db`` with artifacts under ``<run.output_dir>/mlartifacts``
(absolute paths: a Ray worker's working directory is not yours). A ``file:``
URI, which MLflow 3 accepts only with ``MLFLOW_ALLOW_FILE_STORE=true``, turns
that on for this process, since it was asked for by name. A resumed run logs
into the same MLflow run (its id is kept in the checkpoint).
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
from plugins.callbacks.tracking import epoch_grids, flatten


@dataclass(frozen=True)
class MlflowOptions:
    """``mlflow:``: log params, epoch metrics and sample grids to MLflow (rank 0)."""

    enabled: bool = False
    experiment: str = "gentrain"
    tracking_uri: str | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        if self.enabled and importlib.util.find_spec("mlflow") is None:
            raise ValueError(
                "enabled=true needs the mlflow package, which is not installed: pip install 'gentrain[mlflow]'"
            )


class MlflowLogger:
    def __init__(self) -> None:
        self.client: Any = None
        self.run_id: str | None = None
        self.resumed_id: str | None = None

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("mlflow", self, MlflowOptions)

    @staticmethod
    def options(trainer: Any) -> MlflowOptions:
        options: MlflowOptions = trainer.config.section("mlflow")
        return options

    def _on(self, trainer: Any) -> bool:
        return bool(trainer.is_rank_zero and self.options(trainer).enabled)

    @staticmethod
    def tracking_uri(trainer: Any) -> str:
        given = MlflowLogger.options(trainer).tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if given:
            return given
        return f"sqlite:///{Path(trainer.config.run.output_dir).expanduser().resolve() / 'mlflow.db'}"

    @engine.hookimpl
    def gentrain_on_load_checkpoint(self, state: dict[str, Any]) -> None:
        saved = state.get("plugin_state", {}).get("mlflow") or {}
        self.resumed_id = saved.get("run_id")

    @engine.hookimpl
    def gentrain_on_save_checkpoint(self, state: dict[str, Any]) -> None:
        if self.run_id is not None:
            state["plugin_state"]["mlflow"] = {"run_id": self.run_id}

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        if not self._on(trainer):
            return
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param
        except ImportError as e:
            raise engine.ConfigError.one(
                "mlflow.enabled", True, f"needs the mlflow package: pip install 'gentrain[mlflow]' ({e})"
            ) from None
        options = self.options(trainer)
        uri = self.tracking_uri(trainer)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if self.resumed_id is not None:
            self.run_id = self.resumed_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(options.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = None
            if uri.startswith("sqlite:"):
                location = (Path(trainer.config.run.output_dir).expanduser().resolve() / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(options.experiment, artifact_location=location)
        run = self.client.create_run(
            experiment_id,
            run_name=options.run_name or trainer.config.run.name,
            tags={"gentrain.run_dir": str(trainer.run_dir), "gentrain.model": trainer.config.model.name},
        )
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(trainer.config.to_dict()).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    @engine.hookimpl(trylast=True)  # after sample_grids has written this epoch's PNGs
    def gentrain_on_train_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [
            Metric(key, float(value), now, epoch + 1) for key, value in metrics.items() if key not in ("epoch", "step")
        ]
        if values:
            self.client.log_batch(self.run_id, metrics=values)
        for path in epoch_grids(Path(trainer.run_dir), epoch + 1).values():
            self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def _end(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
        self.client = None
        self.run_id = self.resumed_id = None

    @engine.hookimpl
    def gentrain_on_fit_end(self) -> None:
        self._end("FINISHED")

    @engine.hookimpl
    def gentrain_on_exception(self) -> None:
        self._end("FAILED")


plugin = MlflowLogger()
