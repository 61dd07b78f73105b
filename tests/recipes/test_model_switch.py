"""``model.name=<another model>`` on a recipe: the recipe's model fields are dropped, with one note.

A recipe's model section holds its own model's fields; switching the model
from the command line used to fail with one "unknown field" error per field.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine import config as cfg
from engine import recipes
from engine.errors import GentrainError
from engine.plugins import current

ROOT = Path(__file__).resolve().parents[2]


def recipe(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_vae_recipe_trains_a_gan(tmp_path: Path) -> None:
    # As a user runs it: in-process (no Ray), the smoke size.
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "quickstart.py"),
            "--smoke",
            "model.name=gan",
            "model.latent_dim=4",
            "scaling.num_workers=0",
            f"run.output_dir={tmp_path}",
            "run.name=switched",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stderr.splitlines() if line.startswith("gentrain: note: model.name=")]
    assert notes == ["gentrain: note: model.name=gan replaces vae; dropped vae's fields: arch, hidden, recon_loss"]
    assert "unknown field" not in proc.stderr
    saved = cfg.read_yaml(tmp_path / "switched" / "config.yaml")
    assert saved["model"]["name"] == "gan"
    assert saved["model"]["latent_dim"] == 4


class Captured(GentrainError):
    pass


def capture(monkeypatch: pytest.MonkeyPatch, module: Any, attr: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake(raw: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        seen["raw"] = raw
        seen["overrides"] = args[-1] if attr == "fit" else args[1]
        raise Captured("captured")

    monkeypatch.setattr(module, attr, fake)
    return seen


def test_smoke_fields_go_too_and_the_result_is_a_valid_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import engine.api

    gan = recipe("gan_mnist")
    seen = capture(monkeypatch, engine.api, "fit")
    code = recipes.main(gan.CONFIG, smoke=gan.SMOKE, argv=["--smoke", "model.name=vae", "model.beta=2"])
    assert code == 2  # the captured call
    # The recipe's fields (and its smoke's model.channels) are gone; the overrides apply after.
    assert seen["raw"]["model"] == {"name": "gan"}
    dropped = "dropped gan's fields: arch, latent_dim, refine, disc_refine, codes, loss, channels\n"
    assert dropped in capsys.readouterr().err
    resolved = cfg.resolve(cfg.build_raw(seen["raw"], seen["overrides"]), current())
    assert resolved.model.name == "vae"
    assert resolved.model.params.beta == 2


def test_the_same_model_or_no_switch_keeps_the_recipe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import engine.api

    vae = recipe("vae_mnist")
    seen = capture(monkeypatch, engine.api, "fit")
    for argv in (["model.name=vae"], ["model.beta=3"], []):
        recipes.main(vae.CONFIG, argv=argv)
        assert seen["raw"]["model"] == vae.CONFIG["model"], argv
    assert "gentrain: note" not in capsys.readouterr().err


def test_a_tuning_recipe_switches_too(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import engine.ray

    tune_vae = recipe("tune_vae")
    seen = capture(monkeypatch, engine.ray, "tune")
    recipes.tune_main(tune_vae.CONFIG, tune_vae.SPACE, argv=["model.name=ae"])
    assert seen["raw"]["model"] == {"name": "vae"}
    assert "gentrain: note: model.name=ae replaces vae" in capsys.readouterr().err


def test_gentrain_fit_on_a_recipe_switches_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import engine.api
    from engine import cli

    seen = capture(monkeypatch, engine.api, "fit")
    assert cli.main(["fit", str(ROOT / "recipes" / "gan_mnist.py"), "model.name=vae"]) == 2  # the captured call
    assert seen["raw"]["model"] == {"name": "gan"}
    note = (
        "gentrain: note: model.name=vae replaces gan; "
        "dropped gan's fields: arch, latent_dim, refine, disc_refine, codes, loss"
    )
    assert note in capsys.readouterr().err
