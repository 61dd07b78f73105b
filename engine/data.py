"""Datasets and loaders.

A dataset plugin registers ``factory(config, data) -> ImageData | StreamingData``
under a name (``data.name``). Small datasets live in memory as uint8 tensors and are
batched by :class:`MemoryLoader`: a shuffled index tensor sliced per batch, no
per-sample Python, sharded across ranks exactly like ``DistributedSampler``
(rank ``r`` of ``w`` takes positions ``r, r+w, ...`` of each epoch's
permutation), so ``w`` workers with batch ``B`` see the same samples per step
as one worker with batch ``w·B``.

A dataset too large for memory (or read from files) is a :class:`StreamingData`:
a ``torch.utils.data.Dataset`` (map-style, or an ``IterableDataset`` for a
stream) with its :class:`~engine.model.DataSpec` and length known without
reading any item. :func:`choose_loader` picks the path (``data.loader``):
``memory`` (decoded once, then :class:`MemoryLoader`), ``dataloader``
(:class:`DataLoaderAdapter`: items decoded in ``DataLoader`` worker processes)
or ``ray_data`` (:class:`RayShardLoader`: each Ray Train worker streams its
shard of a Ray Dataset; validation reads its share of the held-out items
through a ``DataLoader``, as on ``dataloader``). The map-style paths take the same positions of the
same per-epoch permutation (:func:`epoch_order`), so a resumed run
(``iter_from(batch_in_epoch)``) sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.config import DataConfig
from engine.errors import ConfigError, DataError
from engine.loaders import (
    DEVICE_RESIDENT_BYTES,
    AnyData,
    Augment,
    DataLoaderAdapter,
    ImageData,
    MemoryLoader,
    PositionSampler,
    RayShardLoader,
    StreamingData,
    _bad_files,
    _collate,
    _Items,
    _StreamBatches,
    batches_per_rank,
    epoch_order,
    to_float,
)

__all__ = [
    "AUTO_MEMORY_BYTES",
    "DEVICE_RESIDENT_BYTES",
    "AnyData",
    "Augment",
    "DataLoaderAdapter",
    "ImageData",
    "MemoryLoader",
    "PositionSampler",
    "RayShardLoader",
    "StreamingData",
    "batches_per_rank",
    "check_loader",
    "choose_loader",
    "epoch_order",
    "load_data",
    "load_dataset",
    "make_loader",
    "materialize",
    "split",
    "to_float",
]


#: ``data.loader=auto`` decodes a map-style dataset into memory once when it is at most this large (bytes).
AUTO_MEMORY_BYTES = 512 << 20


def choose_loader(dataset: AnyData, data: DataConfig) -> str:
    """The path ``data.loader`` means for ``dataset``: ``memory``, ``dataloader`` or ``ray_data``."""
    if data.loader != "auto":
        return data.loader
    if isinstance(dataset, ImageData):
        return "memory"
    fits = dataset.length * dataset.spec.numel <= AUTO_MEMORY_BYTES
    return "memory" if fits and not dataset.iterable and dataset.augment is None else "dataloader"


def _from_plugin(data: DataConfig, plugins: Any) -> AnyData:
    entry = plugins.datasets.get(data.name)
    try:
        dataset: AnyData = entry.obj(data.params, data)
    except DataError as exc:
        # The reader knows the file; the user needs the config fields that led to it.
        raise DataError(f"{_where(data)}: {exc}") from exc
    if data.limit is not None and data.limit < len(dataset):
        if isinstance(dataset, StreamingData) and dataset.iterable:
            dataset = StreamingData(**{**dataset.__dict__, "length": data.limit})
        else:
            dataset = dataset.subset(torch.arange(data.limit))
    return dataset


def _where(data: DataConfig) -> str:
    return f"data.name = {data.name!r}" + (f", data.root = {data.root!r}" if data.root else "")


def load_dataset(data: DataConfig, plugins: Any) -> AnyData:
    """The dataset ``data.name`` for training, ``data.limit`` applied, as the loader choice wants it.

    A :class:`StreamingData` that :func:`choose_loader` puts in memory is decoded here
    (with ``data.loader_workers`` processes) and comes back as :class:`ImageData`.
    """
    dataset = _from_plugin(data, plugins)
    check_loader(dataset, data)
    if isinstance(dataset, StreamingData) and choose_loader(dataset, data) == "memory":
        return _materialized(dataset, data)
    return dataset


def load_data(data: DataConfig, plugins: Any) -> ImageData:
    """The dataset ``data.name`` in memory, ``data.limit`` applied (what evaluation and metrics read).

    A :class:`StreamingData` is decoded whole, its random transforms as in epoch 0 of seed 0.
    """
    dataset = _from_plugin(data, plugins)
    return dataset if isinstance(dataset, ImageData) else _materialized(dataset, data)


def _materialized(dataset: StreamingData, data: DataConfig) -> ImageData:
    try:
        return materialize(dataset, data)
    except DataError as exc:
        raise DataError(f"{_where(data)}: {exc}") from exc


def check_loader(dataset: AnyData, data: DataConfig) -> None:
    """A loader choice that cannot work on ``dataset``, as a :class:`ConfigError` on ``data.loader``."""
    if isinstance(dataset, ImageData):
        if data.loader == "ray_data":
            raise ConfigError.one(
                "data.loader", "ray_data", f"dataset {dataset.name!r} is read into memory; use memory or dataloader"
            )
        return
    if data.loader == "memory" and dataset.augment is not None:
        why = "would freeze the random transforms (random_crop, hflip) at epoch 0; use dataloader"
        raise ConfigError.one("data.loader", "memory", why)
    if data.loader == "memory" and dataset.iterable:
        raise ConfigError.one("data.loader", "memory", f"dataset {dataset.name!r} is a stream; use dataloader")
    if data.loader == "ray_data" and dataset.to_ray is None:
        raise ConfigError.one("data.loader", "ray_data", f"dataset {dataset.name!r} cannot be read by Ray Data")


def materialize(dataset: StreamingData, data: DataConfig) -> ImageData:
    """Decode every item of a map-style ``dataset`` into one uint8 tensor (bad files as ``data.on_bad_file``)."""
    from torch.utils.data import DataLoader

    c, h, w = dataset.spec.shape
    images = torch.empty((dataset.length, c, h, w), dtype=torch.uint8)
    labels = torch.empty(dataset.length, dtype=torch.int64)
    loader: Any
    if dataset.iterable:
        loader = _StreamBatches(dataset, 256, rank=0, world_size=1, drop_last=False)
    else:
        loader = DataLoader(
            _Items(dataset, seed=0),
            batch_size=256,
            sampler=[(i, 0) for i in range(dataset.length)],
            num_workers=data.loader_workers,
            collate_fn=_collate,
        )
    n = 0
    for x, y, bad in loader:
        _bad_files(bad, data.on_bad_file)
        if x is not None:
            images[n : n + len(x)], labels[n : n + len(x)] = x, y
            n += len(x)
    if n == 0:
        raise DataError(f"every one of the {dataset.length} files was unreadable")
    return ImageData(images[:n], labels[:n], dataset.num_classes, dataset.name)


def split(dataset: AnyData, data: DataConfig) -> tuple[Any, Any]:
    """Deterministic train/validation split from ``data.split_seed`` and ``data.val_fraction``.

    A stream is split by position: its first ``round(n · val_fraction)`` items are held out.
    """
    n = len(dataset)
    n_val = round(n * data.val_fraction)
    if data.val_fraction > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise ConfigError.one("data.val_fraction", data.val_fraction, f"leaves no training images out of {n}")
    if isinstance(dataset, StreamingData) and dataset.iterable:
        fields = dataset.__dict__
        return (
            StreamingData(**{**fields, "length": n - n_val, "start": dataset.start + n_val}),
            StreamingData(**{**fields, "length": n_val}),
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(data.split_seed))
    return dataset.subset(perm[n_val:]), dataset.subset(perm[:n_val])


def make_loader(
    dataset: AnyData,
    data: DataConfig,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    shards: Any = None,
) -> MemoryLoader | DataLoaderAdapter | RayShardLoader:
    """The loader ``data.loader`` asks for (:func:`choose_loader`).

    :param shards: ``shards(name)``: this worker's shard of the launcher's Ray Dataset
        ``"train"`` (:meth:`engine.WorkerEnv.dataset_shard`), for ``ray_data``.

    On ``ray_data`` only training streams through Ray Data. Validation takes this
    rank's share of the held-out items through a ``DataLoader``: one Ray Data
    execution per validation costs seconds of start-up for a pass that is small and
    unshuffled, and a shard dealt by timing would make ``val/`` figures differ
    from run to run.
    """
    kind = choose_loader(dataset, data)
    if kind == "ray_data" and train and isinstance(dataset, StreamingData):
        shard = shards("train") if shards is not None else None
        if shard is None:
            raise ConfigError.one("data.loader", "ray_data", "needs Ray Train workers (scaling.num_workers >= 1)")
        return RayShardLoader(
            shard,
            dataset,
            batch_size,
            shuffle=train,
            seed=seed,
            world_size=world_size,
            drop_last=True,
            device=device,
        )
    if kind != "memory" or isinstance(dataset, StreamingData):
        return DataLoaderAdapter(
            dataset,
            batch_size,
            shuffle=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=train,
            device=device,
            num_workers=data.loader_workers,
            prefetch_factor=data.prefetch_factor,
            on_bad_file=data.on_bad_file,
            # Training iterates every epoch; validation's workers are started when it runs.
            persistent_workers=train,
        )
    return MemoryLoader(
        dataset, batch_size, shuffle=train, seed=seed, rank=rank, world_size=world_size, drop_last=train, device=device
    )
