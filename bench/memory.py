"""Peak resident memory of a VAE run: the engine in-process vs the hand-written loop (and Lightning).

Each variant runs in its own fresh Python process (``--child``) and reports its
``ru_maxrss`` (the peak resident set of that process, KiB on Linux) after
training; the parent runs the variants interleaved, the order rotated each
round, and prints medians over rounds. Target: engine ≤ 1.2 × raw.

What each child holds:

- ``baseline``: ``import torch`` plus the MNIST images read by hand (a floor, for reference);
- ``raw``: the loop of ``bench/overhead.py``; to build the identical net it goes
  through the model registry, so it imports the engine package and loads the
  model and loss plugins (not the callback plugins);
- ``engine``: ``engine.fit`` in-process with every built-in plugin loaded,
  callbacks switched off by config, writing its final checkpoint;
- ``lightning``: ``lightning.Trainer.fit`` as in ``bench/overhead.py``.

Usage::

    python bench/memory.py [--reps 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = ("baseline", "raw", "engine", "lightning")


def baseline_child(argv: list[str]) -> None:
    """``import torch`` and the raw images only: nothing of the engine (or of bench/overhead.py) is imported."""
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=9000)
    p.add_argument("--threads", type=int, default=1)
    args, _ = p.parse_known_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    path = Path("/work/shared/data/mnist/t10k-images-idx3-ubyte.gz")
    if path.exists():
        raw = gzip.decompress(path.read_bytes())
        images = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).view(-1, 1, 28, 28)
        images[: args.limit].float()
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": "baseline", "maxrss_kib": kib}))


def child(variant: str, args: argparse.Namespace) -> None:
    import overhead
    import torch

    torch.set_num_threads(args.threads)
    s = overhead.make_setup("vae", args)
    train = {"raw": overhead.train_raw, "engine": overhead.train_engine, "lightning": overhead.train_lightning}
    train[variant](s, args, args.epochs)
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": variant, "maxrss_kib": kib, "data": s.data_note}))


def measure(variant: str, args: argparse.Namespace) -> tuple[int, str]:
    """Peak RSS (KiB) of one fresh child running ``variant``, and the child's description of the data."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
    cmd += ["--epochs", str(args.epochs), "--threads", str(args.threads), "--limit", str(args.limit)]
    cmd += ["--batch", str(args.batch), "--device", args.device, "--precision", args.precision, "--arch", args.arch]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} child failed:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return int(report["maxrss_kib"]), report.get("data", "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--child", "baseline"]:  # before anything imports the engine
        baseline_child(argv[2:])
        return 0
    if argv[:1] == ["--child"]:
        sys.path.insert(0, str(HERE))
        import overhead

        p = argparse.ArgumentParser()
        overhead.add_common_args(p)
        p.add_argument("--child", choices=VARIANTS)
        p.add_argument("--epochs", type=int, default=2)
        args = p.parse_args(argv)
        child(args.child, args)
        return 0

    # The parent stays small (no torch, no engine): on Linux a child's ru_maxrss starts
    # from the high-water mark of the process it was forked from.
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=9000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--arch", choices=["mlp", "conv"], default="mlp")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    variants = [v for v in VARIANTS if v != "lightning" or importlib.util.find_spec("lightning") is not None]
    print(f"# bench/memory.py: VAE ({args.arch}), {args.epochs} epochs, batch {args.batch}, threads {args.threads}")
    print(f"  each variant in a fresh subprocess of a parent that imports no torch, {args.reps} rounds; ru_maxrss")
    if "lightning" not in variants:
        print("  lightning: skipped: lightning not installed")
    rss: dict[str, list[int]] = {v: [] for v in variants}
    note = ""
    t0 = time.perf_counter()
    for r in range(args.reps):
        k = r % len(variants)
        order = variants[k:] + variants[:k]
        for v in order:
            kib, data = measure(v, args)
            rss[v].append(kib)
            note = data or note
        print(f"    round {r + 1}/{args.reps}: " + "  ".join(f"{v}={rss[v][-1] / 1024:.0f}MiB" for v in variants))
    med = {v: statistics.median(xs) / 1024 for v, xs in rss.items()}
    print(f"  data: {note}")
    print(f"  {'variant':<10} {'peak RSS MiB':>13} {'over baseline':>14}")
    for v in variants:
        print(f"  {v:<10} {med[v]:>13.1f} {med[v] - med['baseline']:>+14.1f}")
    ratio = med["engine"] / med["raw"]
    print(f"  ratio engine/raw peak RSS = {ratio:.3f}  (target <= 1.2)   [{time.perf_counter() - t0:.0f}s]")
    result: dict[str, Any] = {"median_mib": med, "rounds_kib": rss, "ratio_engine_raw": ratio, "data": note}
    result["lightning_skipped"] = "lightning" not in variants
    result["epochs"] = args.epochs
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
