"""The folder part of ``bench/data_path.py``: images/s each data path delivers from a folder of PNGs.

Every variant yields what the loop hands the model: float32 ``N×C×H×W`` batches in [0, 1].
Variants run interleaved (order rotated each round); figures are medians over rounds, and
each engine path is compared with the reference that has the same number of workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import resolve
from engine.data import RayShardLoader, load_dataset, make_loader, split
from engine.plugins import load_plugins

#: The transforms every variant applies (the reference by hand).
TRANSFORMS = {"size": 64, "random_crop": 56, "hflip": True}

TWO_CORES = """\
  What a 2-core machine can show: whether a path adds per-image Python or copies over the
  reference doing the same work (ratios near 1 at 0 workers), what decoding costs per image
  (CPU-time columns), and that workers take decoding off the training process. What it cannot
  show: scaling with workers (2 loader workers and the consumer share 2 cores, so more workers
  add processes, not throughput), nor where Ray Data pays off (many nodes decoding for the
  training workers, expensive decoding such as large JPEGs): on one node it adds Ray's
  start-up, object-store copies and scheduling to the same 2 cores."""


def cpu_seconds_of_tree(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` and every process below it (from /proc)."""
    root = pid or os.getpid()
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, stack = 0.0, [root]
    children: dict[int, list[int]] = {}
    for p, pp in parent.items():
        children.setdefault(pp, []).append(p)
    while stack:
        p = stack.pop()
        total += times.get(p, 0.0)
        stack += children.get(p, [])
    return total


# ---------------------------------------------------------------------------
# the reference: a hand-written ImageFolder + DataLoader
# ---------------------------------------------------------------------------


class ReferenceFolder(torch.utils.data.Dataset[Any]):
    """What one writes without the engine: class folders, PIL, the same transforms, torch RNG."""

    def __init__(self, root: Path, size: int, crop: int) -> None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.items = [(str(p), c) for c, name in enumerate(classes) for p in sorted((root / name).glob("*.png"))]
        self.size, self.crop = size, crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as opened:
            im: Image.Image = opened.convert("RGB")
            w, h = im.size
            scale = self.size / min(w, h)
            if scale != 1:
                im = im.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
            w, h = im.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            x = torch.from_numpy(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy())
        top, left = (random.randint(0, self.size - self.crop) for _ in range(2))
        x = x[:, top : top + self.crop, left : left + self.crop]
        if random.random() < 0.5:
            x = x.flip(-1)
        return x.contiguous(), label


def reference_loader(root: Path, batch: int, workers: int) -> Callable[[], Iterator[torch.Tensor]]:
    dataset = ReferenceFolder(root, TRANSFORMS["size"], TRANSFORMS["random_crop"])
    extra: dict[str, Any] = dict(persistent_workers=True, prefetch_factor=2) if workers else {}
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, **extra
    )

    def epoch() -> Iterator[torch.Tensor]:
        for x, _ in loader:
            yield x.float().div_(255.0)

    return epoch


# ---------------------------------------------------------------------------
# the engine's paths
# ---------------------------------------------------------------------------


def engine_loader(root: Path, batch: int, loader: str, workers: int) -> Callable[[], Iterator[torch.Tensor]]:
    pm = load_plugins(autoload=False)
    transforms = {} if loader == "memory" else TRANSFORMS
    if loader == "memory":
        transforms = {"size": TRANSFORMS["size"], "center_crop": TRANSFORMS["random_crop"]}
    raw = {
        "model": {"name": "gan"},
        "data": {
            "name": "image_folder",
            "root": str(root),
            "val_fraction": 0,
            "loader": loader,
            "loader_workers": workers,
            **transforms,
        },
    }
    data = resolve(raw, pm).data
    train, _ = split(load_dataset(data, pm), data)
    if loader == "ray_data":
        shard = train.ray_dataset().iterator()
        made: Any = RayShardLoader(
            shard, train, batch, shuffle=True, seed=0, world_size=1, drop_last=True, device=torch.device("cpu")
        )
    else:
        made = make_loader(train, data, batch, train=True, seed=0, rank=0, world_size=1, device=torch.device("cpu"))
    epochs = iter(range(1_000_000))

    def epoch() -> Iterator[torch.Tensor]:
        made.set_epoch(next(epochs))
        for x, _ in made.iter_from(0):
            yield x

    return epoch


