"""The streaming data paths on real files: a DCGAN on a folder of PNGs through DataLoader workers
(exact resume mid-epoch, peak RSS flat in the number of images) and through Ray Data on 2 Ray Train
workers (disjoint shards, resume).

The folders come from ``python -m plugins.datasets.make_folder`` in the test's temp dir. Every run
sets ``trainer.num_threads=1``: on a loaded 2-core machine torch's default of one OpenMP thread per
core spin-waits against the other processes (measured: the same epoch took 117 s instead of 11 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import engine
from engine import checkpoint
from engine.testing import plugin_manager
from plugins.datasets.make_folder import write_folder

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: A small DCGAN: the model is not what these tests measure.
GAN = {"name": "gan", "arch": "dcgan", "channels": 4, "latent_dim": 8}


def run_config(root: Path, out: Path, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": dict(GAN),
        "data": {"name": "image_folder", "root": str(root), "loader": "dataloader", "loader_workers": 2},
        "trainer": {"epochs": 1, "batch_size": 32, "seed": 5, "num_threads": 1},
        "run": {"output_dir": str(out), "name": name},
        "callbacks": {"progress": False, "tensorboard": False, "csv": False, "sample_every": 0},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pngs")
    write_folder(root, 640, 64, seed=2)
    return root


class StepLosses:
    """Every step's losses, by step."""

    def __init__(self) -> None:
        self.losses: dict[int, dict[str, float]] = {}

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        self.losses[step] = {k: float(v) for k, v in losses.items()}


def test_a_dcgan_trains_an_epoch_on_pngs_through_two_loader_workers_and_resumes_exactly(
    folder: Path, tmp_path: Path
) -> None:
    straight, stopped = StepLosses(), StepLosses()
    with plugin_manager(straight):
        result = engine.fit(run_config(folder, tmp_path, "straight", data={"random_crop": 56, "hflip": True}))
    steps = (640 - 64) // 32  # 576 training images, batch 32
    assert result.metrics["step"] == steps
    assert sorted(straight.losses) == list(range(steps))
    with plugin_manager(stopped):
        cut = engine.fit(
            run_config(folder, tmp_path, "resumed", data={"random_crop": 56, "hflip": True}, trainer={"max_steps": 7})
        )
        state = checkpoint.load(cut.checkpoint)
        assert (state["epoch"], state["batch_in_epoch"]) == (0, 7)  # the sampler position, mid-epoch
        engine.fit(run_config(folder, tmp_path, "resumed", data={"random_crop": 56, "hflip": True}))
    assert sorted(stopped.losses) == list(range(steps))
    assert stopped.losses == straight.losses  # the same batches, crops and flips: bit for bit


def test_the_streaming_path_sees_what_the_memory_path_sees(folder: Path, tmp_path: Path) -> None:
    runs = {}
    for loader, workers in (("memory", 0), ("dataloader", 0), ("dataloader", 2)):
        rec = StepLosses()
        with plugin_manager(rec):
            engine.fit(
                run_config(
                    folder,
                    tmp_path,
                    f"{loader}{workers}",
                    data={"loader": loader, "loader_workers": workers},
                    trainer={"max_steps": 4},
                )
            )
        runs[(loader, workers)] = rec.losses
    assert runs[("memory", 0)] == runs[("dataloader", 0)] == runs[("dataloader", 2)]


