"""Tests of engine.metrics against closed forms and on real (procedural) images.

The likelihood bounds are checked on a linear-Gaussian model whose exact
``-log p(x)`` is known; the Fréchet distance against closed forms for
Gaussians; the feature classifier is trained on the ``shapes`` dataset.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from engine import metrics
from engine.classifier import _blur
from engine.metrics import FeatureClassifier
from plugins.datasets.io import make_shapes


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Two cores shared with other jobs: one thread is faster than contending for both.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- likelihood bounds


class LinearGaussian(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, I), with a deliberately imperfect diagonal q(z|x).

    The marginal is exact: p(x) = N(b, W Wᵀ + I). q's mean is 0.7× the true
    posterior mean and its variances are the true marginal posterior variances ×1.35,
    so the ELBO is loose and the IWAE bound has room to tighten.
    """

    post_cov: Tensor

    def __init__(self, d: int = 4, latent: int = 2, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(d, latent, generator=gen, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(d, generator=gen, dtype=torch.float64))
        self.d = d
        post_cov = torch.linalg.inv(torch.eye(latent, dtype=torch.float64) + self.w.T @ self.w)
        self.register_buffer("post_cov", post_cov.detach())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        exact_mean = (x - self.b) @ self.w @ self.post_cov  # post_cov is symmetric
        logvar = torch.log(torch.diagonal(self.post_cov) * 1.35).expand_as(exact_mean)
        return 0.7 * exact_mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        return (z @ self.w.T + self.b).view(-1, 1, 1, self.d)

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        return -0.5 * (x - decoded).pow(2).flatten(1).sum(1) - 0.5 * self.d * math.log(2 * math.pi)

    @torch.no_grad()
    def exact_nll(self, x: Tensor) -> float:
        cov = self.w @ self.w.T + torch.eye(self.d, dtype=torch.float64)
        dist = torch.distributions.MultivariateNormal(self.b, covariance_matrix=cov)
        return float(-dist.log_prob(x.flatten(1)).mean())


@pytest.fixture(scope="module")
def linear_gaussian() -> tuple[LinearGaussian, Tensor]:
    model = LinearGaussian()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        z = torch.randn(300, 2, generator=gen, dtype=torch.float64)
        x = model.decode(z) + torch.randn(300, 1, 1, 4, generator=gen, dtype=torch.float64)
    return model, x


def test_iwae_with_k1_equals_the_elbo_in_expectation(linear_gaussian: tuple[LinearGaussian, Tensor]) -> None:
    model, x = linear_gaussian
    # Many repetitions of the same images: only the sampling noise differs.
    reps = x.repeat(20, 1, 1, 1)
    iwae1 = metrics.iwae_bound(model, reps, k=1, seed=1)
    neg_elbo = metrics.elbo(model, reps, samples=4, seed=2)
    true_nll = model.exact_nll(x)
    assert iwae1 == pytest.approx(neg_elbo, abs=0.03)
    assert neg_elbo > true_nll + 0.05, "q is imperfect, so the ELBO must be visibly loose"


def test_iwae_tightens_with_k_towards_the_exact_likelihood(linear_gaussian: tuple[LinearGaussian, Tensor]) -> None:
    model, x = linear_gaussian
    true_nll = model.exact_nll(x)
    neg_elbo = metrics.elbo(model, x, samples=64)
    bounds = {k: metrics.iwae_bound(model, x, k=k, seed=k) for k in (1, 5, 50, 2000)}
    assert all(math.isfinite(v) for v in bounds.values())
    assert bounds[50] <= neg_elbo + 0.01
    assert bounds[2000] <= bounds[50] <= bounds[5] <= bounds[1] + 0.05
    # The bound converges to -log p(x) from above.
    assert true_nll - 0.005 <= bounds[2000] <= true_nll + 0.02
    assert bounds[50] - true_nll < 0.25 * (neg_elbo - true_nll)


def test_iwae_batches_and_chunks_do_not_change_the_value(linear_gaussian: tuple[LinearGaussian, Tensor]) -> None:
    model, x = linear_gaussian
    one = metrics.iwae_bound(model, x[:40], k=30, batch_size=40, seed=3)
    # Same noise stream, consumed in a different order: equal only in distribution.
    other = metrics.iwae_bound(model, x[:40], k=30, batch_size=7, max_decode=50, seed=3)
    assert one == pytest.approx(other, abs=0.1)


def test_likelihood_bounds_need_a_gaussian_encoder() -> None:
    class Deterministic(nn.Module):
        def encode(self, x: Tensor) -> Tensor:
            return x.flatten(1)

        def decode(self, z: Tensor) -> Tensor:
            return z

        def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
            return torch.zeros(len(x))

    with pytest.raises(TypeError, match=r"\(mu, logvar\)"):
        metrics.iwae_bound(Deterministic(), torch.rand(3, 1, 2, 2), k=2)  # type: ignore[arg-type]


def test_reconstruction_error_is_the_per_image_squared_error() -> None:
    class Blank(nn.Module):
        def reconstruct(self, x: Tensor) -> Tensor:
            return torch.zeros_like(x)

    images = (torch.rand(10, 1, 4, 4) * 255).to(torch.uint8)
    expected = (images.float() / 255).pow(2).flatten(1).sum(1).mean()
    assert metrics.reconstruction_error(Blank(), images, batch_size=3) == pytest.approx(float(expected), rel=1e-6)


# --------------------------------------------------------------------------- Fréchet distance


def exact_moments(n: int, mean: Tensor, std: Tensor, seed: int = 0) -> Tensor:
    """``n`` samples whose sample mean is ``mean`` and sample covariance ``diag(std²)``, exactly."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(torch.cov(z.T))
    z = torch.linalg.solve_triangular(chol, z.T, upper=False).T  # now cov(z) = I
    return mean + z * std


def test_frechet_distance_is_zero_for_identical_sets() -> None:
    a = torch.randn(400, 16) @ torch.randn(16, 16)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6 * float(a.var(0).sum()))
    assert metrics.frechet_distance(a, a.clone().numpy()) == pytest.approx(0.0, abs=1e-6 * float(a.var(0).sum()))


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    f64 = torch.float64
    m1, s1 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=f64), torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=f64)
    m2, s2 = torch.tensor([1.0, 1.0, 0.0, 0.5], dtype=f64), torch.tensor([2.0, 0.5, 1.0, 0.1], dtype=f64)
    a = exact_moments(300, m1, s1, seed=0)
    b = exact_moments(500, m2, s2, seed=1)
    # W2² of diagonal Gaussians: ‖m1 - m2‖² + Σ (s1 - s2)².
    expected = float((m1 - m2).pow(2).sum() + (s1 - s2).pow(2).sum())
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_the_closed_form_for_non_commuting_covariances() -> None:
    # For 2×2 matrices with positive eigenvalues, tr √M = √(tr M + 2 √det M).
    c1 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    product = c1 @ c2
    tr_sqrt = math.sqrt(float(product.trace()) + 2 * math.sqrt(float(torch.linalg.det(product))))
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([3.0, -1.0])
    expected = 13.0 + float(c1.trace() + c2.trace()) - 2 * tr_sqrt
    assert metrics.frechet_distance_from_stats(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------------- the feature classifier


@pytest.fixture(scope="module")
def shapes_data() -> dict[str, Tensor]:
    images, labels, _ = make_shapes(1800, size=32, seed=0)
    held_images, held_labels, _ = make_shapes(400, size=32, seed=1)
    return {"images": images, "labels": labels, "held_images": held_images, "held_labels": held_labels}


CLASSIFIER_ARGS: dict[str, Any] = {"width": 8, "feature_dim": 32, "epochs": 15, "batch_size": 64, "lr": 3e-3}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("classifiers")


@pytest.fixture(scope="module")
def classifier(shapes_data: dict[str, Tensor], cache_dir: Path) -> FeatureClassifier:
    return FeatureClassifier.for_dataset(
        "shapes-32", shapes_data["images"], shapes_data["labels"], 3, cache_dir=cache_dir, **CLASSIFIER_ARGS
    )


def test_feature_classifier_learns_the_shape_classes(
    classifier: FeatureClassifier, shapes_data: dict[str, Tensor]
) -> None:
    acc = metrics.class_accuracy(classifier, shapes_data["held_images"], shapes_data["held_labels"])
    assert acc >= 0.9
    assert classifier.val_accuracy >= 0.85
    # Wrong labels are recognised as wrong: about one in three matches by chance.
    shifted = (shapes_data["held_labels"] + 1) % 3
    assert metrics.class_accuracy(classifier, shapes_data["held_images"], shifted) <= 0.1


def test_feature_classifier_is_cached_and_loads_with_weights_only(
    classifier: FeatureClassifier,
    shapes_data: dict[str, Tensor],
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = cache_dir
    path = FeatureClassifier.cache_path("shapes-32", cache)
    state = torch.load(path, weights_only=True)
    assert set(state) >= {"state_dict", "fingerprint", "settings", "shape", "num_classes"}

    calls: list[int] = []

    def fake_fit(self: FeatureClassifier, *args: Any, **kwargs: Any) -> float:
        calls.append(1)
        return 0.0

    monkeypatch.setattr(FeatureClassifier, "fit", fake_fit)
    again = FeatureClassifier.for_dataset(
        "shapes-32", shapes_data["images"], shapes_data["labels"], 3, cache_dir=cache, **CLASSIFIER_ARGS
    )
    assert calls == []  # loaded, not trained
    x = shapes_data["held_images"][:50]
    assert torch.equal(metrics.classifier_features(again, x), metrics.classifier_features(classifier, x))

    # The same key for other data is a stale cache entry: it is trained again.
    FeatureClassifier.for_dataset(
        "shapes-32", shapes_data["images"][:100], shapes_data["labels"][:100], 3, cache_dir=cache, **CLASSIFIER_ARGS
    )
    assert calls == [1]


def test_classifier_score_is_high_for_varied_real_images_and_one_for_a_single_class(
    classifier: FeatureClassifier, shapes_data: dict[str, Tensor]
) -> None:
    held, labels = shapes_data["held_images"], shapes_data["held_labels"]
    varied = metrics.classifier_score(classifier, held)
    single = metrics.classifier_score(classifier, held[labels == 0])
    assert 2.2 <= varied <= 3.0
    assert 1.0 <= single <= 1.3
    assert metrics.classifier_score(classifier, held, splits=4) == pytest.approx(varied, rel=0.1)


def test_real_data_floor_is_far_below_the_distance_of_corrupted_images(
    classifier: FeatureClassifier, shapes_data: dict[str, Tensor]
) -> None:
    train, held = shapes_data["images"], shapes_data["held_images"]
    floor = metrics.real_data_floor(classifier, train, held, n=400)
    gen = torch.Generator().manual_seed(0)
    noisy = (held.float() / 255 + 0.3 * torch.randn(held.shape, generator=gen)).clamp(0, 1)
    report = metrics.frechet_report(classifier, noisy, train, held)
    assert report["n"] == 400
    assert report["frechet_real_floor"] == pytest.approx(floor)
    assert 0 < floor < 0.1 * report["frechet"]


def test_classifier_features_are_every_tapped_layer_at_unit_scale(
    classifier: FeatureClassifier, shapes_data: dict[str, Tensor]
) -> None:
    feats = metrics.classifier_features(classifier, shapes_data["held_images"][:10], batch_size=4)
    # Two tapped conv blocks (width, 2·width channels; mean and max of each) and the penultimate layer.
    width, dim = CLASSIFIER_ARGS["width"], CLASSIFIER_ARGS["feature_dim"]
    assert classifier.distance_dim == 2 * (width + 2 * width) + dim
    assert feats.shape == (10, classifier.distance_dim)
    # The penultimate layer is the last block of the distance features, at its own scale.
    x = shapes_data["held_images"][:10].float() / 255
    with torch.no_grad():
        penultimate = classifier.features(x) / classifier.layer_scale[-1] - classifier.feature_center[-dim:]
    torch.testing.assert_close(feats[:, -dim:], penultimate)
    # fit() scaled each layer to unit root mean variance, and centred the whole, on its training images.
    train = metrics.classifier_features(classifier, shapes_data["images"][:1500]).double()
    bounds = [0, 2 * width, 2 * width + 4 * width, classifier.distance_dim]
    for lo, hi in itertools.pairwise(bounds):
        assert float(train[:, lo:hi].var(0).mean().sqrt()) == pytest.approx(1.0, rel=0.1)
    assert float(train.mean(0).abs().max()) < 0.2


def test_frechet_distance_rises_with_noise_and_blur_from_the_first_light_touch(
    classifier: FeatureClassifier, shapes_data: dict[str, Tensor]
) -> None:
    """Heusel et al.'s disturbance test: the distance to the training images grows with each disturbance's strength."""
    train, held = shapes_data["images"], shapes_data["held_images"].float() / 255
    ref = metrics.classifier_features(classifier, train[:1200])

    def distance(images: Tensor) -> float:
        return metrics.frechet_distance(metrics.classifier_features(classifier, images), ref)

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(held.shape, generator=gen)
    floor = distance(held)
    noisy = [distance((held + s * noise).clamp(0, 1)) for s in (0.05, 0.1, 0.2)]
    blurry = [distance(_blur(held, torch.full((len(held),), s))) for s in (0.5, 1.0, 1.5)]
    assert noisy == sorted(noisy), (floor, noisy)
    assert blurry == sorted(blurry), (floor, blurry)
    # Light noise is already visible above the floor, where the penultimate layer alone barely moves.
    assert noisy[0] >= 1.5 * floor, (floor, noisy)
    assert blurry[0] >= 3 * floor, (floor, blurry)
    with pytest.raises(ValueError, match="trained on"):
        metrics.classifier_features(classifier, torch.rand(2, 3, 32, 32))
