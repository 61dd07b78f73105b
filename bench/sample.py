"""Images/s of ``gentrain sample`` against a plain ``model.sample`` loop, and its end-to-end time.

In one process, interleaved rounds of (medians reported):

* ``raw``: ``with torch.no_grad(): model.sample(batch)`` in a loop, on a model built
  and loaded by hand: the floor of sampling;
* ``LoadedRun.sample``: ``engine.load(run).sample(n, seed=...)`` (the seeded, batched path),
  against ``raw``;
* ``raw job``: the whole job by hand, as a user without ``gentrain sample`` writes it:
  read the checkpoint, build the model, the ``raw`` loop, ``np.savez`` of the images
  (float32) and labels;
* ``gentrain sample``: ``engine.cli.main(["sample", RUN, ...])`` in-process: the same job
  (load, sample, one ``.npz``), against ``raw job``; its two fixed costs,
  ``engine.load`` and writing the file, are timed alone below it.

The images/s ratio (the target: ``gentrain sample`` at least 0.95 of the hand-written
job) is the raw side's median time over the engine side's, so above 1 is faster.

Wall time and process CPU time are both reported (CPU/wall > threads means
the machine was busy elsewhere; a CPU-time ratio near the wall ratio means the
difference is work, not waiting). Then the end-to-end time of a fresh
``gentrain sample RUN --n 10000`` process, start-up included, next to the
time of ``python -c "import torch"`` plus the raw loop for the same images.

    python bench/sample.py                 # trains a small GAN on shapes first (a few seconds)
    python bench/sample.py --run runs/x    # an existing run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engine
from engine import checkpoint
from engine.cli import main as cli_main
from engine.export import write_images
from engine.plugins import current


def train_small(out: Path, model: str) -> Path:
    config = {
        "model": {"name": model, "latent_dim": 64, "hidden": 256},
        "data": {"name": "shapes", "n": 512, "size": 32},
        "trainer": {"epochs": 1, "batch_size": 64, "num_threads": 1},
        "run": {"output_dir": str(out), "name": f"bench-{model}"},
        "callbacks": {"progress": False, "tensorboard": False, "csv": False, "sample_every": 0},
    }
    return engine.fit(config).run_dir


def raw_model(run_dir: Path) -> Any:
    """The model built and loaded by hand, as a user without ``engine.load`` would."""
    state = checkpoint.load(checkpoint.latest(run_dir / "checkpoints"))  # type: ignore[arg-type]
    pm = current()
    config = engine.resolve(state["config"], pm)
    spec = engine.DataSpec(tuple(state["data_spec"]["shape"]), state["data_spec"]["num_classes"], "")
    model = pm.models.get(config.model.name).obj(config.model.params, spec)
    model.load_state_dict(state["model"])
    return model.eval()


def timed(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a run directory (default: train a small GAN on shapes first)")
    parser.add_argument("--model", default="gan", help="model to train when --run is not given (default gan)")
    parser.add_argument("--n", type=int, default=10_000, help="images per round (default 10000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--e2e-n", type=int, default=10_000, help="images of the end-to-end run (default 10000)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sample-"))
    run_dir = Path(args.run) if args.run else train_small(tmp, args.model)
    torch.set_num_threads(args.threads)  # training set its own
    model = raw_model(run_dir)
    loaded = engine.load(run_dir)
    n, b = args.n, args.batch_size
    conditional = loaded.conditional
    k = loaded.data_spec.num_classes or 1

    def raw() -> None:
        torch.manual_seed(0)
        images = []
        with torch.no_grad():
            for start in range(0, n, b):
                m = min(b, n - start)
                labels = torch.arange(start, start + m) % k if conditional else None
                images.append(model.sample(m, labels=labels))
        torch.cat(images)

    def api() -> None:
        loaded.sample(n, seed=0, batch_size=b)

    by_hand = tmp / "raw.npz"

    def raw_job() -> None:
        hand = raw_model(run_dir)
        torch.manual_seed(0)
        images, labels = [], []
        with torch.no_grad():
            for start in range(0, n, b):
                m = min(b, n - start)
                y = torch.arange(start, start + m) % k if conditional else None
                images.append(hand.sample(m, labels=y))
                labels.append(y if y is not None else torch.full((m,), -1))
        np.savez(by_hand, images=torch.cat(images).float().numpy(), labels=torch.cat(labels).numpy())

    out = tmp / "s.npz"

    def cli() -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # its one line per call
            code = cli_main(
                [
                    "sample",
                    str(run_dir),
                    "--n",
                    str(n),
                    "--batch-size",
                    str(b),
                    "--seed",
                    "0",
                    "--out",
                    str(out),
                    "--overwrite",
                ]
            )
        assert code == 0

    def load_only() -> None:
        engine.load(run_dir)

    def write_only() -> None:
        write_images(tmp / "w.npz", sample, kind="npz")

    sample = loaded.sample(n, seed=0, batch_size=b)
    cli()  # warm-up: first-call costs (allocator, lazy imports) out of the rounds
    raw()
    api()
    raw_job()
    paths = {"raw": raw, "LoadedRun.sample": api, "raw job": raw_job, "gentrain sample": cli}
    paths["  engine.load"] = load_only
    paths["  write .npz"] = write_only
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            results[name].append(timed(fn))

    print(
        f"{loaded.config.model.name} on {loaded.data_spec.name or 'data'} {loaded.data_spec.shape}, "
        f"{n} images per round, batch {b}, torch threads {args.threads}, {args.rounds} interleaved rounds "
        f"(medians); cores {os.cpu_count()}"
    )
    against = {"LoadedRun.sample": "raw", "gentrain sample": "raw job"}
    print(f"{'path':<18} {'images/s':>10} {'wall s':>8} {'cpu s':>8}   images/s ratio against (wall, cpu; >= 0.95 met)")
    for name, rows in results.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        rate = f"{'—':>10}" if name.startswith(" ") else f"{n / wall:>10.0f}"  # the parts: no images/s
        line = f"{name:<18} {rate} {wall:>8.3f} {cpu:>8.3f}"
        if name in against:
            base = against[name]
            r_wall = statistics.median(w for w, _ in results[base]) / wall
            r_cpu = statistics.median(c for _, c in results[base]) / cpu
            verdict = "met" if r_wall >= 0.95 else "not met"
            line += f"   {base}: {r_wall:.3f}, {r_cpu:.3f} ({verdict})"
        print(line)

    # End to end: a fresh process, start-up included.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    gentrain = str(Path(sys.executable).parent / "gentrain")
    e2e_out = tmp / "e2e.npz"
    cmd = [
        gentrain,
        "sample",
        str(run_dir),
        "--n",
        str(args.e2e_n),
        "--batch-size",
        str(b),
        "--seed",
        "0",
        "--out",
        str(e2e_out),
        "--overwrite",
    ]
    e2e = []
    torch_import = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"gentrain sample failed:\n{proc.stderr}")
        e2e.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, env=env)
        torch_import.append(time.perf_counter() - t0)
    n_save = n
    n = args.e2e_n
    raw_e2e = statistics.median(timed(raw)[0] for _ in range(3))
    n = n_save
    e2e_s, torch_s = statistics.median(e2e), statistics.median(torch_import)
    floor = torch_s + raw_e2e
    print(
        f"end to end: gentrain sample --n {args.e2e_n}: {e2e_s:.2f} s (median of 3); "
        f"python -c 'import torch' {torch_s:.2f} s + raw loop {raw_e2e:.2f} s = {floor:.2f} s; "
        f"ratio {e2e_s / floor:.2f}"
    )


if __name__ == "__main__":
    main()
