"""Plugin discovery and the errors plugin authors see."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.plugins import load_plugins
from engine.testing import plugin_manager

GENTRAIN = shutil.which("gentrain") or str(Path(sys.executable).parent / "gentrain")


class Misspelled:
    @engine.hookimpl
    def gentrain_on_fit_strat(self, trainer: Any) -> None:  # "strat"
        pass


class WrongArgument:
    @engine.hookimpl
    def gentrain_on_train_batch_end(self, trainer: Any, stepp: int) -> None:
        pass


class RegistersDup:
    def __init__(self, tag: str) -> None:
        self.__name__ = f"dup-{tag}"

    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("dup", engine.Model, None)


class NotADataclassConfig:
    pass


class BadConfigClass:
    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("bad", engine.Model, NotADataclassConfig)


def test_misspelled_hook_names_the_plugin() -> None:
    with pytest.raises(
        engine.PluginError, match=r"plugin 'misspelled' implements an unknown hook.*gentrain_on_fit_strat"
    ):
        load_plugins(autoload=False, extra=[_named(Misspelled(), "misspelled")])


def test_misspelled_argument_names_the_plugin() -> None:
    with pytest.raises(engine.PluginError, match=r"(?s)plugin 'wrongarg' is invalid.*'stepp'"):
        load_plugins(autoload=False, extra=[_named(WrongArgument(), "wrongarg")])


def test_duplicate_model_names_both_plugins() -> None:
    with pytest.raises(
        engine.PluginError, match=r"model 'dup' is registered twice: by plugin 'dup-a' and by plugin 'dup-b'"
    ):
        load_plugins(autoload=False, extra=[RegistersDup("a"), RegistersDup("b")])


def test_config_class_must_be_a_dataclass() -> None:
    with pytest.raises(engine.PluginError, match=r"'bad'.*not a @dataclass"):
        load_plugins(autoload=False, extra=[BadConfigClass()])


def _named(obj: Any, name: str) -> Any:
    obj.__name__ = name
    return obj


def _fake_distribution(root: Path, name: str, module_source: str) -> None:
    """An installed distribution with a `gentrain` entry point, as pip would leave it."""
    (root / f"{name}.py").write_text(module_source)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[gentrain]\n{name} = {name}\n")


def test_plugin_raising_on_import_names_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(tmp_path, "brokenplug", "raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(engine.PluginError) as info:
        load_plugins(autoload=True)
    message = str(info.value)
    assert "plugin 'brokenplug'" in message
    assert "failed to import: ImportError: needs libfoo" in message
    assert "GENTRAIN_DISABLE_PLUGINS=brokenplug" in message
    # The remedy the message names works.
    monkeypatch.setenv("GENTRAIN_DISABLE_PLUGINS", "brokenplug")
    assert "brokenplug" not in load_plugins(autoload=True).info


def test_plugin_module_from_env_raising_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "envplug.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GENTRAIN_PLUGINS", "envplug")
    with pytest.raises(engine.PluginError, match=r"plugin module 'envplug'.*failed to import.*division by zero"):
        load_plugins(autoload=False)


def test_registration_hook_raising_names_the_plugin() -> None:
    class Raises:
        __name__ = "raiser"

        @engine.hookimpl
        def gentrain_register_losses(self, registry: engine.Registry[Any]) -> None:
            raise KeyError("oops")

    with pytest.raises(engine.PluginError, match=r"plugin 'raiser' raised in gentrain_register_losses: KeyError"):
        load_plugins(autoload=False, extra=[Raises()])


def test_autoload_off_keeps_builtins_and_drops_third_party(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "tiny" in load_plugins(autoload=True).models
    monkeypatch.setenv("GENTRAIN_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = load_plugins()
    assert "tiny" not in pm.models
    assert {"ae", "vae", "gan", "aegan"} <= set(pm.models.names())
    assert pm.info["losses"].builtin


def test_blocking_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENTRAIN_DISABLE_PLUGINS", "progress,gan")
    pm = load_plugins(autoload=False)
    assert "progress" not in pm.info
    assert "gan" not in pm.models


def test_hook_raising_during_training_names_plugin_and_hook(tmp_path: Path) -> None:
    class Flaky:
        __name__ = "flaky"

        @engine.hookimpl
        def gentrain_on_train_epoch_end(self, epoch: int) -> None:
            raise RuntimeError("disk full")

    with plugin_manager(Flaky()), pytest.raises(engine.PluginError) as info:
        engine.fit(
            {
                "model": {"name": "ae"},
                "data": {"n": 64, "size": 16},
                "trainer": {"epochs": 1, "batch_size": 16},
                "run": {"output_dir": str(tmp_path), "name": "x"},
                "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
            }
        )
    assert str(info.value) == "plugin 'flaky' raised in hook gentrain_on_train_epoch_end: RuntimeError: disk full"


def test_gentrain_plugins_lists_versions_and_registrations() -> None:
    out = subprocess.run([GENTRAIN, "plugins"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "tiny 1.2.3 (gentrain-tiny: gentrain_tiny.plugin)" in out
    tiny = out.split("tiny 1.2.3", 1)[1]
    assert "models: tiny" in tiny
    assert "losses: huber [reconstruction]" in tiny
    assert "datasets: shapes, mnist, fashion_mnist, kmnist, cifar10, image_folder" in out
    assert any(line.startswith("  trainer hooks: ") and "gentrain_on_fit_end" in line for line in out.splitlines())


def test_third_party_model_trains_with_gentrain_fit(tmp_path: Path) -> None:
    """The pip-installed plugin under tests/fixtures trains with no change to engine/."""
    out = subprocess.run(
        [
            GENTRAIN,
            "fit",
            "model.name=tiny",
            "model.loss=huber",
            "data.n=256",
            "data.size=16",
            "trainer.epochs=2",
            "trainer.batch_size=32",
            f"run.output_dir={tmp_path}",
            "run.name=tiny-run",
            "callbacks.tensorboard=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "tiny on shapes" in out.stdout
    # 256 images, 10% held out -> 230 training images -> 7 steps of 32 per epoch.
    assert (tmp_path / "tiny-run" / "checkpoints" / "step=000000014.pt").is_file()
    rows = (tmp_path / "tiny-run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    first, last = (float(r.split(",")[header.index("val/loss")]) for r in (rows[1], rows[2]))
    assert last < first
