"""Resuming: the three run.resume modes, and damaged or foreign checkpoints through the real CLI.

One tiny run (two epochs, a checkpoint after each) is trained once per module;
every test works on its own copy.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import engine
from engine import checkpoint as ckpt
from tests.adversarial.conftest import TINY, refused

STEPS_PER_EPOCH = 7  # 58 training images of 64 (val_fraction 0.1), batch 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained")
    from engine.testing import plugin_manager

    with plugin_manager():
        engine.fit(engine.config.build_raw({}, [*TINY, "trainer.epochs=2", "run.name=r", f"run.output_dir={out}"]))
    return out


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run: ``<tmp>/out/r`` with ``checkpoints/step=000000007.pt`` and ``...014.pt``."""
    shutil.copytree(trained, tmp_path / "out")
    return tmp_path / "out" / "r"


def args(run: Path, *more: str) -> list[str]:
    return ["fit", *TINY, f"run.output_dir={run.parent}", f"run.name={run.name}", *more]


def listing(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size if p.is_file() else -1 for p in sorted(path.rglob("*"))}


def newest(run: Path) -> Path:
    found = ckpt.latest(run / "checkpoints")
    assert found is not None
    return found


# -- the three modes -----------------------------------------------------------------


def test_auto_continues_the_run(cli: Any, run: Path) -> None:
    done = cli(args(run, "trainer.epochs=3"), train=True)
    assert done.code == 0, done.err
    assert ckpt.load(newest(run))["step"] == 3 * STEPS_PER_EPOCH


def test_must_continues_and_refuses_without_a_checkpoint(cli: Any, run: Path, tmp_path: Path) -> None:
    done = cli(args(run, "trainer.epochs=3", "run.resume=must"), train=True)
    assert done.code == 0, done.err
    fresh = tmp_path / "out" / "fresh"
    refused(cli(args(fresh, "run.resume=must"), train=True), "run.resume=must", str(fresh), absent=[fresh])


def test_never_moves_the_old_run_aside_and_a_later_auto_continues_the_new_one(cli: Any, run: Path) -> None:
    before = listing(run)
    done = cli(args(run, "trainer.epochs=1", "run.resume=never"), train=True)
    assert done.code == 0, done.err
    moved = [line for line in done.err.splitlines() if "moved the earlier run" in line]
    assert len(moved) == 1, done.err
    old = [p for p in run.parent.iterdir() if p.name.startswith("r.old-")]
    assert len(old) == 1
    assert listing(old[0]) == before  # the old run, whole
    # The new run holds only its own checkpoint: no step=14 of the old run to resume from.
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step=000000007.pt"]
    again = cli(args(run, "trainer.epochs=2"), train=True)
    assert again.code == 0, again.err
    assert ckpt.load(newest(run))["step"] == 2 * STEPS_PER_EPOCH
    assert len([p for p in run.parent.iterdir() if p.name.startswith("r.old-")]) == 1  # auto moves nothing


def test_never_on_a_new_name_moves_nothing(cli: Any, run: Path) -> None:
    fresh = run.parent / "new"
    done = cli(args(fresh, "run.resume=never"), train=True)
    assert done.code == 0, done.err
    assert "moved" not in done.err


# -- damaged newest checkpoint: fall back to the previous one, and say so ----------------


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x").write_text("x")


