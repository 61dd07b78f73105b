"""Write the procedural ``shapes`` dataset as a folder of PNG files, for the streaming path.

::

    python -m plugins.datasets.make_folder OUT --n 20000 --size 64 --processes 2

writes ``OUT/<square|ellipse|heart>/<number>.png``: RGB images of side ``size``,
each shape in a colour of its own on a dark background of its own, all from
``--seed``. ``gentrain fit model.name=gan data.name=image_folder data.root=OUT``
then trains on it like on any folder of images.

The images are rendered (vectorised) and written in chunks of :data:`CHUNK`, each
from ``(seed, its first index)`` only, so the files are the same bytes whatever
``processes`` is; chunks are shared among that many processes. Torch runs one
thread per process while rendering: on a loaded machine its default of one
spinning OpenMP thread per core made 20,000 images take minutes instead of
seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

#: Images rendered at a time (memory stays flat for any ``n``); a chunk is one unit of work.
CHUNK = 2000


def _write_chunk(root: str, start: int, count: int, size: int, seed: int) -> list[str]:
    """Render and write images ``start .. start+count`` (the same bytes in any process)."""
    from PIL import Image

    from plugins.datasets.io import SHAPE_CLASSES, make_shapes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shapes, labels, _ = make_shapes(count, size, seed * 1_000_003 + start)
    finally:
        torch.set_num_threads(threads)
    rng = np.random.default_rng([seed, start])
    fg = rng.integers(96, 256, size=(count, 3, 1, 1))
    bg = rng.integers(0, 64, size=(count, 3, 1, 1))
    alpha = shapes.to(torch.float32).numpy() / 255.0  # count×1×H×W coverage
    rgb = np.rint(bg + (fg - bg) * alpha).astype(np.uint8).transpose(0, 2, 3, 1)
    paths = []
    for i in range(count):
        path = os.path.join(root, SHAPE_CLASSES[int(labels[i])], f"{start + i:07d}.png")
        Image.fromarray(rgb[i], "RGB").save(path, compress_level=1)
        paths.append(path)
    return paths


def _write_chunk_args(args: tuple[str, int, int, int, int]) -> list[str]:
    return _write_chunk(*args)


def write_folder(out: str | Path, n: int, size: int = 64, seed: int = 0, processes: int = 1) -> list[Path]:
    """Write ``n`` RGB PNGs of side ``size`` under ``out/<class>/``; returns their paths in order.

    :param processes: chunks of :data:`CHUNK` images are rendered and written by this many
        processes (``forkserver``, so a parent with torch threads running is safe to use);
        the files do not depend on it.
    """
    from plugins.datasets.io import SHAPE_CLASSES

    root = Path(out)
    for name in SHAPE_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), start, min(CHUNK, n - start), size, seed) for start in range(0, n, CHUNK)]
    if processes <= 1 or len(jobs) == 1:
        chunks = [_write_chunk_args(job) for job in jobs]
    else:
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        with context.Pool(min(processes, len(jobs))) as pool:
            chunks = pool.map(_write_chunk_args, jobs, chunksize=1)
    return [Path(p) for chunk in chunks for p in chunk]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m plugins.datasets.make_folder", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write (class subfolders are created)")
    p.add_argument("--n", type=int, default=10_000, help="number of images")
    p.add_argument("--size", type=int, default=64, help="side in pixels (at least 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, default=1, help="processes rendering and writing (the files do not change)")
    args = p.parse_args(argv)
    if args.n < 1 or args.size < 8 or args.processes < 1:
        p.error("--n must be at least 1, --size at least 8 and --processes at least 1")
    write_folder(args.out, args.n, args.size, args.seed, args.processes)
    print(f"wrote {args.n} {args.size}×{args.size} RGB PNGs under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
