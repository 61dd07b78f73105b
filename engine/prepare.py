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
from engine import rundir
from engine.config import RunConfig
from engine.data import AnyData, load_dataset, split
from engine.errors import ConfigError, DataError, GentrainError, PluginError, suggest
from engine.loop import build_model, check_model
from engine.model import Model
from engine.optim import make_optimizer
from engine.paths import resolve_output_dir
from engine.plugins import PluginManager, current


def prepare(
    config: RunConfig | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] = (),
    plugins: PluginManager | None = None,
) -> tuple[RunConfig, AnyData]:
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
) -> tuple[RunConfig, AnyData]:
    raw = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    run_config = cfg.resolve(cfg.build_raw(raw, overrides), pm)
    run = run_config.run
    name = run.name or f"{run_config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    data = run_config.data
    root = _absolute("data.root", data.root) if data.root else None
    output_dir = _absolute("run.output_dir", run.output_dir, resolve_output_dir)
    run_config = dataclasses.replace(
        run_config,
        run=dataclasses.replace(run, name=name, output_dir=output_dir),
        data=dataclasses.replace(data, root=root),
    )
    check(run_config, pm)
    rundir.check_writable(run_config)
    dataset = _load_data(run_config, pm)
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


def _load_data(config: RunConfig, pm: PluginManager) -> Any:
    """:func:`load_dataset`, with a dataset plugin's own failures and labels outside its classes named."""
    data = config.data
    try:
        dataset = load_dataset(data, pm)
    except GentrainError:
        raise
    except OSError as e:
        raise DataError(f"data.name = {data.name!r}, data.root = {data.root!r}: {e}") from None
    except Exception as e:
        plugin = pm.datasets.get(data.name).plugin
        raise PluginError(f"dataset {data.name!r} (plugin {plugin!r}) failed to load: {type(e).__name__}: {e}") from e
    labels, classes = getattr(dataset, "labels", None), getattr(dataset, "num_classes", None)
    if isinstance(labels, torch.Tensor) and labels.numel():
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise DataError(f"dataset {data.name!r}: labels must be integers, not {labels.dtype}")
        low, high = int(labels.min()), int(labels.max())
        if classes is not None and (low < 0 or high >= classes):
            raise DataError(
                f"dataset {data.name!r}: labels run from {low} to {high}, outside its classes 0..{classes - 1}"
            )
    return dataset


def _absolute(field: str, value: str, how: Any = None) -> str:
    """``value`` as an absolute path; a symlink loop or an unreadable folder on the way is a :class:`ConfigError`."""
    try:
        return str(how(value)) if how is not None else str(Path(value).expanduser().resolve())
    except (RuntimeError, OSError) as e:  # pathlib raises RuntimeError for a symlink loop
        raise ConfigError.one(field, value, f"cannot be resolved to a folder: {e}") from None


def prepare_run(
    config: RunConfig | Mapping[str, Any],
    overrides: Iterable[str] | Mapping[str, Any] = (),
    plugins: PluginManager | None = None,
) -> tuple[RunConfig, AnyData, Model]:
    """:func:`prepare`, also returning the model it built (an in-process run trains that one)."""
    pm = plugins or current()
    run_config, dataset = _prepare(config, overrides, pm)
    return run_config, dataset, _build(run_config, pm, dataset)


def _build(run_config: RunConfig, pm: PluginManager, dataset: AnyData) -> Model:
    # Building the model here surfaces shape and DDP-coverage errors before any
    # worker starts; from the run's seed, so it is the model the loop would build.
    with torch.random.fork_rng():
        torch.manual_seed(run_config.trainer.seed)
        train_set, _ = split(dataset, run_config.data)
        workers = max(run_config.scaling.num_workers, 1)
        spec = dataset.spec.for_run(len(train_set), run_config.trainer.batch_size, workers)
        model = build_model(run_config, pm, spec)
    _, groups = check_model(model, max(run_config.scaling.num_workers, 1))
    unknown = sorted(set(run_config.optim.per_optimizer) - set(groups))
    if unknown:
        raise ConfigError(
            [
                (
                    f"optim.per_optimizer.{n}",
                    run_config.optim.per_optimizer[n],
                    f"model {run_config.model.name!r} "
                    f"has no optimizer {n!r}{suggest(n, groups)}; its optimizers: {', '.join(groups)}",
                )
                for n in unknown
            ]
        )
    for n, params in groups.items():  # a gentrain_make_optimizer hook returning something else fails here
        make_optimizer(pm.hook, n, params, run_config.optim.for_optimizer(n))
    return model


def check(config: RunConfig, plugins: PluginManager) -> None:
    """Cross-section rules that field types cannot express."""
    problems: list[tuple[str, object, str]] = []
    if config.trainer.precision == "fp16" and not config.scaling.use_gpu:
        problems.append(("trainer.precision", "fp16", "needs a GPU (scaling.use_gpu=true); use bf16 on CPU"))
    if config.data.loader == "ray_data" and config.scaling.num_workers == 0:
        problems.append(("data.loader", "ray_data", "streams shards to Ray workers: needs scaling.num_workers>=1"))
    if config.data.loader == "ray_data" and config.data.on_bad_file == "skip":
        problems.append(("data.on_bad_file", "skip", "is not supported with data.loader=ray_data (equal shards)"))
    if config.scaling.use_gpu and config.scaling.num_workers == 0 and not torch.cuda.is_available():
        problems.append(("scaling.use_gpu", True, "no CUDA device is visible to this process"))
    if config.data.val_fraction == 0:
        # Rules that watch a validation metric never see one without a validation split.
        watched = [
            ("callbacks.early_stopping_metric", getattr(config.callbacks, "early_stopping_metric", None)),
            (
                "optim.plateau_metric",
                getattr(config.optim, "plateau_metric", None)
                if getattr(config.optim, "scheduler", None) == "plateau"
                else None,
            ),
        ]
        for field, metric in watched:
            if isinstance(metric, str) and metric.startswith("val/"):
                problems.append(
                    (
                        field,
                        metric,
                        "is a validation metric, but data.val_fraction=0 leaves no "
                        "validation set; set data.val_fraction > 0 or watch a train/ metric",
                    )
                )
    if config.trainer.compile and not problems:
        reason = compile_unavailable()
        if reason:
            allowed = f"this platform cannot compile ({reason}); use trainer.compile=false"
            problems.append(("trainer.compile", True, allowed))
    if problems:
        raise ConfigError(problems)


def compile_unavailable() -> str | None:
    """Why ``torch.compile`` cannot run here (no C++ compiler, an unsupported Python...), or ``None``.

    Compiles and runs a two-op function once: the same toolchain a model's compile needs.
    """
    try:
        probe = torch.compile(lambda x: x * 2 + 1)
        probe(torch.ones(2))
    except Exception as e:  # Dynamo and Inductor raise many kinds; all mean "cannot compile"
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    return None
