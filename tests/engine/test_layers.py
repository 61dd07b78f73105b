"""What the engine's layering promises: the config resolved once, data loaded and the model built once
in-process, and trainer plugins that declare their own config sections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import engine
from engine.plugins import load_plugins
from engine.testing import plugin_manager


@dataclass(frozen=True)
class CountedConfig(engine.ModelConfig):
    hidden: engine.PositiveInt = 8


class Counted(engine.Model):
    builds = 0

    def __init__(self, config: CountedConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        type(self).builds += 1
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(data.numel, config.hidden), nn.Linear(config.hidden, data.numel)
        )

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        return {"loss": (self.net(x) - x.flatten(1)).pow(2).mean()}


@dataclass(frozen=True)
class RecordedDataConfig:
    n: engine.PositiveInt = 64


class Recording:
    """A dataset plugin and a model plugin that count their calls."""

    def __init__(self) -> None:
        self.loads = 0

    def load(self, config: RecordedDataConfig, data: engine.DataConfig) -> engine.ImageData:
        self.loads += 1
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (config.n, 1, 8, 8), generator=g, dtype=torch.uint8)
        return engine.ImageData(images, torch.zeros(config.n, dtype=torch.long), 1, "recorded")

    @engine.hookimpl
    def gentrain_register_datasets(self, registry: engine.Registry[Any]) -> None:
        registry.add("recorded", self.load, RecordedDataConfig)

    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("counted", Counted, CountedConfig)


def run_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    return {
        "model": {"name": "counted"},
        "data": {"name": "recorded", "val_fraction": 0.25},
        "trainer": {"epochs": 2, "batch_size": 8},
        "run": {"name": "r", "output_dir": str(tmp_path)},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
        **sections,
    }


def test_in_process_fit_loads_the_data_once_and_builds_the_model_once(tmp_path: Path) -> None:
    recording = Recording()
    Counted.builds = 0
    with plugin_manager(recording):
        result = engine.fit(run_config(tmp_path))
    assert result.metrics["epoch"] == 2.0
    assert recording.loads == 1
    assert Counted.builds == 1


def test_the_driver_built_model_is_the_one_a_worker_would_build(tmp_path: Path) -> None:
    """Same seed, same weights: the in-process run trains what a Ray worker would have built."""
    from engine import loop
    from engine.prepare import prepare_run

    with plugin_manager(Recording()) as pm:
        config, dataset, driver_model = prepare_run(run_config(tmp_path), (), pm)
        loop.seed_everything(config.trainer.seed)
        worker_model = loop.build_model(config, pm, dataset.spec)
    for a, b in zip(driver_model.state_dict().values(), worker_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# a third-party trainer plugin with its own config section
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditOptions:
    """Options of the ``audit`` plugin: which file to write and how often."""

    filename: str = "audit.txt"
    every: engine.PositiveInt = 1
    enabled: bool = True


@dataclass(frozen=True)
class AuditCallbackOptions:
    audit_verbose: bool = False


class Audit:
    """Writes one line per epoch, as its own section says."""

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("audit", self, AuditOptions)
        registry.add("audit_callbacks", self, AuditCallbackOptions, kind="callbacks")

    @engine.hookimpl
    def gentrain_on_train_epoch_end(self, trainer: engine.Trainer, epoch: int) -> None:
        options = trainer.config.section("audit")
        if trainer.is_rank_zero and options.enabled and (epoch + 1) % options.every == 0:
            with open(Path(trainer.run_dir) / options.filename, "a") as f:
                f.write(f"epoch {epoch} verbose={trainer.config.callbacks.audit_verbose}\n")


def test_a_trainer_plugin_reads_its_own_section(tmp_path: Path) -> None:
    with plugin_manager(Recording(), Audit()):
        result = engine.fit(
            run_config(
                tmp_path, audit={"filename": "a.log", "every": 2}, callbacks={"progress": False, "audit_verbose": True}
            )
        )
    assert (result.run_dir / "a.log").read_text() == "epoch 1 verbose=True\n"
    # The section round-trips through the run's config.yaml like the engine's own.
    assert result.config.to_dict()["audit"] == {"filename": "a.log", "every": 2, "enabled": True}


def test_a_plugin_section_gets_field_named_errors(tmp_path: Path) -> None:
    with plugin_manager(Recording(), Audit()) as pm, pytest.raises(engine.ConfigError) as info:
        engine.resolve(run_config(tmp_path, audit={"every": 0, "filname": "x", "enabled": "maybe"}), pm)
    problems = {field: allowed for field, _, allowed in info.value.problems}
    assert "greater than 0" in problems["audit.every"]
    assert "did you mean 'filename'" in problems["audit.filname"]
    assert "bool" in problems["audit.enabled"]


def test_a_section_is_unknown_without_its_plugin(tmp_path: Path) -> None:
    with plugin_manager(Recording()) as pm, pytest.raises(engine.ConfigError, match=r"audit.*unknown section"):
        engine.resolve(run_config(tmp_path, audit={"every": 2}), pm)


def test_callback_options_of_a_blocked_plugin_are_dropped_not_refused(tmp_path: Path) -> None:
    """Blocking a plugin must not make the configs that mention its options invalid."""
    with plugin_manager(Recording(), blocked=["tensorboard"]) as pm:
        config = engine.resolve(run_config(tmp_path), pm)
    assert not hasattr(config.callbacks, "tensorboard")
    assert config.callbacks.progress is False


def test_two_plugins_declaring_one_callbacks_field_is_a_plugin_error(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Clash:
        progress: bool = False

    class Clasher:
        @engine.hookimpl
        def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
            registry.add("clasher", self, Clash, kind="callbacks")

    match = r"callbacks\.progress is declared by two plugins: 'clasher' and 'progress'"
    with pytest.raises(engine.PluginError, match=match):
        load_plugins(autoload=False, extra=[Clasher()])


def test_a_model_overriding_the_old_optimizers_name_still_trains_with_a_deprecation_warning() -> None:
    class Legacy(Counted):
        def optimizers(self) -> dict[str, Any]:  # the pre-0.2 name
            return {"only": self.net.parameters()}

    spec = engine.DataSpec((1, 8, 8), 1)
    model = Legacy(CountedConfig(), spec)
    with pytest.warns(DeprecationWarning, match=r"Legacy\.optimizers\(\) is deprecated.*param_groups"):
        groups = model.param_groups()
    assert list(groups) == ["only"]
    with pytest.warns(DeprecationWarning, match=r"call param_groups"):
        assert list(Counted(CountedConfig(), spec).optimizers()) == ["train"]
