"""Model plugins that break the contract, and plugin installations that clash: one line naming the plugin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.plugins import load_plugins
from tests.adversarial import bad_plugins
from tests.adversarial.conftest import TINY, refused

FAULTY = [a for a in TINY if not a.startswith("model.")] + ["model.name=faulty"]

# (fault, what the one line must say besides the model and its plugin)
STEP_FAULTS = [
    ("no_loss", "without 'loss'"),
    ("vector_loss", "shape (8,)"),
    ("int_loss", "dtype torch.int64"),
    ("not_a_dict", "a Tensor"),
    ("float_loss", "'loss' as a float"),
    ("detached_loss", "does not require grad"),
    ("bad_logged_value", "extra"),
]


@pytest.mark.parametrize(("fault", "says"), STEP_FAULTS, ids=[f for f, _ in STEP_FAULTS])
def test_training_step_breaking_the_contract(cli: Any, tmp_path: Path, fault: str, says: str) -> None:
    out = tmp_path / "out"
    outcome = cli(["fit", *FAULTY, f"model.fault={fault}", f"run.output_dir={out}", "run.name=r"], train=True)
    refused(outcome, "model 'faulty'", "plugin 'badmodels'", "training_step", says)
    assert not (out / "r").exists()  # it failed before the first checkpoint: no run directory is left


def test_training_step_raising(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    outcome = cli(["fit", *FAULTY, "model.fault=step_raises", f"run.output_dir={out}", "run.name=r"], train=True)
    refused(outcome, "model 'faulty'", "plugin 'badmodels'", "ValueError: shape mismatch in decoder")
    assert not (out / "r").exists()


def test_model_init_raising(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused(
        cli(["fit", *FAULTY, "model.fault=init_raises", f"run.output_dir={out}"]),
        "model 'faulty'",
        "plugin 'badmodels'",
        "RuntimeError: weights file missing",
        absent=[out],
    )


@pytest.fixture
def optimizer_hook() -> Iterator[dict[str, str]]:
    yield bad_plugins._active
    bad_plugins._active.clear()


@pytest.mark.parametrize("made", ["a_dict", "a_string"])
def test_optimizer_hook_returning_something_else(
    cli: Any, tmp_path: Path, optimizer_hook: dict[str, str], made: str
) -> None:
    optimizer_hook["optimizer"] = made
    out = tmp_path / "out"
    refused(
        cli(["fit", *FAULTY, f"run.output_dir={out}"]),
        "gentrain_make_optimizer",
        "'badmodels'",
        "torch.optim.Optimizer",
        absent=[out],
    )


def test_per_optimizer_on_a_two_optimizer_model(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["fit", *[a for a in FAULTY if a != "model.name=faulty"], "model.name=twonets", f"run.output_dir={out}"]
    refused(cli([*args, "optim.per_optimizer.generator.lr=0.1"]), "optim.per_optimizer.generator", "gen", absent=[out])


# -- installations -------------------------------------------------------------------


def _fake_distribution(root: Path, dist: str, plugin: str, module: str) -> None:
    """An installed distribution whose `gentrain` entry point ``plugin`` is module ``module``, as pip leaves it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text("X = 1\n")
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gentrain]\n{plugin} = {module}\n")


def test_a_plugin_name_claimed_by_two_distributions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path / "a", "alpha-dist", "shared", "alpha_mod")
    _fake_distribution(tmp_path / "b", "beta-dist", "shared", "beta_mod")
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    with pytest.raises(engine.PluginError) as info:
        load_plugins(autoload=True)
    message = str(info.value)
    assert "'shared'" in message
    assert "alpha-dist" in message
    assert "beta-dist" in message
    assert "GENTRAIN_DISABLE_PLUGINS=shared" in message
    monkeypatch.setenv("GENTRAIN_DISABLE_PLUGINS", "shared")
    assert "shared" not in load_plugins(autoload=True).info  # the remedy named works
