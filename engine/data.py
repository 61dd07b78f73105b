"""Datasets and loaders.

A dataset plugin registers ``factory(config, data) -> ImageData`` under a
name (``data.name``). Small datasets live in memory as uint8 tensors and are
batched by :class:`MemoryLoader`: a shuffled index tensor sliced per batch, no
per-sample Python, sharded across ranks exactly like ``DistributedSampler``
(rank ``r`` of ``w`` takes positions ``r, r+w, ...`` of each epoch's
permutation), so ``w`` workers with batch ``B`` see the same samples per step
as one worker with batch ``w·B``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.config import DataConfig
from engine.errors import ConfigError, DataError
from engine.model import Batch, DataSpec


@dataclass
class ImageData:
    """A whole dataset in memory: uint8 (or float in [0, 1]) images ``N×C×H×W`` and int64 labels."""

    images: Tensor
    labels: Tensor
    num_classes: int | None
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"dataset {self.name!r}: images must be N×C×H×W, got shape {tuple(self.images.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"dataset {self.name!r}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def spec(self) -> DataSpec:
        c, h, w = self.images.shape[1:]
        return DataSpec(shape=(int(c), int(h), int(w)), num_classes=self.num_classes, name=self.name)

    def subset(self, index: Tensor) -> ImageData:
        return ImageData(self.images[index], self.labels[index], self.num_classes, self.name)


def to_float(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float input is returned as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def load_data(data: DataConfig, plugins: Any) -> ImageData:
    """Build the dataset ``data.name`` through its registered factory, then apply ``data.limit``."""
    entry = plugins.datasets.get(data.name)
    try:
        dataset: ImageData = entry.obj(data.params, data)
    except DataError as exc:
        # The reader knows the file; the user needs the config fields that led to it.
        where = f"data.name = {data.name!r}" + (f", data.root = {data.root!r}" if data.root else "")
        raise DataError(f"{where}: {exc}") from exc
    if data.limit is not None:
        dataset = dataset.subset(torch.arange(min(data.limit, len(dataset))))
    return dataset


def split(dataset: ImageData, data: DataConfig) -> tuple[ImageData, ImageData]:
    """Deterministic train/validation split from ``data.split_seed`` and ``data.val_fraction``."""
    n = len(dataset)
    n_val = round(n * data.val_fraction)
    if data.val_fraction > 0 and n_val == 0:
        n_val = 1
    if n - n_val < 1:
        raise ConfigError.one("data.val_fraction", data.val_fraction, f"leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(data.split_seed))
    return dataset.subset(perm[n_val:]), dataset.subset(perm[:n_val])


#: An in-memory dataset up to this size (bytes, as stored) is moved to the GPU whole.
DEVICE_RESIDENT_BYTES = 1 << 30


class MemoryLoader:
    """Batches of an in-memory dataset for one rank.

    :param shuffle: reshuffle every epoch from ``(seed, epoch)``; no RNG state is
        consumed, so resuming at any epoch reproduces the order.
    :param drop_last: drop the last partial batch (training); validation keeps it.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        device: torch.device | None = None,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.device = device or torch.device("cpu")
        self.epoch = 0
        if self.device.type == "cuda":
            if data.images.numel() * data.images.element_size() <= DEVICE_RESIDENT_BYTES:
                # Small enough to live on the GPU (as uint8): batches are gathered there, no copy per batch.
                images, labels = data.images.to(self.device), data.labels.to(self.device)
            else:
                # Pinned host memory for the per-batch copies.
                images, labels = data.images.pin_memory(), data.labels.pin_memory()
            self.data = ImageData(images, labels, data.num_classes, data.name)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.data)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.drop_last:
            order = order[: n - n % self.world_size]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = len(self.data) // self.world_size if self.drop_last else -(-len(self.data) // self.world_size)
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def iter_from(self, start: int = 0) -> Iterator[Batch]:
        """Yield batches of this epoch, beginning with batch number ``start``."""
        idx = self._indices().to(self.data.images.device)
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            if len(sel) == 0:
                return
            # uint8 across the bus (a quarter of float32), converted where it lands; on the CPU both are no-ops.
            x = to_float(self.data.images[sel].to(self.device, non_blocking=True))
            y = self.data.labels[sel].to(self.device, non_blocking=True)
            yield x, y

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


class DataLoaderAdapter:
    """The same interface over ``torch.utils.data.DataLoader`` + ``DistributedSampler``.

    Used with ``data.loader=dataloader`` (worker processes for decoding); the
    sampler's shuffle also depends only on ``(seed, epoch)``.
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        device: torch.device | None = None,
        num_workers: int = 0,
    ) -> None:
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        self.device = device or torch.device("cpu")
        dataset = TensorDataset(data.images, data.labels)
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def iter_from(self, start: int = 0) -> Iterator[Batch]:
        for b, (x, y) in enumerate(self.loader):
            if b < start:
                continue
            yield to_float(x).to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


def make_loader(
    dataset: ImageData,
    data: DataConfig,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
) -> MemoryLoader | DataLoaderAdapter:
    """The loader ``data.loader`` asks for (``auto`` = in memory)."""
    if data.loader == "dataloader":
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
        )
    return MemoryLoader(
        dataset, batch_size, shuffle=train, seed=seed, rank=rank, world_size=world_size, drop_last=train, device=device
    )
