"""``engine.fit``: validate everything on the driver, then run the loop in-process or on Ray."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import rundir
from engine.config import RunConfig
from engine.errors import GentrainError, TrainingError
from engine.plugins import PluginManager, using
from engine.prepare import check, prepare, prepare_run
from engine.trainer import WorkerEnv

__all__ = ["FitResult", "check", "fit", "prepare"]


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    config: RunConfig
    run_dir: Path
    metrics: dict[str, float]
    checkpoint: Path | None


def fit(
    config: RunConfig | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    plugins: PluginManager | None = None,
) -> FitResult:
    """Train a model as ``config`` says.

    :param config: a :class:`RunConfig` or a plain dict (YAML-shaped).
    :param overrides: dotted overrides, ``["trainer.epochs=5"]`` or ``{"trainer.epochs": 5}``.
    :raises ConfigError: before anything starts, if the config, data or model cannot work.
    """
    from engine import checkpoint, loop
    from engine.ray import fit_ray

    with using(plugins) as pm:
        run_config, dataset, model = prepare_run(config, overrides, pm)
        rundir.check_resume(run_config)
        rundir.move_aside(run_config)  # run.resume=never: once, here, so no worker restart mixes runs
        run_dir = loop.run_dir_of(run_config)
        existed = run_dir.exists()
        try:
            if run_config.scaling.num_workers > 0:
                del dataset, model  # each worker loads and builds its own
                metrics = fit_ray(run_config)
            else:
                # In-process: the config, data, model and plugins prepared above are used as they are.
                device = torch.device("cuda") if run_config.scaling.use_gpu else torch.device("cpu")
                try:
                    metrics = loop.train(run_config, WorkerEnv(device=device), pm, data=dataset, model=model)
                except (GentrainError, KeyboardInterrupt):
                    raise
                except Exception as e:  # raised by the model or another plugin's code: one line, not a traceback
                    entry = pm.models.get(run_config.model.name)
                    raise TrainingError(
                        f"run {run_config.run.name!r} (model {entry.name!r} of plugin {entry.plugin!r}) failed "
                        f"while training: {type(e).__name__}: {' '.join(str(e).split())}"
                    ) from e
        except BaseException:
            rundir.remove_if_unstarted(run_dir, existed)  # a failure before the first checkpoint leaves nothing
            raise
        return FitResult(run_config, run_dir, metrics, checkpoint.latest(run_dir / "checkpoints"))