#: Each measurement runs whole epochs for at least this long (CPU time is counted in 10 ms ticks).
MIN_SECONDS = 1.0


def timed(epoch: Callable[[], Iterator[torch.Tensor]]) -> tuple[float, float]:
    """``(images/s wall, images/s of CPU time)`` over whole epochs lasting at least :data:`MIN_SECONDS`."""
    cpu0, t0, n = cpu_seconds_of_tree(), time.perf_counter(), 0
    while n == 0 or time.perf_counter() - t0 < MIN_SECONDS:
        for x in epoch():
            n += x.shape[0]
    wall, cpu = time.perf_counter() - t0, cpu_seconds_of_tree() - cpu0
    return n / wall, n / max(cpu, 0.01)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from plugins.datasets.make_folder import write_folder

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="gentrain-bench-folder-")
    root = Path(args.root) if args.root else Path(tmp.name)
    if not args.root:
        t0 = time.perf_counter()
        write_folder(root, args.n, args.size)
        print(f"  wrote {args.n} {args.size}×{args.size} RGB PNGs in {time.perf_counter() - t0:.1f} s")
    workers = [int(w) for w in args.workers.split(",")]
    variants: dict[str, Callable[[], Iterator[torch.Tensor]]] = {}
    pairs: dict[str, str] = {}
    t0 = time.perf_counter()
    variants["memory"] = engine_loader(root, args.batch, "memory", 0)
    decode_s = time.perf_counter() - t0
    pairs["memory"] = "reference-0"
    for w in workers:
        variants[f"dataloader-{w}"] = engine_loader(root, args.batch, "dataloader", w)
        variants[f"reference-{w}"] = reference_loader(root, args.batch, w)
        pairs[f"dataloader-{w}"] = f"reference-{w}"
    ray_started = False
    if args.ray:
        import ray

        if not ray.is_initialized():
            ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False, logging_level=logging.ERROR)
            ray_started = True
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        variants["ray_data"] = engine_loader(root, args.batch, "ray_data", 0)
        pairs["ray_data"] = f"reference-{max(workers)}"
    for epoch in variants.values():  # warm-up: worker start-up, Ray's pipeline, page cache
        timed(epoch)
    wall: dict[str, list[float]] = {n: [] for n in variants}
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    names = list(variants)
    for r in range(args.reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            w_, c_ = timed(variants[n])
            wall[n].append(w_)
            cpu[n].append(c_)
    if ray_started:
        import ray

        ray.shutdown()
    med = {n: statistics.median(v) for n, v in wall.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpu.items()}
    print(f"  {'path':<14} {'images/s':>9} {'per CPU-s':>10}   {'vs':<12} {'wall ×':>7} {'CPU ×':>7}")
    for n in names:
        ref = pairs.get(n)
        ratio = f"{med[n] / med[ref]:>7.2f} {med_cpu[n] / med_cpu[ref]:>7.2f}" if ref else ""
        print(f"  {n:<14} {med[n]:>9.0f} {med_cpu[n]:>10.0f}   {ref or '':<12} {ratio}")
    print(f"  memory: decoded once in {decode_s:.1f} s before training (centre crop only: no per-epoch randomness)")
    print(TWO_CORES)
    return {
        "images": args.n,
        "images_per_s": med,
        "images_per_cpu_s": med_cpu,
        "vs_reference_wall": {n: med[n] / med[r] for n, r in pairs.items()},
        "vs_reference_cpu": {n: med_cpu[n] / med_cpu[r] for n, r in pairs.items()},
        "memory_decode_s": decode_s,
    }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=4000, help="folder part: images to write")
    p.add_argument("--size", type=int, default=64, help="folder part: side of the images")
    p.add_argument("--root", default=None, help="folder part: an existing folder instead of writing one")
    p.add_argument("--workers", default="0,1,2", help="folder part: DataLoader worker counts")
    p.add_argument("--no-ray", dest="ray", action="store_false", help="folder part: skip Ray Data")
    p.add_argument("--ray-cpus", type=int, default=2, help="folder part: CPUs of the local Ray cluster")
