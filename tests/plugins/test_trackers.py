"""What a run keeps in its trackers: TensorBoard images, hparams and learning rates; MLflow and W&B offline."""

from __future__ import annotations

import glob
import importlib.util
import struct
import time
from pathlib import Path
from typing import Any

import pytest

import engine


def small(tmp_path: Path, name: str = "run", **sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"name": "vae", "hidden": [16], "latent_dim": 4},
        "data": {"name": "shapes", "n": 64, "size": 8, "val_fraction": 0.25},
        "trainer": {"epochs": 2, "batch_size": 16, "seed": 1},
        "run": {"output_dir": str(tmp_path), "name": name},
        "callbacks": {"progress": False, "tensorboard": False, "csv": False, "sample_every": 1, "num_samples": 4},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def test_tensorboard_holds_images_hparams_and_learning_rates(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = engine.fit(small(tmp_path, callbacks={"tensorboard": True}, optim={"scheduler": "cosine"}))
    trees = [p for p in result.run_dir.rglob("*") if p.is_dir() and list(p.glob("events.out.tfevents.*"))]
    assert trees == [result.run_dir / "tensorboard"]  # one event tree, no hparams sub-run folder
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"samples/samples", "samples/reconstructions"} <= set(tags["images"])
    assert [e.step for e in events.Images("samples/samples")] == [1, 2]
    assert any(t.startswith("lr/") for t in tags["scalars"]), tags["scalars"]
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["optim.lr"].number_value == pytest.approx(1e-3)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    assert "val/elbo" in {m.name.tag for m in experiment.experiment.metric_infos}


def test_mlflow_file_store_holds_params_metrics_and_the_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow is not installed (pip install 'gentrain[mlflow]')")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants it for a file: store
    uri = (tmp_path / "mlruns").as_uri()
    engine.fit(small(tmp_path, mlflow={"enabled": True, "tracking_uri": uri, "experiment": "tests"}))
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tests")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "run"
    assert run.data.params["optim.lr"] == "0.001"
    assert run.data.params["model.name"] == "vae"
    history = client.get_metric_history(run.info.run_id, "val/elbo")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert "samples/epoch=0002-samples.png" in artifacts
    assert "samples/epoch=0002-reconstructions.png" in artifacts


def wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file (``run-<id>.wandb``: W&B's header, then LevelDB-log blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    pos, block, chunk, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            out.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return out


def test_wandb_offline_run_holds_metrics_and_the_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("wandb") is None:
        pytest.skip("wandb is not installed (pip install 'gentrain[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    result = engine.fit(small(tmp_path, wandb={"enabled": True, "project": "tests"}))
    (run_file,) = glob.glob(str(result.run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    # W&B's service process may still be writing the file when finish() returns: wait for its exit record.
    deadline = time.monotonic() + 60
    records = wandb_records(Path(run_file))
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.5)
        records = wandb_records(Path(run_file))
    history = []
    config: dict[str, str] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
        elif kind == "run":
            config.update({item.key: item.value_json for item in record.run.config.update})
    losses = [(h["_step"], h["val/elbo"]) for h in history if "val/elbo" in h]
    assert [step for step, _ in losses] == ["1", "2"]
    assert any(h.get("samples/samples/_type") == '"image-file"' for h in history), history
    images = list((Path(run_file).parent / "files" / "media" / "images" / "samples").glob("samples_*.png"))
    assert len(images) == 2
    if config:  # the config as the run record carried it
        assert "optim.lr" in config


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_fails_before_training(
    tracker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real(name, *a))
    with pytest.raises(engine.ConfigError, match=rf"{tracker}.*pip install 'gentrain\[{tracker}\]'"):
        engine.fit(small(tmp_path, **{tracker: {"enabled": True}}))
    assert not (tmp_path / "run").exists()
