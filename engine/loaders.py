"""The batch sources of every data path, below :mod:`engine.data` (which chooses among them).

:class:`ImageData` (a dataset in memory) and :class:`MemoryLoader`; :class:`StreamingData`
(a ``torch.utils.data.Dataset`` read item by item) and :class:`DataLoaderAdapter`;
:class:`RayShardLoader` for a Ray Train worker's shard of a Ray Dataset. The map-style
paths take the positions of :func:`epoch_order`, so they see the same batches.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, Sampler, default_collate

from engine.errors import ConfigError, DataError
from engine.model import Batch, DataSpec

_log = logging.getLogger("gentrain")


#: ``augment(image, index, epoch, seed) -> image``: a per-item random transform of a uint8 ``C×H×W`` image.
Augment = Callable[[Tensor, int, int, int], Tensor]


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


@dataclass
class StreamingData:
    """A dataset read item by item: what a dataset plugin returns for data that need not fit in memory.

    :param dataset: map-style (``dataset[i] -> (uint8 C×H×W image, int label)``) or an
        ``IterableDataset`` yielding the same pairs. It is pickled into each
        ``DataLoader`` worker: hold file names (a numpy array of bytes), not images.
    :param spec: what the model needs, known without reading every item (shape *after* ``augment``).
    :param length: number of items (of a stream too: the loop needs its epoch length).
    :param augment: per-item random transform from ``(seed, epoch, index)`` (random crop, flip),
        applied by the engine after ``dataset[i]``; ``None`` for none. Data with one is never
        decoded into memory once for all epochs (``data.loader=auto``).
    :param to_ray: ``to_ray(indices) -> ray.data.Dataset`` with columns ``image`` (uint8
        ``N×C×H×W``, before ``augment``), ``label`` and ``index``: what ``data.loader=ray_data``
        hands to the trainer. ``None``: the dataset cannot run on Ray Data.
    :param indices: the positions of ``dataset`` this (sub)set holds; ``None`` for all of them.
    """

    dataset: Dataset[Any]
    spec: DataSpec
    length: int
    augment: Augment | None = None
    to_ray: Callable[[list[int]], Any] | None = None
    indices: Tensor | None = None
    name: str = ""
    #: A stream is split by position: this subset is items ``[start, start + length)`` of it.
    start: int = field(default=0)

    def __len__(self) -> int:
        return self.length

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes

    @property
    def iterable(self) -> bool:
        return isinstance(self.dataset, IterableDataset)

    @functools.cached_property
    def _index_list(self) -> list[int] | None:
        # Indexing a tensor costs ~10 µs an item, as much as a random crop: look positions up in a list.
        return self.indices.tolist() if self.indices is not None else None

    def base_index(self, i: int) -> int:
        positions = self._index_list
        return positions[i] if positions is not None else i

    def positions(self) -> list[int]:
        return self.indices.tolist() if self.indices is not None else list(range(self.length))

    def subset(self, index: Tensor) -> StreamingData:
        if self.iterable:
            raise TypeError("a stream is split by position, not by index")
        base = self.indices[index] if self.indices is not None else index.clone()
        return StreamingData(self.dataset, self.spec, len(base), self.augment, self.to_ray, base, self.name)

    def ray_dataset(self) -> Any:
        if self.to_ray is None:
            raise ConfigError.one("data.loader", "ray_data", f"dataset {self.name!r} cannot be read by Ray Data")
        return self.to_ray(self.positions())


#: Either kind of dataset.
AnyData = ImageData | StreamingData


def to_float(images: Tensor) -> Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float input is returned as float32."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, drop_last: bool) -> Tensor:
    """The positions rank ``rank`` takes in ``epoch``: a permutation from ``(seed, epoch)`` only, dealt round-robin."""
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    else:
        order = torch.arange(n)
    if drop_last:
        order = order[: n - n % world_size]
    return order[rank::world_size]


def batches_per_rank(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    per_rank = n // world_size if drop_last else -(-n // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


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
        return epoch_order(
            len(self.data),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
        )

    def __len__(self) -> int:
        return batches_per_rank(len(self.data), self.batch_size, self.world_size, self.drop_last)

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


# ---------------------------------------------------------------------------
# the DataLoader path
# ---------------------------------------------------------------------------


@dataclass
class _BadItem:
    """An item whose file could not be read (raised as a clean error, or counted, in the main process)."""

    message: str


class _Items(Dataset[Any]):
    """``(position, epoch) -> (uint8 image, label)`` of an in-memory or map-style dataset, ``augment`` applied."""

    def __init__(self, data: AnyData, seed: int) -> None:
        self.data = data
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        i, epoch = key
        data = self.data
        if isinstance(data, ImageData):
            return data.images[i], data.labels[i]
        index = data.base_index(i)
        try:
            x, y = data.dataset[index]
            if data.augment is not None:
                x = data.augment(x, index, epoch, self.seed)
        except DataError as exc:
            return _BadItem(str(exc))
        return x, y


def _collate(items: list[Any]) -> tuple[Tensor | None, Tensor | None, list[str]]:
    """Stack the readable items (in the loader worker); the messages of the others travel alongside."""
    good = [it for it in items if not isinstance(it, _BadItem)]
    bad = [it.message for it in items if isinstance(it, _BadItem)]
    if not good:
        return None, None, bad
    # default_collate stacks into shared memory inside a loader worker: no copy on the way out.
    x, y = default_collate([(g[0], torch.as_tensor(g[1], dtype=torch.int64)) for g in good])
    return x, y, bad


def _bad_files(messages: list[str], policy: str, before: int = 0) -> int:
    """Raise on the first bad file (``fail``) or log each with the running count (``skip``); returns how many."""
    if messages and policy == "fail":
        raise DataError(f"{messages[0]} (data.on_bad_file=skip drops such files and counts them)")
    for k, m in enumerate(messages, before + 1):
        _log.warning("gentrain: skipped a bad file (%d so far): %s", k, m)
    return len(messages)


class PositionSampler(Sampler[tuple[int, int]]):
    """``(position, epoch)`` keys of one rank's epoch from batch ``start`` on (:func:`epoch_order`).

    Iterated in the training process when an epoch's ``DataLoader`` iterator is
    made, so ``epoch`` and ``start`` set just before reach persistent workers too.
    """

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, seed: int, rank: int, world_size: int, drop_last: bool
    ) -> None:
        self.n, self.batch_size = n, batch_size
        self.kw = dict(shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)
        self.epoch = 0
        self.start = 0

    def _order(self) -> Tensor:
        return epoch_order(self.n, epoch=self.epoch, **self.kw)[self.start * self.batch_size :]  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((i, epoch) for i in self._order().tolist())

    def __len__(self) -> int:
        return len(self._order())


class _StreamBatches(IterableDataset[Any]):
    """Whole batches of one rank's share of a stream, dealt to ``DataLoader`` workers.

    Items ``start .. start+length`` of the stream belong to this split; item ``k``
    of the split goes to rank ``k % world_size``; the rank's batch ``j ≥ first``
    is built by loader worker ``(j - first) % workers``, the order in which the
    ``DataLoader`` asks its workers, so batches arrive in order. A stream that
    has ``set_epoch`` is told the epoch (in each worker).
    """

    def __init__(self, data: StreamingData, batch_size: int, rank: int, world_size: int, drop_last: bool) -> None:
        self.data, self.batch_size, self.rank, self.world_size, self.drop_last = (
            data,
            batch_size,
            rank,
            world_size,
            drop_last,
        )
        self.epoch = 0
        self.first = 0
        self.seed = 0

    def __iter__(self) -> Iterator[Any]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        d = self.data
        if hasattr(d.dataset, "set_epoch"):
            d.dataset.set_epoch(self.epoch)
        n = d.length - d.length % self.world_size if self.drop_last else d.length
        items: list[Any] = []
        stream: Any = d.dataset
        for p, (x, y) in enumerate(stream):
            k = p - d.start
            if k >= n:
                break
            if k < 0 or k % self.world_size != self.rank:
                continue
            j = (k // self.world_size) // self.batch_size
            if j < self.first or (j - self.first) % workers != wid:
                continue
            if d.augment is not None:
                x = d.augment(x, p, self.epoch, self.seed)
            items.append((x, y))
            if len(items) == self.batch_size:
                yield _collate(items)
                items = []
        if items and not self.drop_last:
            yield _collate(items)


class DataLoaderAdapter:
    """Batches of an in-memory or streaming dataset through ``torch.utils.data.DataLoader``.

    Used with ``data.loader=dataloader`` (``data.loader_workers`` processes decode
    items). A map-style dataset takes the positions of :func:`epoch_order`, the same
    as :class:`MemoryLoader`, through a :class:`PositionSampler` that starts at the
    resumed batch (skipped batches are never read). Workers persist across epochs
    (``persistent_workers`` for training), batches are pinned on a GPU and copied
    without blocking. An unreadable file raises a :class:`DataError` naming it, or
    is dropped and counted in :attr:`skipped` (``on_bad_file=skip``).
    """

    def __init__(
        self,
        data: AnyData,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        device: torch.device | None = None,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        on_bad_file: str = "fail",
        persistent_workers: bool = True,
    ) -> None:
        from torch.utils.data import DataLoader

        self.device = device or torch.device("cpu")
        self.on_bad_file = on_bad_file
        self.skipped = 0
        self.batches = batches_per_rank(len(data), batch_size, world_size, drop_last)
        worker_args: dict[str, Any] = {}
        if num_workers > 0:
            worker_args = dict(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers)
        self.stream: _StreamBatches | None = None
        self.sampler: PositionSampler | None = None
        if isinstance(data, StreamingData) and data.iterable:
            # The stream object is copied into workers when an epoch starts: they cannot persist.
            self.stream = _StreamBatches(data, batch_size, rank, world_size, drop_last)
            self.stream.seed = seed
            worker_args.pop("persistent_workers", None)
            self.loader: Any = DataLoader(
                self.stream,
                batch_size=None,
                num_workers=num_workers,
                pin_memory=self.device.type == "cuda",
                **worker_args,
            )
        else:
            self.sampler = PositionSampler(
                len(data), batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
            )
            self.loader = DataLoader(
                _Items(data, seed),
                batch_size=batch_size,
                sampler=self.sampler,
                drop_last=drop_last,
                num_workers=num_workers,
                collate_fn=_collate,
                pin_memory=self.device.type == "cuda",
                **worker_args,
            )

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.epoch = epoch
        if self.stream is not None:
            self.stream.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def iter_from(self, start: int = 0) -> Iterator[Batch]:
        """Yield this epoch's batches from batch number ``start`` (the earlier ones are not read)."""
        if self.sampler is not None:
            self.sampler.start = start
        if self.stream is not None:
            self.stream.first = start
        b = start
        for x, y, bad in self.loader:
            self.skipped += _bad_files(bad, self.on_bad_file, self.skipped)
            if x is None:
                raise DataError(f"every file of a batch was unreadable ({len(bad)} skipped); first: {bad[0]}")
            b += 1
            yield to_float(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
        if self.stream is not None and b < self.batches:
            d = self.stream.data
            why = f"ended after {b} of the {self.batches} batches its length {d.length} makes"
            raise DataError(f"stream {d.name!r} {why}")

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)


