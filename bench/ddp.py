"""What gentrain's Ray path costs per epoch, next to plain ``torchrun`` DDP. Not a test.

Three ways to train the same MLP autoencoder on the same procedural shapes,
with the same global batch, each in a fresh process::

    in-process   gentrain fit, scaling.num_workers=0, 1 process × 2 threads, batch 2B
    torchrun     a raw PyTorch DDP script (below), 2 processes × 1 thread, batch B each
    ray          gentrain fit, scaling.num_workers=2, 2 Ray workers × 1 thread, batch B each

Per-epoch time is the median over epochs after the first (epoch start to the
next epoch start on rank 0, so it includes the per-epoch metric reduction, the
checkpoint rank 0 writes, and for Ray the report barrier). Total wall time is
the whole subprocess; start-up overhead = total - the sum of the epoch times.
Rounds are interleaved with the order rotated (A B C, B C A, C A B, ...) so
load from elsewhere on the machine spreads over all three; medians over rounds
are printed at the end.

Run::

    .venv/bin/python bench/ddp.py                 # 3 rounds, n=8000, 32×32, batch 128, 4 epochs
    .venv/bin/python bench/ddp.py --rounds 5 --epochs 5

This file is also the gentrain plugin the two gentrain runs load (model
``bench_ae`` and an epoch timer), and the torchrun worker script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import engine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMES = "bench_times.json"

# ---------------------------------------------------------------------------
# the model (shared by all three) and the gentrain plugin
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchAEConfig(engine.ModelConfig):
    hidden: engine.PositiveInt = 400
    latent: engine.PositiveInt = 20


class BenchAE(engine.Model):
    """784-400-20-style MLP autoencoder with a Bernoulli decoder (mean BCE)."""

    def __init__(self, config: BenchAEConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        self.enc = nn.Sequential(
            nn.Flatten(), nn.Linear(data.numel, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.latent)
        )
        self.dec = nn.Sequential(
            nn.Linear(config.latent, config.hidden), nn.ReLU(), nn.Linear(config.hidden, data.numel)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(self.enc(x))

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        return {"loss": F.binary_cross_entropy_with_logits(self(x), x.flatten(1))}


@engine.hookimpl
def gentrain_register_models(registry: engine.Registry[Any]) -> None:
    registry.add("bench_ae", BenchAE, BenchAEConfig)


_epoch_starts: list[float] = []
_last_steps: list[float] = []  # per epoch: when its last optimizer step ended


@engine.hookimpl
def gentrain_on_train_epoch_start() -> None:
    _epoch_starts.append(time.perf_counter())
    _last_steps.append(_epoch_starts[-1])


@engine.hookimpl
def gentrain_on_train_batch_end() -> None:
    _last_steps[-1] = time.perf_counter()


@engine.hookimpl
def gentrain_on_fit_end(trainer: Any) -> None:
    if trainer.is_rank_zero:
        marks = [*_epoch_starts, time.perf_counter()]
        epochs = [b - a for a, b in itertools.pairwise(marks)]
        steps = [end - start for start, end in zip(_epoch_starts, _last_steps, strict=True)]
        (Path(trainer.run_dir) / TIMES).write_text(json.dumps({"epochs": epochs, "steps": steps}))


# ---------------------------------------------------------------------------
# the raw torchrun DDP worker
# ---------------------------------------------------------------------------


def torchrun_worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from plugins.datasets.io import make_shapes

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    images, _, _ = make_shapes(args.n, args.size, args.seed)
    c, h, w = (int(d) for d in images.shape[1:])
    model = BenchAE(BenchAEConfig(), engine.DataSpec((c, h, w)))
    if args.split_ddp:
        # One DDP module per sub-network, as gentrain wraps them.
        enc, dec = nn.parallel.DistributedDataParallel(model.enc), nn.parallel.DistributedDataParallel(model.dec)

        def ddp(x: Tensor) -> Tensor:
            return dec(enc(x))

    else:
        ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = Path(args.out)
    marks, steps = [], []
    for epoch in range(args.epochs):
        marks.append(time.perf_counter())
        perm = torch.randperm(args.n, generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch))
        mine = perm[: args.n - args.n % world][rank::world]
        total = torch.zeros(2, dtype=torch.float64)
        for b in range(len(mine) // args.batch):
            x = images[mine[b * args.batch : (b + 1) * args.batch]].float().div_(255)
            loss = F.binary_cross_entropy_with_logits(ddp(x), x.flatten(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        steps.append(time.perf_counter() - marks[-1])
        dist.all_reduce(total)  # the epoch's mean loss, as gentrain reports it
        if rank == 0:  # a checkpoint every epoch, written atomically, as gentrain does
            tmp = out / "ckpt.tmp"
            with tmp.open("wb") as f:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1}, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(out / "ckpt.pt")
        dist.barrier()
    marks.append(time.perf_counter())
    if rank == 0:
        epochs = [b - a for a, b in itertools.pairwise(marks)]
        (out / TIMES).write_text(json.dumps({"epochs": epochs, "steps": steps}))
    dist.destroy_process_group()


def engine_torchrun_worker(args: argparse.Namespace) -> None:
    """gentrain's own loop (``engine.loop.train``) in a torchrun process: the engine without Ray."""
    import torch.distributed as dist

    from engine import loop
    from engine.plugins import load_plugins

    class TorchrunEnv(loop.WorkerEnv):
        def wrap_ddp(self, module: nn.Module) -> nn.Module:
            return nn.parallel.DistributedDataParallel(module)

    dist.init_process_group("gloo")
    env = TorchrunEnv(rank=dist.get_rank(), world_size=dist.get_world_size())
    plugins = load_plugins()
    run_config, _ = engine.prepare(gentrain_config(args, Path(args.out), "engine-torchrun"), plugins=plugins)
    loop.train(run_config.to_dict(), env, plugins)
    dist.destroy_process_group()


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------

