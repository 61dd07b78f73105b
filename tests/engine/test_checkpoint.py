"""Checkpoint files: atomic writes, safe loading, and refusing what does not belong to the run."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import engine
from engine import checkpoint


def state(step: int) -> dict[str, Any]:
    return {
        "format": checkpoint.FORMAT,
        "step": step,
        "model": {"w": torch.arange(4.0) * step},
        "rng": checkpoint.rng_state(),
    }


def test_save_load_latest_and_prune(tmp_path: Path) -> None:
    for step in (3, 12, 7):
        checkpoint.save(state(step), tmp_path)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "step=000000003.pt",
        "step=000000007.pt",
        "step=000000012.pt",
    ]
    latest = checkpoint.latest(tmp_path)
    assert latest is not None
    assert torch.equal(checkpoint.load(latest)["model"]["w"], torch.arange(4.0) * 12)
    checkpoint.prune(tmp_path, keep=1)
    assert checkpoint.list_checkpoints(tmp_path) == [latest]


def test_a_crash_mid_write_leaves_the_previous_checkpoint_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint.save(state(1), tmp_path)

    def dies_half_way(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(state(2), tmp_path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step=000000001.pt"]  # no temp file left either
    latest = checkpoint.latest(tmp_path)
    assert latest is not None
    assert checkpoint.load(latest)["step"] == 1


def test_temporary_files_are_never_taken_for_checkpoints(tmp_path: Path) -> None:
    checkpoint.save(state(5), tmp_path)
    (tmp_path / ".tmp-abc.pt").write_bytes(b"partial")
    latest = checkpoint.latest(tmp_path)
    assert latest is not None
    assert latest.name == "step=000000005.pt"


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = checkpoint.save(state(4), tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(engine.CheckpointError, match=r"is truncated or corrupt"):
        checkpoint.load(path)


class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch PWNED",))


def test_pickle_payload_is_refused_not_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "step=000000001.pt"
    torch.save({"format": checkpoint.FORMAT, "step": 1, "model": Payload()}, path)
    with pytest.raises(engine.CheckpointError, match=r"refused: it holds Python objects"):
        checkpoint.load(path)
    assert not (tmp_path / "PWNED").exists()
    # A raw pickle (not a torch zip file) is refused too.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(engine.CheckpointError):
        checkpoint.load(raw)
    assert not (tmp_path / "PWNED").exists()


def test_foreign_file_and_missing_file(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(engine.CheckpointError, match="not a gentrain checkpoint"):
        checkpoint.load(other)
    with pytest.raises(engine.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pt")


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    path = checkpoint.save({"format": checkpoint.FORMAT, "step": 0, "rng": checkpoint.rng_state()}, tmp_path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    common = {
        "data": {"n": 64, "size": 16},
        "trainer": {"epochs": 1, "batch_size": 16},
        "run": {"output_dir": str(tmp_path), "name": "shared"},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
    }
    engine.fit({"model": {"name": "ae"}, **common})
    refused = r"checkpoint .*step=\d+\.pt is of model 'ae', but this run trains 'vae'"
    with pytest.raises(engine.CheckpointError, match=refused):
        engine.fit({"model": {"name": "vae"}, **common})
    with pytest.raises(engine.CheckpointError, match=r"does not fit this model"):
        engine.fit({"model": {"name": "ae", "latent_dim": 3}, **common})
