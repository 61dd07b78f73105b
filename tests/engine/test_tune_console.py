"""``gentrain tune`` as a user sees it: a short table of its own, and one checkpoint and TensorBoard tree per trial."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray


def test_tune_of_two_trials_prints_a_short_table_and_keeps_one_tree_per_trial(tmp_path: Path) -> None:
    config = {
        "model": {"name": "vae", "hidden": [16], "latent_dim": 4},
        "data": {"name": "shapes", "n": 256, "size": 8, "val_fraction": 0.25},
        "trainer": {"epochs": 2, "batch_size": 32, "seed": 0},
        "scaling": {"num_workers": 1, "max_failures": 0, "start_timeout_s": 300},
        "run": {"name": "exp", "output_dir": str(tmp_path / "out")},
        "callbacks": {"sample_every": 1, "num_samples": 4},
        "tune": {"metric": "val/elbo", "mode": "min", "num_samples": 1, "scheduler": "none"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"optim.lr": {"grid_search": [1e-3, 2e-3]}}))
    env = {k: v for k, v in os.environ.items() if k not in ("GENTRAIN_PLUGINS", "GENTRAIN_DISABLE_PLUGIN_AUTOLOAD")}
    env.update(RAY_ADDRESS="local", GENTRAIN_DISABLE_PLUGINS="plots")  # a Ray of its own
    command = [sys.executable, "-m", "engine.cli", "tune", "config.yaml", "--space", "space.yaml"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=560)
    out = done.stdout + done.stderr
    print(out)
    assert done.returncode == 0, out[-3000:]
    lines = out.splitlines()
    assert len(lines) < 30, out
    assert lines[0].startswith("[gentrain] tune exp: metric val/elbo (min)")
    assert sum(" started " in line for line in lines) == 2
    assert sum(" done " in line and "epoch 2/2" in line for line in lines) == 2
    assert not [line for line in lines if "pid=" in line or "Trial status" in line or "╭" in line]
    assert "best.yaml" in out

    experiment = tmp_path / "out" / "exp"
    runs = sorted(p for p in (experiment / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2
    # Ray Tune's and Ray Train's own files are under .ray/ folders; gentrain's at the top.
    assert {p.name for p in experiment.iterdir()} == {
        ".ray",
        "runs",
        "gentrain-tune.json",
        "trials.csv",
        "trials.png",
        "best.yaml",
    }

    def outside_ray(path: Path) -> bool:
        return ".ray" not in path.relative_to(experiment).parts

    checkpoint_trees = sorted(
        p for p in experiment.rglob("*") if p.is_dir() and p.name.startswith("checkpoint") and outside_ray(p)
    )
    assert checkpoint_trees == [run / "checkpoints" for run in runs]
    event_trees = sorted({p.parent for p in experiment.rglob("events.out.tfevents.*")})
    assert event_trees == [run / "tensorboard" for run in runs]  # also none of Tune's own under .ray/


def test_tune_table_rows(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from engine.ray.console import tune_table

    table = tune_table("val/loss", "min", 4)
    a = SimpleNamespace(trial_id="a_00000", config={"optim.lr": 0.001}, last_result={})
    b = SimpleNamespace(trial_id="a_00001", config={"optim.lr": 0.01}, last_result={})
    table.on_trial_start(0, [], a)
    table.on_trial_result(0, [], a, {"epoch": 1, "val/loss": 0.5})
    table.on_trial_result(0, [], b, {"epoch": 1, "val/loss": 0.7})
    b.last_result = {"epoch": 2, "val/loss": 0.6}
    table.on_trial_complete(0, [], b)  # stopped early by the scheduler
    table.on_trial_result(0, [], a, {"epoch": 4, "val/loss": 0.25})  # its last epoch: shown as "done"
    a.last_result = {"epoch": 4, "val/loss": 0.25}
    table.on_trial_complete(0, [], a)
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 5
    assert "a_00000      started" in rows[0]
    assert rows[0].endswith("optim.lr=0.001")
    assert "running  epoch 1/4  val/loss=0.5" in rows[1]
    assert "best=0.5 " in rows[2]  # the best of all trials so far
    assert "a_00001      stopped  epoch 2/4  val/loss=0.6" in rows[3]
    assert "a_00000      done     epoch 4/4  val/loss=0.25" in rows[4]
    assert "best=0.25" in rows[4]


def test_tune_table_redraws_one_row_per_trial_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from engine.ray.console import tune_table

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    table = tune_table("val/loss", "min", 2)
    a = SimpleNamespace(trial_id="a_00000", config={"optim.lr": 0.001}, last_result={})
    b = SimpleNamespace(trial_id="a_00001", config={"optim.lr": 0.01}, last_result={})
    table.on_trial_start(0, [], a)
    table.on_trial_start(0, [], b)
    table.on_trial_result(0, [], a, {"epoch": 1, "val/loss": 0.5})
    out = capsys.readouterr().out
    assert out.count("\x1b[1F") == 1  # up over a's row to add b's
    assert out.count("\x1b[2F") == 1  # up over both rows to update a's
    last = out.rsplit("\x1b[2F", 1)[1].split("\n")
    assert "a_00000      running  epoch 1/2  val/loss=0.5" in last[0]
    assert "a_00001      started" in last[1]