# ---------------------------------------------------------------------------
# the Ray Data path
# ---------------------------------------------------------------------------


class RayShardLoader:
    """Batches of this Ray Train worker's shard of a Ray Dataset (``data.loader=ray_data``).

    ``shard`` is what ``ray.train.get_dataset_shard(name)`` returns; its rows
    (``image`` uint8 ``C×H×W``, ``label``, ``index``) were decoded on the
    cluster's CPUs. Rows are shuffled per epoch in a local buffer seeded from
    ``(seed, epoch)``; ``augment`` (random crop, flip) runs here, from
    ``(seed, epoch, index)``, as Ray's pipeline does not know the epoch.

    Resume is exact in counts, not in rows. Ray Train splits the dataset with
    ``streaming_split``, which deals blocks to whichever worker asks next (so a
    slow worker gets fewer, not late, blocks): which rows a shard holds in an
    epoch depends on timing, and differs from run to run. The rows trained
    before an interruption are not recorded either, so a resumed epoch skips
    ``start`` batches of *its* shard. Guaranteed (``tests/engine/test_streaming.py``):
    steps continue from the checkpoint's; the resumed epoch has its full number
    of batches, each from the training set; every later epoch sees each image
    exactly once across the workers (``equal`` shards, nothing twice). Not
    guaranteed: in the epoch of the interruption some images may be trained
    twice and as many not at all, and batches differ from an uninterrupted run.
    Where bit-for-bit resume matters, use ``data.loader=dataloader``.
    """

    def __init__(
        self,
        shard: Any,
        data: StreamingData,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        world_size: int,
        drop_last: bool,
        device: torch.device | None = None,
    ) -> None:
        self.shard, self.data, self.batch_size = shard, data, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.device = device or torch.device("cpu")
        self.batches = batches_per_rank(len(data), batch_size, world_size, drop_last)
        self.epoch = 0
        #: Indices of the dataset this worker was handed in the last epoch (tests check shards are disjoint).
        self.seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def iter_from(self, start: int = 0) -> Iterator[Batch]:
        shuffle: dict[str, Any] = {}
        if self.shuffle:
            shuffle = dict(
                local_shuffle_buffer_size=4 * self.batch_size, local_shuffle_seed=self.seed * 100_003 + self.epoch
            )
        batches = self.shard.iter_torch_batches(batch_size=self.batch_size, drop_last=self.drop_last, **shuffle)
        self.seen = []
        b = -1
        for b, batch in enumerate(batches):
            if b >= self.batches:
                break
            index = batch["index"]
            self.seen.extend(index.tolist())
            if b < start:
                continue
            x = batch["image"]
            if self.data.augment is not None:
                augment = self.data.augment
                x = torch.stack([augment(x[i], int(k), self.epoch, self.seed) for i, k in enumerate(index)])
            yield to_float(x.to(self.device, non_blocking=True)), batch["label"].to(self.device, non_blocking=True)
        if b + 1 < self.batches:
            raise DataError(f"this worker's Ray Data shard ended after {b + 1} of its {self.batches} batches")

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)
