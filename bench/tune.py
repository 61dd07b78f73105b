"""ASHA against running every trial to the end (FIFO): same trials, same budget. Not a test.

Both searches sample the same trial configs (``tune.seed``) for a VAE on
MNIST (the 10,000-image test set under ``/work/shared/data/mnist``; shapes
if it is missing) and train each trial up to ``--epochs`` epochs, in the
trial's own process (``scaling.num_workers=0``; the point is Tune's
scheduling, not Ray Train). Printed side by side:

* trial-epochs: epochs trained, summed over trials (what a search costs);
* wall time of the whole search (Ray start excluded);
* the best trial's final ``val/elbo`` (nats per image, lower is better).

Target: ASHA spends at least 2× fewer trial-epochs, with a best metric within
2% of FIFO's.

ASHA is asynchronous: the first trial to reach a rung is always promoted
(there is nothing yet to compare it with), so how many epochs it saves
depends on the order in which trials arrive, most with few trials per
concurrent slot. Measured here (2 at a time, same configs): 8 trials gave
2.67× in one run and 1.78× in another (a hopeless first trial was promoted
to the end); 12 trials, the default, gave 2.46×. The best trial was the same
as FIFO's every time.

Run::

    .venv/bin/python bench/tune.py                      # 12 trials × 8 epochs
    .venv/bin/python bench/tune.py --trials 12 --epochs 9 --reduction-factor 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MNIST_ROOT = Path("/work/shared/data/mnist")


def base_config(args: argparse.Namespace, out: Path, name: str, scheduler: str) -> dict[str, Any]:
    if (MNIST_ROOT / "t10k-images-idx3-ubyte.gz").exists():
        data = {"name": "mnist", "root": str(MNIST_ROOT), "split": "test", "val_fraction": 0.1, "split_seed": 0}
    else:
        data = {"name": "shapes", "n": 10_000, "size": 28, "val_fraction": 0.1}
    return {
        "model": {"name": "vae", "arch": "mlp", "hidden": [256], "latent_dim": 16, "recon_loss": "bce"},
        "data": data,
        "optim": {"algo": "adam", "lr": 1e-3},
        "trainer": {"epochs": args.epochs, "batch_size": 128, "seed": 0, "num_threads": 1},
        "scaling": {"num_workers": 0},
        "run": {"name": name, "output_dir": str(out)},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0, "csv": True},
        "tune": {
            "metric": "val/elbo",
            "mode": "min",
            "num_samples": args.trials,
            "scheduler": scheduler,
            "grace_period": 1,
            "reduction_factor": args.reduction_factor,
            "seed": args.seed,
            "max_failures": 0,
        },
    }


def search_space() -> dict[str, Any]:
    from ray import tune

    return {
        "optim.lr": tune.loguniform(1e-4, 1e-2),
        "model.latent_dim": tune.choice([4, 8, 16, 32]),
        "model.beta": tune.uniform(0.5, 2.0),
    }


def run(args: argparse.Namespace, out: Path, scheduler: str) -> dict[str, Any]:
    import engine

    config = base_config(args, out, f"bench-{scheduler}", scheduler)
    started = time.perf_counter()
    result = engine.tune(config, search_space(), verbose=0)
    wall = time.perf_counter() - started
    assert result.best is not None
    return {
        "trial_epochs": sum(t.epochs for t in result.trials),
        "wall": wall,
        "best": result.best.metric,
        "best_params": result.best.params,
        "epochs": sorted((t.epochs for t in result.trials), reverse=True),
        "configs": sorted(tuple(sorted(t.params.items())) for t in result.trials),
        "table": result.table(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster (trials at once)")
    args = p.parse_args(argv)

    import ray

    os.environ.setdefault("GENTRAIN_DISABLE_PLUGINS", "plots,tensorboard,sample_grids")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A Ray of its own, never another one on this machine.
    ray.init(address="local", num_cpus=args.cpus, logging_level="WARNING", include_dashboard=True)
    try:
        with tempfile.TemporaryDirectory(prefix="gentrain-bench-tune-") as tmp:
            results = {s: run(args, Path(tmp), s) for s in ("asha", "none")}
    finally:
        ray.shutdown()
    asha, fifo = results["asha"], results["none"]
    same = asha["configs"] == fifo["configs"]
    print(f"\n{args.trials} trials × up to {args.epochs} epochs, VAE, val/elbo (min), {args.cpus} trials at a time")
    print(f"same trial configs in both searches: {same}\n")
    print(f"{'':24}{'ASHA':>12}{'FIFO':>12}{'ratio':>10}")
    te_ratio = fifo["trial_epochs"] / asha["trial_epochs"]
    print(f"{'trial-epochs':24}{asha['trial_epochs']:>12}{fifo['trial_epochs']:>12}{te_ratio:>9.2f}x")
    print(f"{'wall time (s)':24}{asha['wall']:>12.1f}{fifo['wall']:>12.1f}{fifo['wall'] / asha['wall']:>9.2f}x")
    gap = (asha["best"] - fifo["best"]) / abs(fifo["best"])
    print(f"{'best val/elbo':24}{asha['best']:>12.3f}{fifo['best']:>12.3f}{gap:>+9.2%}")
    print(f"{'epochs per trial':24}  ASHA {asha['epochs']}  FIFO {fifo['epochs']}")
    print(f"best trial, ASHA: {asha['best_params']}")
    print(f"best trial, FIFO: {fifo['best_params']}")
    ok = te_ratio >= 2 and gap <= 0.02
    print(f"\ntarget (≥ 2× fewer trial-epochs, best within 2%): {'met' if ok else 'NOT met'}")
    print("\nASHA trials:\n" + asha["table"] + "\n\nFIFO trials:\n" + fifo["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
