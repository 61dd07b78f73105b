"""DataSpec carries the run's sizes; training drops the last partial batch (issue #17)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import engine
from engine.data import DataLoaderAdapter, ImageData, MemoryLoader
from engine.testing import plugin_manager


@dataclass(frozen=True)
class SpyConfig(engine.ModelConfig):
    seen: ClassVar[list[engine.DataSpec]] = []

    def check(self, data: engine.DataSpec) -> None:
        SpyConfig.seen.append(data)


class Spy(engine.Model):
    built: ClassVar[list[engine.DataSpec]] = []

    def __init__(self, config: SpyConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        Spy.built.append(data)
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, torch.Tensor]:
        return {"loss": (self.w - batch[0].mean()).pow(2)}


class SpyPlugin:
    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("spy", Spy, SpyConfig)


def test_check_and_the_model_see_train_size_batch_size_and_world_size(tmp_path: Path) -> None:
    SpyConfig.seen.clear()
    Spy.built.clear()
    raw = {
        "model": {"name": "spy"},
        "data": {"name": "shapes", "n": 100, "size": 8, "val_fraction": 0.1},
        "trainer": {"batch_size": 7, "epochs": 1},
        "run": {"output_dir": str(tmp_path), "name": "spy"},
    }
    with plugin_manager(SpyPlugin()):
        engine.prepare(raw)
    for spec in (SpyConfig.seen[-1], Spy.built[-1]):
        assert (spec.train_size, spec.batch_size, spec.world_size) == (90, 7, 1)
        assert spec.steps_per_epoch == 90 // 7
        assert spec.global_batch_size == 7


@pytest.mark.parametrize("loader", [MemoryLoader, DataLoaderAdapter])
@pytest.mark.parametrize("world", [1, 2])
def test_training_drops_the_last_partial_batch_validation_keeps_it(loader: Any, world: int) -> None:
    data = ImageData(torch.zeros(23, 1, 2, 2, dtype=torch.uint8), torch.zeros(23, dtype=torch.long), None)
    train = loader(data, 3, shuffle=True, rank=world - 1, world_size=world, drop_last=True)
    sizes = [len(x) for x, _ in train]
    assert sizes == [3] * (23 // world // 3)
    assert len(train) == len(sizes)
    val = loader(data, 3, shuffle=False, rank=0, world_size=1, drop_last=False)
    assert sum(len(x) for x, _ in val) == 23
