"""Every recipe runs with ``--smoke``, as a user runs it: ``python recipes/<name>.py --smoke``.

The recipes connect to the test session's Ray cluster (``RAY_ADDRESS``), as
they would to a cluster started with ``ray start``; each then runs its
Ray Train workers there and ends by printing where its outputs are.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_ARGS = [f"data.root={MNIST}", "data.split=test", "data.download=false"]

FIT_RECIPES = {
    "quickstart": [],
    "vae_mnist": MNIST_ARGS,
    "ae_mnist": MNIST_ARGS,
    "gan_mnist": MNIST_ARGS,
    "cgan_mnist": MNIST_ARGS,
    "aegan_mnist": MNIST_ARGS,
}


def run_recipe(name: str, args: list[str], tmp_path: Path) -> str:
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / f"{name}.py"), "--smoke", *args, f"run.output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"{name} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.ray
@pytest.mark.parametrize("name", sorted(FIT_RECIPES))
def test_fit_recipe_smoke(name: str, tmp_path: Path, ray_local: Any) -> None:
    args = FIT_RECIPES[name]
    if args is MNIST_ARGS and not MNIST.is_dir():
        pytest.skip(f"MNIST files not found at {MNIST}")
    out = run_recipe(name, args, tmp_path)
    (run_dir,) = [p for p in tmp_path.iterdir() if (p / "config.yaml").is_file()]
    assert f"outputs: {run_dir}" in out
    assert list((run_dir / "checkpoints").glob("step=*.pt"))
    assert (run_dir / "metrics.csv").is_file()
    assert list((run_dir / "samples").glob("*.png"))


@pytest.mark.ray
@pytest.mark.parametrize("name", ["tune_vae", "tune_gan"])
def test_tune_recipe_smoke(name: str, tmp_path: Path, ray_local: Any) -> None:
    out = run_recipe(name, [], tmp_path)
    (best,) = tmp_path.glob("*/best.yaml")
    assert (best.parent / "trials.csv").is_file()
    assert (best.parent / "trials.png").is_file()
    assert str(best.parent) in out