# The peak as VmHWM of the process's own memory: Linux carries ru_maxrss across exec, so a child's
# ru_maxrss would start at the size of the pytest process that forked it.
PEAK_RSS = """
import json, resource, sys
import engine
result = engine.fit(json.loads(sys.argv[1]))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"step": result.metrics["step"], "rss_mb": hwm / 1024,
                  "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


@pytest.mark.slow
def test_peak_rss_of_a_streamed_epoch_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    """One DCGAN epoch at 2,000 and 8,000 images (20,000 takes minutes to write here), each in its own process."""
    peaks = {}
    for n in (2000, 8000):
        root = tmp_path / f"n{n}"
        write_folder(root, n, 64, seed=n)
        config = run_config(root, tmp_path, f"rss{n}", trainer={"batch_size": 64})
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, json.dumps(config)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=600,
            check=True,
        )
        peaks[n] = json.loads(done.stdout.strip().splitlines()[-1])
        assert peaks[n]["step"] == (n - round(n * 0.1)) // 64
    growth = peaks[8000]["rss_mb"] - peaks[2000]["rss_mb"]
    # Held in memory, 6,000 more 64×64 RGB images would be 74 MB (twice that while split).
    assert growth < 25, peaks
    assert peaks[8000]["workers_mb"] - peaks[2000]["workers_mb"] < 25, peaks
    assert peaks[8000]["rss_mb"] < 1024, peaks


# ---------------------------------------------------------------------------
# Ray Data
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_workers_env() -> Any:
    """Every Ray worker loads ``ray_data_plugins`` (next to this file): ``indexed_folder`` and the recorder."""
    with pytest.MonkeyPatch.context() as mp:
        path = os.environ.get("PYTHONPATH")
        mp.setenv("PYTHONPATH", str(HERE) + (os.pathsep + path if path else ""))
        mp.syspath_prepend(str(HERE))
        mp.setenv("GENTRAIN_PLUGINS", "ray_data_plugins")
        mp.setenv("GENTRAIN_DISABLE_PLUGINS", "plots,tensorboard,sample_grids")
        yield engine.load_plugins()


def seen(run_dir: Path, rank: int) -> list[tuple[int, int, list[int]]]:
    path = run_dir / f"seen-rank{rank}.jsonl"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.ray
def test_ray_data_gives_each_worker_a_disjoint_shard_and_resumes(
    folder: Path, tmp_path: Path, ray_local: Any, ray_workers_env: Any
) -> None:
    config = run_config(
        folder,
        tmp_path,
        "ray",
        data={"name": "indexed_folder", "loader": "ray_data", "loader_workers": 0},
        trainer={"epochs": 2, "batch_size": 16, "max_steps": 22},
        scaling={"num_workers": 2, "max_failures": 0, "start_timeout_s": 300},
    )
    first = engine.fit(config, plugins=ray_workers_env)
    run_dir = first.run_dir
    per_rank = (576 // 2) // 16  # equal shards of the 576 training images, batch 16: 18 steps an epoch
    assert first.metrics["step"] == 22
    epoch0 = [sorted(i for e, _, idx in seen(run_dir, r) if e == 0 for i in idx) for r in (0, 1)]
    assert len(epoch0[0]) == len(epoch0[1]) == per_rank * 16
    assert not set(epoch0[0]) & set(epoch0[1])  # disjoint shards
    assert len(set(epoch0[0])) == len(epoch0[0])  # nothing twice within a shard
    val = set(range(640)) - set(epoch0[0]) - set(epoch0[1])
    assert len(val) == 64  # exactly the held-out images were never trained on (none lost to equal shards)
    # Resume: the stopped run continues at step 22 (epoch 1, batch 4) and ends at step 36.
    resumed = engine.fit({**config, "trainer": {**config["trainer"], "max_steps": None}}, plugins=ray_workers_env)
    assert resumed.metrics["step"] == 2 * per_rank
    for r in (0, 1):
        steps = [s for _, s, _ in seen(run_dir, r)]
        assert steps == list(range(2 * per_rank)), steps  # no step redone, none skipped
        assert {i for e, _, idx in seen(run_dir, r) for i in idx} <= set(range(640)) - val


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is visible here")
def test_on_a_gpu_streamed_batches_arrive_pinned_and_equal_to_the_cpu_ones(folder: Path) -> None:
    from engine.config import resolve
    from engine.data import DataLoaderAdapter, load_dataset, split

    pm = engine.load_plugins()
    data = resolve({"model": {"name": "gan"}, "data": {"name": "image_folder", "root": str(folder)}}, pm).data
    data = type(data)(**{**data.__dict__, "loader": "dataloader"})
    train, _ = split(load_dataset(data, pm), data)
    cpu = DataLoaderAdapter(train, 32, shuffle=True, num_workers=2)
    gpu = DataLoaderAdapter(train, 32, shuffle=True, num_workers=2, device=torch.device("cuda"))
    assert gpu.loader.pin_memory
    for (xc, yc), (xg, yg) in zip(cpu.iter_from(3), gpu.iter_from(3), strict=True):
        assert xg.device.type == "cuda"
        assert torch.equal(xc, xg.cpu())
        assert torch.equal(yc, yg.cpu())
