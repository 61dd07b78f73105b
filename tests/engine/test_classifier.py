"""The feature classifier you can trust: robust training, the second opinion, the agreement check, MNIST accuracy."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor

import engine
from engine import metrics
from engine.classifier import ClassifierPair, FeatureClassifier, _blur
from engine.data import split
from plugins.datasets.io import make_shapes

SHARED_MNIST = Path("/work/shared/data/mnist")
# Training four small classifiers takes seconds on a quiet machine and many minutes on a loaded one.
pytestmark = pytest.mark.timeout(1800)
ARGS = {"width": 8, "epochs": 15}


@pytest.fixture(scope="module")
def data() -> dict[str, Tensor]:
    images, labels, _ = make_shapes(1500, size=32, seed=0)
    held_images, held_labels, _ = make_shapes(300, size=32, seed=1)
    return {"images": images, "labels": labels, "held": held_images, "held_labels": held_labels}


@pytest.fixture(scope="module")
def pair(data: dict[str, Tensor], tmp_path_factory: pytest.TempPathFactory) -> ClassifierPair:
    cache = tmp_path_factory.mktemp("classifiers")
    return ClassifierPair.for_dataset("shapes-32", data["images"], data["labels"], 3, cache_dir=cache, **ARGS)


def test_the_pair_is_two_different_classifiers_cached_by_dataset_and_version(
    pair: ClassifierPair, data: dict[str, Tensor], tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert pair.main.arch == "cnn"
    assert pair.check_classifier.arch == "wide"
    assert pair.main.val_accuracy >= 0.9
    assert pair.check_classifier.val_accuracy >= 0.9
    assert FeatureClassifier.cache_path("shapes-32", "/c").name == f"shapes-32.v{metrics.VERSION}.pt"
    assert FeatureClassifier.cache_path("shapes-32", "/c", check=True).name == f"shapes-32.v{metrics.VERSION}-check.pt"


def test_real_images_pass_the_agreement_check_and_are_reported(pair: ClassifierPair, data: dict[str, Tensor]) -> None:
    report = metrics.sample_report(pair, data["held"], data["images"], data["held"][:150])
    assert report["reason"] is None
    assert report["classifier_disagreement"] <= 0.15
    for name in ("frechet", "kid", "classifier_score", "class_coverage"):
        assert math.isfinite(report[name]), name
    assert report["class_coverage"] == 1.0
    assert report["kid"] < 0.05


def test_samples_the_classifiers_disagree_on_are_withheld(
    pair: ClassifierPair, data: dict[str, Tensor], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A check classifier that learnt every class under the next one's name agrees on
    # balanced real images (the histogram is uniform either way) but not on one class.
    shifted = FeatureClassifier.for_dataset(
        "shifted", data["images"], (data["labels"] + 1) % 3, 3, cache_dir=tmp_path, arch="wide", **ARGS
    )
    rigged = ClassifierPair(pair.main, shifted)
    assert rigged.disagreement(data["held"]) <= 0.15
    one_class = data["held"][data["held_labels"] == 0]
    report = metrics.sample_report(rigged, one_class, data["images"], data["held"])
    assert report["classifier_disagreement"] > 0.8
    assert report["reason"] is not None
    assert "disagree" in report["reason"]
    for name in ("frechet", "kid", "classifier_score", "class_coverage"):
        assert math.isnan(report[name]), name
    assert "withheld" in caplog.text
    # The same samples with the honest pair: reported (and coverage shows the collapse).
    honest = metrics.sample_report(pair, one_class, data["images"], data["held"])
    assert honest["reason"] is None
    assert honest["class_coverage"] == pytest.approx(1 / 3)


def test_noisy_and_blurry_images_keep_their_class(pair: ClassifierPair, data: dict[str, Tensor]) -> None:
    held = data["held"].float() / 255
    gen = torch.Generator().manual_seed(3)
    noisy = (held + 0.1 * torch.randn(held.shape, generator=gen)).clamp(0, 1)
    blurry = _blur(held, torch.full((len(held),), 1.0))
    for clf in (pair.main, pair.check_classifier):
        assert metrics.class_accuracy(clf, noisy, data["held_labels"]) >= 0.85
        assert metrics.class_accuracy(clf, blurry, data["held_labels"]) >= 0.75


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 8, generator=gen), torch.randn(500, 8, generator=gen)
    assert abs(metrics.kernel_distance(a, b)) < 0.02
    assert metrics.kernel_distance(a, b + 1.0) > 0.5


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.timeout(3600)  # minutes on a quiet machine; far more on a loaded one
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not present at {SHARED_MNIST}")
def test_both_classifiers_reach_98_percent_on_held_out_mnist() -> None:
    """The classifiers of ``bench/quality.py`` (same split, key and settings), in the default cache.

    The first run trains them (a few minutes on a quiet machine); later runs and the
    bench load them: the cache is keyed by the dataset and the classifier version.
    """
    data = {"name": "mnist", "root": str(SHARED_MNIST), "split": "test", "val_fraction": 0.1, "split_seed": 0}
    config, dataset = engine.prepare({"model": {"name": "vae"}, "data": data})
    train, held = split(dataset, config.data)
    start = time.perf_counter()
    pair = ClassifierPair.for_dataset("mnist-test-split0-train9000", train.images, train.labels, 10)
    took = time.perf_counter() - start
    main_acc = metrics.class_accuracy(pair.main, held.images, held.labels)
    check_acc = metrics.class_accuracy(pair.check_classifier, held.images, held.labels)
    print(f"MNIST held-out accuracy: main {main_acc:.4f}, check {check_acc:.4f}; trained or loaded in {took:.0f} s")
    assert pair.main.val_accuracy >= 0.98
    assert main_acc >= 0.98
    assert check_acc >= 0.97
    assert pair.disagreement(held.images) <= 0.05


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not present at {SHARED_MNIST}")
def test_the_frechet_distance_of_real_mnist_rises_with_light_noise_and_blur() -> None:
    """Heusel et al.'s disturbance test on held-out MNIST against the 9,000 training images, in both classifiers'.

    Pixel noise of std 0.05 and a blur of σ=0.5 are lighter than the mistakes of a GAN's raw
    weights that an average of them removes: the distance must see them.
    """
    data = {"name": "mnist", "root": str(SHARED_MNIST), "split": "test", "val_fraction": 0.1, "split_seed": 0}
    config, dataset = engine.prepare({"model": {"name": "vae"}, "data": data})
    train, held = split(dataset, config.data)
    pair = ClassifierPair.for_dataset("mnist-test-split0-train9000", train.images, train.labels, 10)
    x = held.images.float() / 255
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    for clf in (pair.main, pair.check_classifier):
        ref = metrics.classifier_features(clf, train.images)

        def distance(images: Tensor, clf: FeatureClassifier = clf, ref: Tensor = ref) -> float:
            return metrics.frechet_distance(metrics.classifier_features(clf, images), ref)

        floor = distance(x)
        noisy = [distance((x + s * noise).clamp(0, 1)) / floor for s in (0.05, 0.1, 0.2)]
        blurry = [distance(_blur(x, torch.full((len(x),), s))) / floor for s in (0.5, 1.0, 1.5)]
        print(f"{clf.arch}: floor {floor:.3f}; noise 0.05/0.1/0.2 {noisy}; blur 0.5/1/1.5 {blurry} (× floor)")
        assert noisy == sorted(noisy)
        assert blurry == sorted(blurry)
        assert noisy[0] >= 1.8
        assert blurry[0] >= 10
