"""Write the procedural ``shapes`` dataset as a folder of PNG files, for the streaming path.

::

    python -m plugins.datasets.make_folder OUT --n 20000 --size 64

writes ``OUT/<square|ellipse|heart>/<number>.png``: RGB images of side ``size``,
each shape in a colour of its own on a dark background of its own, all from
``--seed``. ``gentrain fit model.name=gan data.name=image_folder data.root=OUT``
then trains on it like on any folder of images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

#: Images rendered at a time (memory stays flat for any ``n``).
CHUNK = 2000


def write_folder(out: str | Path, n: int, size: int = 64, seed: int = 0) -> list[Path]:
    """Write ``n`` RGB PNGs of side ``size`` under ``out/<class>/``; returns their paths in order."""
    from PIL import Image

    from plugins.datasets.io import SHAPE_CLASSES, make_shapes

    root = Path(out)
    for name in SHAPE_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        shapes, labels, _ = make_shapes(count, size, seed * 1_000_003 + start)
        rng = np.random.default_rng([seed, start])
        fg = rng.integers(96, 256, size=(count, 3, 1, 1))
        bg = rng.integers(0, 64, size=(count, 3, 1, 1))
        alpha = shapes.to(torch.float32).numpy() / 255.0  # count×1×H×W coverage
        rgb = np.rint(bg + (fg - bg) * alpha).astype(np.uint8).transpose(0, 2, 3, 1)
        for i in range(count):
            path = root / SHAPE_CLASSES[int(labels[i])] / f"{start + i:07d}.png"
            Image.fromarray(rgb[i], "RGB").save(path, compress_level=1)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m plugins.datasets.make_folder", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write (class subfolders are created)")
    p.add_argument("--n", type=int, default=10_000, help="number of images")
    p.add_argument("--size", type=int, default=64, help="side in pixels (at least 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 1 or args.size < 8:
        p.error("--n must be at least 1 and --size at least 8")
    write_folder(args.out, args.n, args.size, args.seed)
    print(f"wrote {args.n} {args.size}×{args.size} RGB PNGs under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
