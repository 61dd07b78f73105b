"""Everything checked on the driver before a worker starts: :func:`prepare`.

Shared by ``engine.fit`` (:mod:`engine.api`) and ``engine.tune``
(:mod:`engine.ray.tune`), below both, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from engine import config as cfg
from engine.config import RunConfig
from engine.data import ImageData, load_data, split
from engine.errors import ConfigError
from engine.loop import build_model, check_model
from engine.model import Model
from engine.paths import resolve_output_dir
from engine.plugins import PluginManager, current


def prepare(
    config: RunConfig | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] = (),
    plugins: PluginManager | None = None,
) -> tuple[RunConfig, ImageData]:
    """Everything that can be checked before a worker starts.

    Validates the config, names the run, makes paths absolute (Ray workers
    run in another working directory), loads the data once (missing or corrupt
    files fail here), lets the model config check itself against the data and
    builds the model once (its phases, optimizers and DDP coverage are checked).
    """
    pm = plugins or current()
    run_config, dataset = _prepare(config, overrides, pm)
    _build(run_config, pm, dataset)
    return run_config, dataset


def _prepare(
    config: RunConfig | Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any], pm: PluginManager
) -> tuple[RunConfig, ImageData]:
    raw = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    run_config = cfg.resolve(cfg.build_raw(raw, overrides), pm)
    run = run_config.run
    name = run.name or f"{run_config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    data = run_config.data
    root = str(Path(data.root).expanduser().resolve()) if data.root else None
    run_config = dataclasses.replace(
        run_config,
        run=dataclasses.replace(run, name=name, output_dir=resolve_output_dir(run.output_dir)),
        data=dataclasses.replace(data, root=root),
    )
    check(run_config, pm)
    dataset = load_data(run_config.data, pm)
    train_set, _ = split(dataset, run_config.data)
    t = run_config.trainer
    workers = max(run_config.scaling.num_workers, 1)
    spec = dataset.spec.for_run(len(train_set), t.batch_size, workers)
    params = run_config.model.params
    if hasattr(params, "check"):
        params.check(spec)
    global_batch = t.batch_size * workers * t.accumulate_grad_batches
    if global_batch > len(train_set):
        raise ConfigError.one(
            "trainer.batch_size",
            t.batch_size,
            f"batch_size × num_workers × accumulate_grad_batches = {global_batch} exceeds the "
            f"{len(train_set)} training images of {run_config.data.name!r}",
        )
    return run_config, dataset


def prepare_run(
    config: RunConfig | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] = (),
    plugins: PluginManager | None = None,
) -> tuple[RunConfig, ImageData, Model]:
    """:func:`prepare`, also returning the model it built (an in-process run trains that one)."""
    pm = plugins or current()
    run_config, dataset = _prepare(config, overrides, pm)
    return run_config, dataset, _build(run_config, pm, dataset)


def _build(run_config: RunConfig, pm: PluginManager, dataset: ImageData) -> Model:
    # Building the model here surfaces shape and DDP-coverage errors before any
    # worker starts; from the run's seed, so it is the model the loop would build.
    with torch.random.fork_rng():
        torch.manual_seed(run_config.trainer.seed)
        train_set, _ = split(dataset, run_config.data)
        workers = max(run_config.scaling.num_workers, 1)
        spec = dataset.spec.for_run(len(train_set), run_config.trainer.batch_size, workers)
        model = build_model(run_config, pm, spec)
    check_model(model, max(run_config.scaling.num_workers, 1))
    return model


def check(config: RunConfig, plugins: PluginManager) -> None:
    """Cross-section rules that field types cannot express."""
    problems: list[tuple[str, object, str]] = []
    if config.trainer.precision == "fp16" and not config.scaling.use_gpu:
        problems.append(("trainer.precision", "fp16", "needs a GPU (scaling.use_gpu=true); use bf16 on CPU"))
    if config.scaling.use_gpu and config.scaling.num_workers == 0 and not torch.cuda.is_available():
        problems.append(("scaling.use_gpu", True, "no CUDA device is visible to this process"))
    if problems:
        raise ConfigError(problems)
