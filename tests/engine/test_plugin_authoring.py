"""What a plugin author meets (issue #17): the documented example, API versions, hook typos, listings."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

import engine
from engine import cli, describe
from engine.testing import plugin_manager


def _example_module(where: Path) -> types.ModuleType:
    """The python example of engine's docstring, written to a file and imported (as an author would)."""
    doc = engine.__doc__ or ""
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", doc)
    assert blocks, "engine's docstring lost its python example"
    path = where / "gentrain_doc_example.py"
    path.write_text("\n".join(line[4:] for line in blocks[0].splitlines()) + "\n")
    spec = importlib.util.spec_from_file_location("gentrain_doc_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_engine_docstring_example_runs_as_written(tmp_path: Path) -> None:
    module = _example_module(tmp_path)
    with plugin_manager(module) as pm:
        assert "tiny_example" in pm.models
        fields = describe.describe(pm)["models"]
        row = next(m for m in fields if m["name"] == "tiny_example")["fields"][0]
        assert row == {"name": "hidden", "type": "int > 0", "default": 32, "doc": row["doc"]}
        assert "Width of the hidden layer" in row["doc"]
        result = engine.fit(
            {
                "model": {"name": "tiny_example", "hidden": 8},
                "data": {"name": "shapes", "n": 64, "size": 8},
                "trainer": {"epochs": 1, "batch_size": 16},
                "run": {"output_dir": str(tmp_path), "name": "doc"},
                "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
            }
        )
    assert result.checkpoint is not None


def test_a_plugin_for_another_api_version_is_refused_at_load() -> None:
    module = types.ModuleType("oldplug")
    module.gentrain_api = "0"  # type: ignore[attr-defined]
    with pytest.raises(engine.PluginError, match=r"plugin 'oldplug' .*written for gentrain plugin API '0'.*API '1'"):
        engine.load_plugins(autoload=False, extra=[module])
    module.gentrain_api = engine.API_VERSION  # type: ignore[attr-defined]
    engine.load_plugins(autoload=False, extra=[module])


class Misspelled:
    @engine.hookimpl
    def gentrain_on_fit_strat(self, trainer: Any) -> None:
        pass


def test_a_misspelled_hook_gets_a_did_you_mean() -> None:
    with pytest.raises(engine.PluginError, match=r"unknown hook.*did you mean 'gentrain_on_fit_start'"):
        engine.load_plugins(autoload=False, extra=[Misspelled()])


def test_plugins_verbose_lists_every_entry_with_fields_as_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins", "-v"]) == 0
    text = capsys.readouterr().out
    assert "hidden: int > 0 = 16  -- Width of the code layer." in text  # the fixture plugin, its field doc
    assert "huber [reconstruction, takes probabilities] (plugin tiny)" in text
    assert "latent_dim: int > 0 = 20" in text
    assert "shapes (plugin datasets)" in text
    assert cli.main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"plugins", "models", "losses", "datasets", "options"} <= set(data)
    huber = next(e for e in data["losses"] if e["name"] == "huber")
    assert huber["domain"] == "probabilities"
    assert huber["fields"][0]["name"] == "delta"
    vae = next(e for e in data["models"] if e["name"] == "vae")
    beta = next(f for f in vae["fields"] if f["name"] == "beta")
    assert beta["type"] == "float >= 0"
    assert beta["default"] == 1.0
    assert "KL" in beta["doc"]
    assert any(o["section"] == "callbacks" for o in data["options"])
    batch = next(f for f in data["sections"]["trainer"] if f["name"] == "batch_size")
    assert (batch["type"], batch["default"]) == ("int > 0", 64)


def test_config_show_prints_the_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show", "model.name=ae", "model.recon_loss={name: huber, delta: 0.5}"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["recon_loss"] == {"name": "huber", "delta": 0.5}
    assert shown["trainer"]["epochs"] == 10
    with plugin_manager(autoload=True) as pm:
        assert engine.resolve(shown, pm).to_dict() == shown  # it runs as shown
    assert cli.main(["config", "show", "model.name=ae", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == "ae"
    assert cli.main(["config", "show", "model.name=ae", "model.hidden=300"]) == 2
    assert "write [300]" in capsys.readouterr().err


def test_engine_testing_imports_without_pytest(tmp_path: Path) -> None:
    import subprocess

    code = "import sys; sys.modules['pytest'] = None; import engine.testing; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
