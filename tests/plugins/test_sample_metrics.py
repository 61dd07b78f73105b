"""The sample_metrics trainer plugin: val/frechet & co. in metrics.csv, Tune from config alone, the withholding."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.plugins import load_plugins

NAMES = ["frechet", "kid", "classifier_score", "class_coverage"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("classifiers")


def tiny(out: Path, name: str, cache: Path, *, model: dict[str, Any] | None = None, **callbacks: Any) -> dict[str, Any]:
    return {
        "model": {"name": "gan", "arch": "mlp", "hidden": 32, "depth": 1, "latent_dim": 8, **(model or {})},
        "data": {"name": "shapes", "n": 512, "size": 16, "val_fraction": 0.1},
        "trainer": {"epochs": 1, "batch_size": 32, "seed": 0, "num_threads": 1},
        "scaling": {"num_workers": 0},
        "run": {"name": name, "output_dir": str(out)},
        "callbacks": {
            "progress": False,
            "tensorboard": False,
            "sample_every": 0,
            "sample_metrics": NAMES,
            "sample_metrics_n": 128,
            "sample_metrics_classifier_epochs": 3,
            "sample_metrics_cache": str(cache),
            **callbacks,
        },
    }


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))


def test_sample_metrics_appear_in_metrics_csv(tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    # max_disagreement=1: report whatever the classifiers say (a 1-epoch GAN makes blobs they disagree on).
    result = engine.fit(tiny(tmp_path, "csv", cache, sample_metrics_max_disagreement=1.0))
    rows = csv_rows(result.run_dir)
    for name in [*NAMES, "classifier_disagreement"]:
        assert f"val/{name}" in rows[-1], sorted(rows[-1])
        assert math.isfinite(float(rows[-1][f"val/{name}"])), name
    assert result.metrics["val/frechet"] > 0
    assert "real-data floor" in caplog.text


def test_disagreeing_classifiers_withhold_the_figures(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check itself is tested on rigged classifiers in tests/engine/test_classifier.py; here the pair
    # is made to disagree at any total variation, and the plugin must withhold every figure.
    from engine.classifier import ClassifierPair

    original = ClassifierPair.reason
    monkeypatch.setattr(ClassifierPair, "reason", lambda self, tv: original(self, tv + 10.0))
    result = engine.fit(tiny(tmp_path, "strict", cache))
    assert math.isfinite(result.metrics["val/classifier_disagreement"])
    for name in NAMES:
        assert math.isnan(result.metrics[f"val/{name}"]), name
    assert "withheld" in caplog.text
    rows = csv_rows(result.run_dir)
    assert rows[-1]["val/frechet"].lower() == "nan"


def test_a_conditional_gan_reports_label_accuracy(tmp_path: Path, cache: Path) -> None:
    result = engine.fit(
        tiny(
            tmp_path,
            "cond",
            cache,
            model={"conditional": True},
            sample_metrics=["frechet"],
            sample_metrics_max_disagreement=1.0,
        )
    )
    assert 0.0 <= result.metrics["val/label_accuracy"] <= 1.0
    assert "val/kid" not in result.metrics


def test_off_by_default(tmp_path: Path, cache: Path) -> None:
    config = tiny(tmp_path, "off", cache)
    del config["callbacks"]["sample_metrics"]
    assert not any(k.startswith("val/frechet") for k in engine.fit(config).metrics)


def test_unknown_metric_name_is_a_config_error(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(engine.ConfigError, match=r"callbacks\.sample_metrics"):
        engine.fit(tiny(tmp_path, "bad", cache, sample_metrics=["frechett"]))


@pytest.mark.ray
def test_tune_metric_val_frechet_works_from_config_alone(
    tmp_path: Path, cache: Path, ray_local: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    monkeypatch.setenv("GENTRAIN_DISABLE_PLUGINS", "plots,tensorboard,sample_grids")
    config = tiny(tmp_path, "tune", cache, sample_metrics_max_disagreement=1.0)
    config["tune"] = {"metric": "val/frechet", "mode": "min", "num_samples": 1, "scheduler": "none"}
    result = engine.tune(config, {"optim.lr": tune.grid_search([1e-3, 3e-4])}, verbose=0, plugins=load_plugins())
    assert len(result.trials) == 2
    assert all(t.error is None for t in result.trials), [t.error for t in result.trials]
    for trial in result.trials:
        assert trial.metric is not None, trial
        assert math.isfinite(trial.metric), trial
        assert "val/frechet" in csv_rows(trial.run_dir)[-1]
    assert result.best is not None
