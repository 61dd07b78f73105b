"""Time to the first optimizer step: ``gentrain fit`` on one Ray worker vs a minimal TorchTrainer script. Not a test.

Both sides start as a fresh ``python`` process with a private local Ray
(``RAY_ADDRESS=local``) and train the same MLP autoencoder (784-400-20 style,
on 32×32 ``shapes``) on one Ray Train worker with one thread:

    gentrain      ``python -m engine.cli fit config.yaml`` with ``scaling.num_workers=1``
    torchtrainer  the script below: ``ray.init()``, a ``TorchTrainer`` whose train
                  function builds the data and model, ``prepare_model``, and steps Adam

The clock starts just before the process is launched (wall time, passed in
the environment) and stops on the worker right after its first
``optimizer.step()``. Both then train the one epoch to the end and exit; the
total wall time is printed too. Rounds alternate which side goes first;
medians over rounds and the ratio are printed at the end. Target (issue:
performance): gentrain / torchtrainer <= 1.10.

    .venv/bin/python bench/first_step.py              # 5 rounds
    .venv/bin/python bench/first_step.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import engine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARK = "first_step.json"
N, SIZE, BATCH = 2048, 32, 128


# ---------------------------------------------------------------------------
# gentrain side: this module is also the plugin that stops the clock
# ---------------------------------------------------------------------------


@engine.hookimpl
def gentrain_on_train_batch_end(trainer: Any, step: int) -> None:
    if step == 0 and trainer.is_rank_zero:
        _mark(Path(trainer.run_dir).parent)


def _mark(out: Path) -> None:
    took = time.time() - float(os.environ["BENCH_T0"])
    (out / MARK).write_text(json.dumps({"first_step": took}))


# ---------------------------------------------------------------------------
# the minimal hand-written TorchTrainer script (run as `first_step.py --torchtrainer OUT`)
# ---------------------------------------------------------------------------


def torchtrainer_main(out: str) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_func(config: dict[str, Any]) -> None:
        import torch
        import torch.nn.functional as F
        from torch import nn

        from plugins.datasets.io import make_shapes

        torch.set_num_threads(1)
        torch.manual_seed(0)
        images, _, _ = make_shapes(N, SIZE, 0)
        d = images[0].numel()
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(d, 400), nn.ReLU(), nn.Linear(400, 20), nn.Linear(20, 400), nn.ReLU(),
            nn.Linear(400, d),
        )  # fmt: skip
        model = ray.train.torch.prepare_model(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        perm = torch.randperm(N)
        for b in range(N // BATCH):
            x = images[perm[b * BATCH : (b + 1) * BATCH]].float().div_(255)
            loss = F.binary_cross_entropy_with_logits(model(x), x.flatten(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if b == 0:
                _mark(Path(config["out"]))
        ray.train.report({"loss": float(loss)})

    ray.init()
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"out": out},
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name="minimal", storage_path=out),
    )
    trainer.fit()


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["RAY_ADDRESS"] = "local"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["OMP_NUM_THREADS"] = "1"
    return env


def gentrain_config(out: Path) -> dict[str, Any]:
    return {
        "model": {"name": "ae", "arch": "mlp", "hidden": [400], "latent_dim": 20},
        "data": {"name": "shapes", "n": N, "size": SIZE, "seed": 0, "val_fraction": 0.0},
        "trainer": {"epochs": 1, "batch_size": BATCH, "num_threads": 1, "checkpoint_every": 1},
        "scaling": {"num_workers": 1, "max_failures": 0},
        "run": {"name": "first-step", "output_dir": str(out), "resume": "never"},
        "callbacks": {"progress": False, "csv": False, "tensorboard": False, "sample_every": 0},
    }


def run_side(side: str) -> dict[str, float]:
    import yaml

    env = child_env()
    with tempfile.TemporaryDirectory(prefix=f"bench-first-step-{side}-") as tmp:
        out = Path(tmp)
        if side == "gentrain":
            env["GENTRAIN_PLUGINS"] = "first_step"
            env["GENTRAIN_DISABLE_PLUGIN_AUTOLOAD"] = "1"
            config = out / "config.yaml"
            config.write_text(yaml.safe_dump(gentrain_config(out)))
            cmd = [sys.executable, "-m", "engine.cli", "fit", str(config)]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--torchtrainer", str(out)]
        env["BENCH_T0"] = repr(time.time())
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, check=False)
        total = time.perf_counter() - t0
        mark = out / MARK
        if proc.returncode != 0 or not mark.exists():
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"bench: {side} failed (exit {proc.returncode})")
        return {"first_step": json.loads(mark.read_text())["first_step"], "total": total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torchtrainer", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torchtrainer:
        torchtrainer_main(args.torchtrainer)
        return 0
    import ray
    import torch

    print(
        f"bench/first_step.py: MLP AE on shapes n={N} {SIZE}×{SIZE}, batch {BATCH}, 1 Ray worker × 1 thread, "
        f"{args.rounds} rounds; torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs",
        flush=True,
    )
    sides = ["gentrain", "torchtrainer"]
    results: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
    for r in range(args.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            res = run_side(side)
            results[side].append(res)
            print(
                f"  round {r + 1} {side:<12} first step {res['first_step']:6.2f}s  total {res['total']:6.2f}s",
                flush=True,
            )

    def med(side: str, key: str) -> float:
        return statistics.median(x[key] for x in results[side])

    ratios = [
        g["first_step"] / t["first_step"] for g, t in zip(results["gentrain"], results["torchtrainer"], strict=True)
    ]
    ratio = statistics.median(ratios)
    print(f"\nmedians over {args.rounds} rounds")
    for side in sides:
        print(f"  {side:<12} first step {med(side, 'first_step'):6.2f}s  total {med(side, 'total'):6.2f}s")
    print(
        f"\n  gentrain / torchtrainer, time to first step: {ratio:.3f} (median of per-round ratios, "
        f"{min(ratios):.3f}-{max(ratios):.3f})  target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'}\n"
        f"  gentrain / torchtrainer, total wall: {med('gentrain', 'total') / med('torchtrainer', 'total'):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