def _without(key: str) -> Any:
    def damage(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        del state[key]
        torch.save(state, path)

    return damage


def _short_rng(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["rng"][0]["torch"] = state["rng"][0]["torch"][:100]
    torch.save(state, path)


def _wrong_type(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["step"] = "fourteen"
    torch.save(state, path)


DAMAGE = {
    "zero-bytes": _zero_bytes,
    "truncated": _truncated,
    "a-directory": _a_directory,
    "no-rng": _without("rng"),
    "no-model": _without("model"),
    "no-optimizers": _without("optimizers"),
    "short-rng-state": _short_rng,
    "wrong-type": _wrong_type,
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(cli: Any, run: Path, damage: str) -> None:
    bad = newest(run)
    DAMAGE[damage](bad)
    done = cli(args(run, "trainer.epochs=2"), train=True)
    assert done.code == 0, done.err
    said = [line for line in done.err.splitlines() if "resuming from the previous checkpoint" in line]
    assert len(said) == 1, done.err
    assert str(bad) in said[0]
    assert "step=000000007.pt" in said[0]


@pytest.mark.parametrize("damage", ["zero-bytes", "a-directory", "no-rng", "short-rng-state"])
def test_when_every_checkpoint_is_damaged_the_newest_is_named(cli: Any, run: Path, damage: str) -> None:
    files = ckpt.list_checkpoints(run / "checkpoints")
    for path in files:
        DAMAGE[damage](path)
    before = listing(run)
    refused(cli(args(run, "trainer.epochs=3"), train=True), str(files[-1]), "checkpoint")
    assert listing(run) == before


def test_a_pickle_payload_is_refused_and_never_runs(cli: Any, run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    for path in ckpt.list_checkpoints(run / "checkpoints"):
        path.write_bytes(pickle.dumps({"format": 1, "x": Payload()}))
    refused(cli(args(run, "trainer.epochs=3"), train=True), "checkpoint", absent=[marker])


# -- a checkpoint of another config ---------------------------------------------------


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("optim.algo=sgd", ["optimizer 'train'", "optim.algo"]),
        ("optim.algo=rmsprop", ["optimizer 'train'", "run.resume=never"]),
        ("model.latent_dim=3", ["does not fit this model", "run.resume=never"]),
        ("model.hidden=[16]", ["does not fit this model"]),
        ("model.name=vae", ["is of model 'ae'", "'vae'"]),
    ],
    ids=["adam-to-sgd", "adam-to-rmsprop", "latent-dim", "hidden", "another-model"],
)
def test_a_checkpoint_of_another_config_is_refused_by_file(
    cli: Any, run: Path, override: str, names: list[str]
) -> None:
    before = listing(run)
    refused(cli(args(run, "trainer.epochs=3", override), train=True), str(newest(run)), *names)
    assert listing(run) == before  # nothing was written over the run


# -- the run directory itself --------------------------------------------------------


def test_checkpoints_that_is_a_file(cli: Any, tmp_path: Path) -> None:
    run = tmp_path / "out" / "r"
    run.mkdir(parents=True)
    (run / "checkpoints").write_text("not a folder")
    refused(cli(args(run)), "run.name", str(run / "checkpoints"))


def test_config_yaml_that_is_a_directory(cli: Any, run: Path) -> None:
    (run / "config.yaml").unlink()
    (run / "config.yaml").mkdir()
    refused(cli(args(run, "trainer.epochs=3"), train=True), "run.name", str(run / "config.yaml"))


def test_run_directory_that_is_a_file(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r").write_text("x")
    refused(cli(args(tmp_path / "out" / "r")), "run.name", str(tmp_path / "out" / "r"))


def test_run_directory_that_is_a_symlink_loop(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r").symlink_to(tmp_path / "out" / "r")
    refused(cli(args(tmp_path / "out" / "r")), "run.name", "symlink")


@pytest.mark.parametrize("where", ["output-dir-a-file", "below-a-file", "read-only-mount", "output-dir-loop"])
def test_output_directory_that_cannot_be_written(cli: Any, tmp_path: Path, where: str) -> None:
    target = {
        "output-dir-a-file": tmp_path / "f",
        "below-a-file": tmp_path / "f" / "deeper",
        "read-only-mount": Path("/proc/gentrain-out"),
        "output-dir-loop": tmp_path / "loop" / "x",
    }[where]
    (tmp_path / "f").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    absent = [] if where == "output-dir-a-file" else [target]
    refused(cli(["fit", *TINY, f"run.output_dir={target}", "run.name=r"]), "run.output_dir", absent=absent)
