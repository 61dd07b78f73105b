"""The engine's two data paths on MNIST: ``data.loader=memory`` vs ``data.loader=dataloader``.

1. **Loader alone**: samples/s of one epoch of the engine's training loader
   (``engine.data.make_loader`` on the engine's own split), batches only.
2. **Training**: samples/s of the MLP VAE trained by ``engine.fit`` in-process
   with each loader (timed epochs after the first, as in ``bench/overhead.py``).
3. **Python per batch**: Python-level function calls per batch (``sys.setprofile``
   ``call`` and ``c_call`` events) at two batch sizes. Equal counts at batch 32
   and 512 mean no per-sample Python in the hot path; the ``DataLoader`` path
   (a ``TensorDataset`` read sample by sample, then collated) grows with the batch.

Variants are interleaved, the order rotated every round; medians over rounds.

4. **A folder of PNGs** (``--part folder``): images/s delivered to the model (float
   batches out of ``iter_from``) for ``data.loader=memory`` (decoded once, timed
   per epoch after that), ``dataloader`` with 0, 1 and 2 worker processes, and
   ``ray_data`` (a local Ray cluster decodes, the shard iterator delivers), each
   against a hand-written ``DataLoader`` + ImageFolder-style reference with the
   same transforms (resize, centre crop, random crop, flip) and the same number of
   workers. The folder is written by ``plugins.datasets.make_folder``
   (``--n`` images, ``--size``). Wall and CPU time (this process and every process
   under it: loader workers, Ray's workers) are reported as ratios of medians.

Usage::

    python bench/data_path.py [--reps 5] [--epochs 3] [--part mnist|folder|all]
    python bench/data_path.py --part folder --n 4000 --reps 5      # the folder part alone
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data_folder  # noqa: E402
import overhead  # noqa: E402
import torch  # noqa: E402

from engine.config import resolve  # noqa: E402
from engine.data import load_data, make_loader, split  # noqa: E402
from engine.plugins import load_plugins  # noqa: E402

LOADERS = ("memory", "dataloader")


def engine_loader(name: str, args: argparse.Namespace, batch: int) -> Any:
    """The training loader ``engine.loop.train`` builds for ``data.loader=name``."""
    pm = load_plugins(autoload=False)
    cfg = resolve(overhead.run_config("vae", args, 1, "unused", "unused", loader=name), pm)
    train_set, _ = split(load_data(cfg.data, pm), cfg.data)
    return make_loader(
        train_set, cfg.data, batch, train=True, seed=args.seed, rank=0, world_size=1, device=torch.device(args.device)
    )


def loader_epoch_s(loader: Any) -> float:
    loader.set_epoch(0)
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader.iter_from(0):
        n += x.shape[0]
    return (time.perf_counter() - t0) / n


def python_calls_per_batch(loader: Any, batches: int = 10) -> float:
    count = 0

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    it = loader.iter_from(0)
    next(it)  # start-up (the permutation, iterator set-up) is not per batch
    sys.setprofile(prof)
    try:
        for _ in range(batches):
            next(it)
    finally:
        sys.setprofile(None)
    return count / batches


def rounds(args: argparse.Namespace, variants: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            gc.collect()
            out[n].append(variants[n]())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    overhead.add_common_args(p)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="epochs per training run, the first excluded")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--part", choices=["mnist", "folder", "all"], default="all")
    data_folder.add_args(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"threads": args.threads}
    if args.part in ("folder", "all"):
        print(f"# bench/data_path.py --part folder: {args.n} PNGs, batch {args.batch}, threads {args.threads}")
        result["folder"] = data_folder.run(args)
    if args.part == "folder":
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    _, note = overhead.data_section(args.limit)
    print(f"# bench/data_path.py: {note}, batch {args.batch}, threads {args.threads}")
    result["data"] = note

    loaders = {n: engine_loader(n, args, args.batch) for n in LOADERS}
    alone = rounds(args, {n: (lambda n=n: loader_epoch_s(loaders[n])) for n in LOADERS})
    result["loader_samples_per_s"] = {n: 1 / statistics.median(v) for n, v in alone.items()}

    s = overhead.make_setup("vae", args)
    runs: dict[str, list[overhead.Run]] = {n: [] for n in LOADERS}

    def train(n: str) -> float:
        runs[n].append(overhead.train_engine(s, args, args.epochs, loader=n))
        return 0.0

    rounds(args, {n: (lambda n=n: train(n)) for n in LOADERS})
    # Wall time, and CPU time of the training thread (0 loader workers: all data work is on it).
    result["train_samples_per_s"] = {
        n: args.batch / statistics.median([r.step_s(args.warmup) for r in rs]) for n, rs in runs.items()
    }
    result["train_cpu_samples_per_s"] = {
        n: args.batch / statistics.median([r.step_cpu_s(args.warmup) for r in rs]) for n, rs in runs.items()
    }

    calls: dict[str, dict[int, float]] = {}
    for n in LOADERS:
        calls[n] = {b: python_calls_per_batch(engine_loader(n, args, b)) for b in (32, 512)}
    result["python_calls_per_batch"] = calls

    print(
        f"  {'loader':<11} {'loader alone':>14} {'VAE train, wall':>16} {'thread-CPU':>14}"
        f" {'py calls/batch @32':>19} {'@512':>7}"
    )
    for n in LOADERS:
        print(
            f"  {n:<11} {result['loader_samples_per_s'][n]:>10.0f} s/s {result['train_samples_per_s'][n]:>12.0f} s/s"
            f" {result['train_cpu_samples_per_s'][n]:>10.0f} s/s {calls[n][32]:>19.0f} {calls[n][512]:>7.0f}"
        )
    speed = result["loader_samples_per_s"]["memory"] / result["loader_samples_per_s"]["dataloader"]
    result["memory_over_dataloader_loader"] = speed
    for key in ("train", "train_cpu"):
        sps = result[f"{key}_samples_per_s"]
        result[f"memory_over_dataloader_{key}"] = sps["memory"] / sps["dataloader"]
    print(
        f"  memory / dataloader: loader alone x{speed:.1f}, training x{result['memory_over_dataloader_train']:.2f}"
        f" (wall), x{result['memory_over_dataloader_train_cpu']:.2f} (thread-CPU)"
    )
    per_sample = calls["memory"][512] > calls["memory"][32]
    result["memory_per_sample_python"] = per_sample
    print(
        f"  per-sample Python in the memory path: {'YES' if per_sample else 'none'} (calls/batch independent of batch)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