MODES = {
    "in-process": "gentrain fit, 1 process × 2 threads, batch 2B",
    "torchrun": "torchrun DDP, 2 procs × 1 thread, batch B each",
    "engine-torchrun": "gentrain's loop under torchrun (no Ray), 2 procs × 1 thread, batch B each",
    "ray": "gentrain fit on Ray, 2 workers × 1 thread, batch B each",
}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["GENTRAIN_PLUGINS"] = "ddp"  # this file, as a plugin
    env["GENTRAIN_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    # Per-epoch outputs a raw script would not write either.
    env["GENTRAIN_DISABLE_PLUGINS"] = "plots,tensorboard,sample_grids,csv_logger"
    env["RAY_ADDRESS"] = "local"  # a private local Ray, never another cluster on this machine
    env["OMP_NUM_THREADS"] = "1"  # each mode sets its own thread count
    # OpenMP threads spin while they wait by default; on a machine whose cores
    # are shared (other jobs), 2 spinning threads were measured 10-20x slower
    # per step than with passive waiting. Single-thread processes are unaffected.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def gentrain_config(args: argparse.Namespace, out: Path, mode: str) -> dict[str, Any]:
    ray = mode in ("ray", "engine-torchrun")
    return {
        "model": {"name": "bench_ae"},
        "data": {"name": "shapes", "n": args.n, "size": args.size, "seed": args.seed, "val_fraction": 0.0},
        "trainer": {
            "epochs": args.epochs,
            "batch_size": args.batch if ray else 2 * args.batch,
            "num_threads": 1 if ray else 2,
            "seed": args.seed,
            "checkpoint_every": 1,
            "keep_checkpoints": 1,
        },
        "scaling": {"num_workers": 2 if ray else 0, "max_failures": 0},
        "run": {"name": mode, "output_dir": str(out), "resume": "never"},
        "callbacks": {"progress": False, "csv": False, "tensorboard": False, "sample_every": 0},
    }


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    env = child_env()
    with tempfile.TemporaryDirectory(prefix=f"bench-ddp-{mode}-") as tmp:
        out = Path(tmp)
        if mode in ("torchrun", "engine-torchrun"):
            # Settings travel in the environment: torchrun's own parser would claim --n.
            env["BENCH_DDP"] = json.dumps({**vars(args), "out": str(out)})
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(Path(__file__).resolve()), f"--{mode}-worker",
            ]  # fmt: skip
            times = out / TIMES if mode == "torchrun" else out / mode / TIMES
        else:
            config = out / "config.yaml"
            config.write_text(yaml.safe_dump(gentrain_config(args, out, mode)))
            cmd = [sys.executable, "-m", "engine.cli", "fit", str(config)]
            times = out / mode / TIMES
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, check=False)
        total = time.perf_counter() - t0
        if proc.returncode != 0 or not times.exists():
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"bench: {mode} failed (exit {proc.returncode})")
        timed = json.loads(times.read_text())
    epochs, steps = timed["epochs"], timed["steps"]
    steady = slice(1, None) if len(epochs) > 1 else slice(None)
    return {
        "total": total,
        "epochs": epochs,
        "per_epoch": statistics.median(epochs[steady]),
        # Epoch = its optimizer steps + its boundary (metric reduction, checkpoint, report).
        "steps": statistics.median(steps[steady]),
        "boundary": statistics.median(e - st for e, st in zip(epochs[steady], steps[steady], strict=True)),
        "overhead": total - sum(epochs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=128, help="per-worker batch B")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--split-ddp",
        action="store_true",
        help="torchrun: one DDP module per sub-network, as gentrain wraps them (default: one for the model)",
    )
    p.add_argument("--torchrun-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine-torchrun-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    args = p.parse_args(argv)
    if args.torchrun_worker or args.engine_torchrun_worker:
        worker = torchrun_worker if args.torchrun_worker else engine_torchrun_worker
        worker(argparse.Namespace(**json.loads(os.environ["BENCH_DDP"])))
        return 0

    print(
        f"bench/ddp.py: MLP AE (hidden 400, latent 20) on shapes n={args.n} {args.size}×{args.size}, "
        f"global batch {2 * args.batch}, {args.epochs} epochs, {args.rounds} rounds, "
        f"torchrun DDP {'per sub-network' if args.split_ddp else 'over the whole model'}; "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, OMP_WAIT_POLICY={child_env()['OMP_WAIT_POLICY']}",
        flush=True,
    )
    names = [m for m in MODES if m in args.modes.split(",")]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for mode in order:
            res = run_mode(mode, args)
            results[mode].append(res)
            epochs = " ".join(f"{e:.2f}" for e in res["epochs"])
            print(
                f"  round {r + 1} {mode:<10} per-epoch {res['per_epoch']:.3f}s (steps {res['steps']:.3f}s + "
                f"boundary {1000 * res['boundary']:.0f}ms)  total {res['total']:.1f}s  "
                f"start-up {res['overhead']:.1f}s  (epochs: {epochs})",
                flush=True,
            )

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    print(f"\nmedians over {args.rounds} rounds")
    print(f"  {'mode':<11} {'per-epoch':>10} {'steps':>7} {'boundary':>9} {'total wall':>11} {'start-up':>9}   what")
    for mode in names:
        print(
            f"  {mode:<11} {med(mode, 'per_epoch'):>9.3f}s {med(mode, 'steps'):>6.3f}s "
            f"{1000 * med(mode, 'boundary'):>7.0f}ms {med(mode, 'total'):>10.1f}s "
            f"{med(mode, 'overhead'):>8.1f}s   {MODES[mode]}"
        )

    def ratio(a: str, b: str, key: str = "per_epoch") -> str:
        """Median of the per-round ratios (each round ran both, close in time), and their range."""
        if a not in results or b not in results:
            return "n/a"
        rs = [x[key] / y[key] for x, y in zip(results[a], results[b], strict=True)]
        return f"{statistics.median(rs):.3f} (rounds {min(rs):.3f}-{max(rs):.3f})"

    print()
    if "ray" in results and "torchrun" in results:
        rs = [x["per_epoch"] / y["per_epoch"] for x, y in zip(results["ray"], results["torchrun"], strict=True)]
        main_ratio = statistics.median(rs)
        print(
            f"  ray / torchrun per-epoch:   {main_ratio:.3f}  (median of per-round ratios, rounds "
            f"{min(rs):.3f}-{max(rs):.3f}; target <= 1.05: {'met' if main_ratio <= 1.05 else 'NOT met'})"
        )
    print(f"  ray / torchrun steps only:  {ratio('ray', 'torchrun', 'steps')}")
    print(f"  engine-torchrun / torchrun per-epoch: {ratio('engine-torchrun', 'torchrun')}  (the engine's loop)")
    print(f"  ray / engine-torchrun per-epoch:      {ratio('ray', 'engine-torchrun')}  (Ray around the same loop)")
    print(f"  ray / in-process per-epoch: {ratio('ray', 'in-process')}")
    for mode in names:
        print(f"  epoch boundary {mode}: {1000 * med(mode, 'boundary'):.0f}ms")
    if "ray" in results:
        print(
            f"  fixed start-up of the Ray path: {med('ray', 'overhead'):.1f}s "
            + ", ".join(f"({m} {med(m, 'overhead'):.1f}s)" for m in names if m != "ray")
            + ": Python + torch imports, ray.init, the worker group and process group; paid once per fit"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
