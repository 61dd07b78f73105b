"""The GPU path (``scaling.use_gpu=true``): model, batches and bf16 autocast on CUDA; NCCL under Ray.

Every test here is marked ``gpu`` and skips, with that reason, when no CUDA
device is visible (CI has none). On a GPU machine: ``pytest -m gpu``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import engine
from engine import checkpoint
from engine.data import DEVICE_RESIDENT_BYTES, ImageData, MemoryLoader
from plugins.datasets.io import make_shapes
from engine.testing import plugin_manager

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible here"),
]

HERE = Path(__file__).resolve().parent


def vae_config(tmp_path: Path, **scaling: Any) -> dict[str, Any]:
    return {
        "model": {"name": "vae", "hidden": [64], "latent_dim": 8},
        "data": {"name": "shapes", "n": 512, "size": 16},
        "trainer": {"epochs": 2, "batch_size": 32, "precision": "bf16"},
        "scaling": {"use_gpu": True, **scaling},
        "run": {"output_dir": str(tmp_path), "name": "gpu"},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
    }


class DeviceProbe:
    """Where the parameters and batches live, and the dtype a Linear layer computes in."""

    def __init__(self) -> None:
        self.params: set[str] = set()
        self.batches: set[str] = set()
        self.linear_out: set[torch.dtype] = set()

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        self.params = {p.device.type for p in trainer.model.parameters()}
        first = next(m for m in trainer.model.modules() if isinstance(m, nn.Linear))
        first.register_forward_hook(lambda _m, _i, out: self.linear_out.add(out.dtype))

    @engine.hookimpl
    def gentrain_on_train_batch_start(self, batch: Any) -> None:
        x, y = batch
        self.batches.update({x.device.type, y.device.type})


def test_in_process_trains_on_the_gpu_under_bf16_autocast(tmp_path: Path) -> None:
    probe = DeviceProbe()
    with plugin_manager(probe):
        result = engine.fit(vae_config(tmp_path))
    assert probe.params == {"cuda"}
    assert probe.batches == {"cuda"}
    assert probe.linear_out == {torch.bfloat16}
    assert math.isfinite(result.metrics["train/loss"])
    assert result.checkpoint is not None
    # Read back as it would be on a machine without a GPU.
    state = checkpoint.load(result.checkpoint)
    assert {v.device.type for v in state["model"].values()} == {"cpu"}


def test_memory_loader_keeps_a_small_dataset_on_the_gpu() -> None:
    images, labels, _ = make_shapes(64, 8, 0)
    assert images.numel() <= DEVICE_RESIDENT_BYTES
    loader = MemoryLoader(ImageData(images, labels, None), 16, device=torch.device("cuda"))
    x, y = next(loader.iter_from(0))
    assert loader.data.images.device.type == "cuda"
    assert x.device.type == y.device.type == "cuda"
    assert x.dtype == torch.float32
    # The same batch as the CPU loader gives, converted on the device.
    cpu_x, _ = next(MemoryLoader(ImageData(images, labels, None), 16).iter_from(0))
    assert torch.equal(x.cpu(), cpu_x)


@pytest.mark.ray
def test_ray_worker_trains_on_its_gpu_with_nccl(
    tmp_path: Path, ray_local: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if ray_local.get("GPU", 0) < 1:
        pytest.skip("the local Ray cluster sees no GPU")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("GENTRAIN_PLUGINS", "ray_test_plugins")
    config = vae_config(tmp_path, num_workers=1)
    config["model"] = {"name": "ddp_ae"}
    result = engine.fit(config)
    record = json.loads((result.run_dir / "replicas" / "rank0.json").read_text())
    assert record["backend"] == "nccl"
    assert record["devices"] == ["cuda:0"]
    assert result.metrics["epoch"] == 2
