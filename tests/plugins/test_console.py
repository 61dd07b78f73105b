"""What a user sees on the console of an in-process run: periodic lines, the bar, a finished run's rerun."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import engine


def small(tmp_path: Path, name: str = "run", **sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"name": "vae", "hidden": [16], "latent_dim": 4},
        "data": {"name": "shapes", "n": 96, "size": 8, "val_fraction": 0.25},
        "trainer": {"epochs": 2, "batch_size": 8, "seed": 1},
        "run": {"output_dir": str(tmp_path), "name": name},
        "callbacks": {"tensorboard": False, "csv": False, "sample_every": 0},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def test_periodic_lines_come_before_the_first_epoch_ends(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine.fit(small(tmp_path, callbacks={"progress_every_s": 1e-9}))
    lines = capsys.readouterr().out.splitlines()
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("  epoch 1/2 ") and "s  train/" in line)
    periodic = [i for i, line in enumerate(lines) if " step " in line and "img/s" in line]
    assert periodic, lines
    assert periodic[0] < first_epoch
    line = lines[periodic[0]]
    assert "epoch 1/2 step 1/9 (11%)" in line
    assert "loss=" in line
    assert "eta " in line
    assert lines[-1].startswith("[gentrain] done in ")


def test_no_periodic_lines_with_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine.fit(small(tmp_path, callbacks={"progress_every_s": 0}))
    out = capsys.readouterr().out
    assert "img/s" not in out
    assert "epoch 2/2" in out


def test_a_terminal_gets_a_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    engine.fit(small(tmp_path, data={"n": 400}))
    out = capsys.readouterr().out
    assert "img/s" in out  # the bar's postfix
    assert "/74" in out  # steps done of the total: 2 epochs of 37 steps
    assert "epoch 2/2" in out
    assert "[gentrain] done in " in out


def test_rerunning_a_finished_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine.fit(small(tmp_path, name="twice"))
    capsys.readouterr()
    result = engine.fit(small(tmp_path, name="twice"))
    out = capsys.readouterr().out
    assert (
        "[gentrain] run twice already finished at epoch 2; nothing to do — use run.resume=never or a new run.name"
        in out
    )
    assert "done in" not in out
    assert result.metrics.get("epoch", 2) == 2
