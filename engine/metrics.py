"""Evaluation metrics: likelihood bounds, reconstruction error, classifier-based Fréchet distance.

Likelihood (nats per image, lower is better), for any model exposing a
Gaussian encoder ``encode(x) -> (mu, logvar)``, ``decode(z)`` and
``log_likelihood(x, decoded) -> log p(x|z)`` per image (the VAE plugin does):

* :func:`elbo` – the negative ELBO, ``E_q[-log p(x|z)] + KL(q(z|x) ‖ N(0, I))``;
* :func:`iwae_bound` – the importance-weighted bound of Burda et al. (2016),
  ``-log (1/k) Σ_i p(x, z_i) / q(z_i|x)``, which tightens towards ``-log p(x)``
  as ``k`` grows (``k = 1`` is the ELBO).

Reconstruction: :func:`reconstruction_error` for anything with ``reconstruct(x)``.

Sample quality, with a small CNN trained on the dataset's labels in place of
Inception (:class:`FeatureClassifier`, cached on disk):

* :func:`frechet_distance` between two sets of the classifier's distance features
  (:func:`classifier_features`: several layers, each at unit scale);
* :func:`real_data_floor` – the same distance between held-out and training
  images at the same sample size. Fréchet distances are biased upwards at
  small sample sizes and a small classifier's features are not Inception's,
  so a model's figure means little alone: report it next to this floor
  (:func:`frechet_report` returns both);
* :func:`kernel_distance` – KID, the unbiased kernel MMD² of the same features;
* :func:`classifier_score` – the Inception-score analogue ``exp E_x KL(p(y|x) ‖ p(y))``;
* :func:`class_coverage` – the share of classes the samples represent;
* :func:`class_accuracy` – whether class-conditional samples are of their class;
  :func:`within_class_spread` – how varied they are within a class.

The classifiers live in :mod:`engine.classifier` (re-exported here): trained
with noise/blur augmentation and checked against a second, independently
trained classifier. :func:`sample_figures` and :func:`sample_report` compute
the sample metrics only when the two agree on the samples' class histogram
(total variation ≤ 0.15); otherwise every figure is NaN and the reason is
returned and logged, never a figure one classifier alone vouches for.

Every function puts the model in eval mode under ``torch.no_grad`` (and
restores its mode), accepts ``uint8`` or float images ``N×C×H×W`` and is
deterministic for a given ``seed``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from engine.classifier import (
    MAX_DISAGREEMENT,
    VERSION,
    ClassifierPair,
    FeatureClassifier,
    _batches,
    _check_images,
    _device_of,
    _evaluating,
    augment,
    class_accuracy,
    class_histogram,
    classifier_features,
    classifier_score,
    default_cache_dir,
    histogram_disagreement,
    histogram_of,
    log_probs,
    score_from_log_probs,
)

log = logging.getLogger(__name__)

_LOG_2PI = math.log(2 * math.pi)

__all__ = [
    "MAX_DISAGREEMENT",
    "SAMPLE_METRICS",
    "VERSION",
    "ClassifierPair",
    "FeatureClassifier",
    "GaussianLatentModel",
    "augment",
    "class_accuracy",
    "class_coverage",
    "class_histogram",
    "classifier_features",
    "classifier_score",
    "default_cache_dir",
    "elbo",
    "frechet_distance",
    "frechet_distance_from_stats",
    "frechet_report",
    "histogram_disagreement",
    "iwae_bound",
    "kernel_distance",
    "load_reference",
    "log_probs",
    "real_data_floor",
    "reconstruction_error",
    "sample_figures",
    "sample_report",
    "within_class_spread",
]


class GaussianLatentModel(Protocol):
    """What :func:`elbo` and :func:`iwae_bound` need of a model."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of q(z|x), each ``N×L``."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output for latents ``z`` (whatever :meth:`log_likelihood` takes)."""
        ...

    def log_likelihood(self, x: Tensor, decoded: Tensor) -> Tensor:
        """``log p(x|z)`` per image, shape ``N``, normalising constants included."""
        ...


def _gaussian_encode(model: GaussianLatentModel, x: Tensor) -> tuple[Tensor, Tensor]:
    out = model.encode(x)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"{type(model).__name__}.encode(x) must return (mu, logvar) of a Gaussian q(z|x) for likelihood "
            f"bounds; it returned {type(out).__name__}"
        )
    return out


# ---------------------------------------------------------------------------
# reconstruction and likelihood bounds
# ---------------------------------------------------------------------------


def reconstruction_error(model: Any, images: Tensor, batch_size: int = 256) -> float:
    """Squared error of ``model.reconstruct(x)`` summed over pixels, averaged over images."""
    _check_images(images)
    device = _device_of(model)
    total = 0.0
    with _evaluating(model):
        for x in _batches(images, batch_size, device):
            total += float((model.reconstruct(x).float() - x).pow(2).flatten(1).sum(1).double().sum())
    return total / len(images)


def elbo(model: GaussianLatentModel, images: Tensor, batch_size: int = 256, samples: int = 1, seed: int = 0) -> float:
    """The negative ELBO in nats per image (lower is better): an upper bound on ``-log p(x)``.

    ``E_q[-log p(x|z)]`` is estimated with ``samples`` draws of z per image;
    the KL to the N(0, I) prior is analytic.
    """
    _check_images(images)
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    device = _device_of(model)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    with _evaluating(model):
        for x in _batches(images, batch_size, device):
            mu, logvar = _gaussian_encode(model, x)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
            nll = torch.zeros_like(kl)
            for _ in range(samples):
                eps = torch.randn(mu.shape, generator=gen).to(device, mu.dtype)
                z = mu + torch.exp(0.5 * logvar) * eps
                nll -= model.log_likelihood(x, model.decode(z))
            total += float((nll / samples + kl).double().sum())
    return total / len(images)


def iwae_bound(
    model: GaussianLatentModel,
    images: Tensor,
    k: int = 50,
    batch_size: int = 128,
    seed: int = 0,
    max_decode: int = 8192,
) -> float:
    """The importance-weighted bound ``-E log (1/k) Σ_i p(x, z_i)/q(z_i|x)`` in nats per image.

    An upper bound on ``-log p(x)`` that decreases towards it as ``k`` grows;
    ``k = 1`` is the negative ELBO in expectation (Burda, Grosse & Salakhutdinov 2016).
    The log-weights are combined with ``logsumexp``; ``batch_size`` images are
    encoded at once and at most ``max_decode`` latents are decoded at once.
    """
    _check_images(images)
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    device = _device_of(model)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    with _evaluating(model):
        for x in _batches(images, batch_size, device):
            n = x.shape[0]
            mu, logvar = _gaussian_encode(model, x)
            std = torch.exp(0.5 * logvar)
            chunk = max(1, max_decode // n)
            log_w = []
            for start in range(0, k, chunk):
                kc = min(chunk, k - start)
                eps = torch.randn((kc, *mu.shape), generator=gen).to(device, mu.dtype)
                z = mu + std * eps  # kc × n × L
                # log q(z|x) and log p(z): with z = mu + std·eps, (z - mu)/std is eps.
                log_q = -0.5 * (eps.pow(2) + logvar + _LOG_2PI).sum(-1)
                log_p = -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)
                xs = x.expand(kc, *x.shape).reshape(kc * n, *x.shape[1:])
                ll = model.log_likelihood(xs, model.decode(z.reshape(kc * n, -1))).view(kc, n)
                log_w.append((ll + log_p - log_q).double())
            log_px = torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)
            total += float(-log_px.sum())
    return total / len(images)


# ---------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------


def _as_float64(a: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(a).detach().to("cpu", torch.float64)


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance_from_stats(
    mu1: Tensor | np.ndarray, cov1: Tensor | np.ndarray, mu2: Tensor | np.ndarray, cov2: Tensor | np.ndarray
) -> float:
    """``‖mu1 - mu2‖² + tr(C1) + tr(C2) - 2 tr((C1 C2)^½)``: the Fréchet (2-Wasserstein) distance of two Gaussians.

    ``tr((C1 C2)^½)`` is computed as ``tr((S C2 S)^½)`` with ``S = C1^½``: the
    two have the same eigenvalues, and ``S C2 S`` is symmetric positive
    semi-definite, so symmetric eigendecompositions (``eigh``, float64) suffice
    where the non-symmetric ``C1 C2`` would need a general matrix square root.
    """
    m1, m2, c1, c2 = (_as_float64(t) for t in (mu1, mu2, cov1, cov2))
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != (m1.numel(), m1.numel()):
        raise ValueError(
            f"mismatched statistics: means {tuple(m1.shape)}, {tuple(m2.shape)}; "
            f"covariances {tuple(c1.shape)}, {tuple(c2.shape)}"
        )
    s = _sqrtm_psd(c1)
    product = s @ c2 @ s
    tr_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp(min=0).sqrt().sum()
    diff = m1 - m2
    value = float(diff @ diff + c1.trace() + c2.trace() - 2 * tr_sqrt)
    # Rounding can leave identical distributions a hair below zero.
    return max(value, 0.0)


def frechet_distance(feats_a: Tensor | np.ndarray, feats_b: Tensor | np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted (mean, unbiased covariance) to two feature sets ``N×D``."""
    a, b = _as_float64(feats_a), _as_float64(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be N×D with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least 2 samples for a covariance")
    return frechet_distance_from_stats(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))


def _pick(images: Tensor, n: int, gen: torch.Generator) -> Tensor:
    return images[torch.randperm(len(images), generator=gen)[:n]]


def real_data_floor(
    classifier: FeatureClassifier,
    train_images: Tensor,
    heldout_images: Tensor,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Fréchet distance between ``n`` held-out real images and ``n`` training images.

    What a perfect model would score against the same ``n`` training images:
    the floor a model's figure (at the same ``n``) should be read against.
    ``n`` defaults to the number of held-out images.
    """
    n = len(heldout_images) if n is None else n
    if n < 2 or n > len(heldout_images) or n > len(train_images):
        raise ValueError(
            f"n={n} must be between 2 and the number of held-out ({len(heldout_images)}) "
            f"and training ({len(train_images)}) images"
        )
    gen = torch.Generator().manual_seed(seed)
    train = classifier_features(classifier, _pick(train_images, n, gen), batch_size)
    held = classifier_features(classifier, _pick(heldout_images, n, gen), batch_size)
    return frechet_distance(held, train)


def frechet_report(
    classifier: FeatureClassifier,
    generated: Tensor,
    train_images: Tensor,
    heldout_images: Tensor,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """A model's Fréchet distance next to the real-data floor, both at the same sample size.

    ``n = min(len(generated), len(heldout_images), len(train_images))``; the
    same ``n`` training images are the reference of both figures. Returns
    ``{"frechet": ..., "frechet_real_floor": ..., "n": n}``.
    """
    n = min(len(generated), len(heldout_images), len(train_images))
    if n < 2:
        raise ValueError(f"need at least 2 images in each set, got n={n}")
    gen = torch.Generator().manual_seed(seed)
    train = classifier_features(classifier, _pick(train_images, n, gen), batch_size)
    held = classifier_features(classifier, _pick(heldout_images, n, gen), batch_size)
    fake = classifier_features(classifier, _pick(generated, n, gen), batch_size)
    return {
        "frechet": frechet_distance(fake, train),
        "frechet_real_floor": frechet_distance(held, train),
        "n": float(n),
    }


# ---------------------------------------------------------------------------
# KID, class coverage, spread within classes
# ---------------------------------------------------------------------------


def kernel_distance(
    feats_a: Tensor | np.ndarray,
    feats_b: Tensor | np.ndarray,
    subsets: int = 10,
    subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """KID: the unbiased squared MMD of two feature sets under the kernel ``(a·b/D + 1)³`` (Bińkowski et al. 2018).

    Averaged over ``subsets`` random subsets of ``min(subset_size, N_a, N_b)``
    features of each set. Unbiased: about 0 (it can be slightly negative) for
    two samples of one distribution, whatever the sample size, which is why it
    is read more easily than the Fréchet distance at small ``N``.
    """
    a, b = _as_float64(feats_a), _as_float64(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be N×D with the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("each feature set needs at least 2 samples")
    d = a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = m * (m - 1)
        values.append(float((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum()) / off))
        values[-1] -= float(2 * kxy.mean())
    return float(np.mean(values))


def class_coverage(histogram: Tensor, real_histogram: Tensor | None = None) -> float:
    """The fraction of classes that receive at least half their real share of the samples.

    1.0: every class is represented; ``1/K``: the samples are of one class (mode
    collapse). ``real_histogram`` defaults to uniform classes.
    """
    h = histogram.double()
    real = torch.full_like(h, 1.0 / len(h)) if real_histogram is None else real_histogram.double()
    present = real > 0
    return float(((h >= 0.5 * real) & present).double().sum() / present.double().sum())


def within_class_spread(features: Tensor, labels: Tensor, num_classes: int) -> float:
    """Mean squared distance of features to their class's mean, averaged over the classes present.

    For conditional samples (``labels``: the classes asked for) next to the same
    figure of real images: well below the real one means each class is a few
    prototypes, not the class's variety.
    """
    f = _as_float64(features)
    spreads = []
    for k in range(num_classes):
        part = f[labels.cpu() == k]
        if len(part) >= 2:
            spreads.append(float((part - part.mean(0)).pow(2).sum(1).mean()))
    if not spreads:
        raise ValueError("no class has 2 or more samples")
    return float(np.mean(spreads))


# ---------------------------------------------------------------------------
# sample metrics behind the agreement check
# ---------------------------------------------------------------------------

#: What :func:`sample_figures` can compute; ``label_accuracy`` only for class-conditional samples.
SAMPLE_METRICS = ("frechet", "kid", "classifier_score", "class_coverage", "label_accuracy")


def sample_figures(
    pair: ClassifierPair,
    fake_features: Tensor,
    fake_log_probs: Tensor,
    check_log_probs: Tensor,
    reference_features: Tensor,
    *,
    names: tuple[str, ...] | list[str] = SAMPLE_METRICS,
    labels: Tensor | None = None,
    real_histogram: Tensor | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], str | None]:
    """Sample metrics from what the two classifiers said about the same generated images.

    :param fake_features: the feature classifier's features of the samples.
    :param fake_log_probs: its ``log p(y|x)``; ``check_log_probs`` the check classifier's.
    :param reference_features: features of real (training) images, the reference of
        ``frechet`` and ``kid``.
    :param labels: the classes the samples were drawn for (conditional models): adds
        ``label_accuracy``.
    :returns: ``({name: value, "classifier_disagreement": tv}, reason)``. When the two
        classifiers' class histograms differ by more than ``pair.max_disagreement``
        (total variation), every requested figure is NaN and ``reason`` says why;
        otherwise ``reason`` is None.
    """
    unknown = sorted(set(names) - set(SAMPLE_METRICS))
    if unknown:
        raise ValueError(f"unknown sample metrics {unknown}; known: {', '.join(SAMPLE_METRICS)}")
    tv = histogram_disagreement(histogram_of(fake_log_probs), histogram_of(check_log_probs))
    reason = pair.reason(tv)
    out: dict[str, float] = {"classifier_disagreement": tv}
    for name in names:
        if name == "label_accuracy" and labels is None:
            continue
        if reason is not None:
            out[name] = math.nan
        elif name == "frechet":
            out[name] = frechet_distance(fake_features, reference_features)
        elif name == "kid":
            out[name] = kernel_distance(fake_features, reference_features, seed=seed)
        elif name == "classifier_score":
            out[name] = score_from_log_probs(fake_log_probs)
        elif name == "class_coverage":
            out[name] = class_coverage(histogram_of(fake_log_probs), real_histogram)
        else:
            assert labels is not None
            out[name] = float((fake_log_probs.argmax(1) == labels.cpu()).double().mean())
    return out, reason


def sample_report(
    pair: ClassifierPair,
    generated: Tensor,
    train_images: Tensor,
    heldout_images: Tensor,
    *,
    labels: Tensor | None = None,
    names: tuple[str, ...] | list[str] = SAMPLE_METRICS,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """:func:`sample_figures` of ``generated`` next to what held-out real images score, at the same ``n``.

    ``n = min(len(generated), len(heldout_images), len(train_images))``; ``n``
    training images are the reference of both. Returns the figures, their
    ``real_<name>`` counterparts, ``n`` and ``reason`` (None, or why the figures
    are NaN); a withheld figure is also logged as a warning.
    """
    n = min(len(generated), len(heldout_images), len(train_images))
    if n < 2:
        raise ValueError(f"need at least 2 images in each set, got n={n}")
    gen = torch.Generator().manual_seed(seed)
    ref = classifier_features(pair.main, _pick(train_images, n, gen), batch_size)
    held = _pick(heldout_images, n, gen)
    order = torch.randperm(len(generated), generator=gen)[:n]
    fake = generated[order]
    fake_labels = labels[order] if labels is not None else None
    real_hist = class_histogram(pair.main, held, batch_size)

    def figures(images: Tensor, wanted: Tensor | None) -> tuple[dict[str, float], str | None]:
        return sample_figures(
            pair,
            classifier_features(pair.main, images, batch_size),
            log_probs(pair.main, images, batch_size),
            log_probs(pair.check_classifier, images, batch_size),
            ref,
            names=names,
            labels=wanted,
            real_histogram=real_hist,
            seed=seed,
        )

    out, reason = figures(fake, fake_labels)
    if reason is not None:
        log.warning("sample metrics: %s", reason)
    real, _ = figures(held, None)
    report: dict[str, Any] = {**out, **{f"real_{k}": v for k, v in real.items()}, "n": n, "reason": reason}
    return report


def load_reference(data: Any, plugins: Any) -> tuple[Any, Any]:
    """``(train, held-out)`` :class:`engine.ImageData` of a run's ``data`` config, split as the loop splits it."""
    from engine.data import load_data, split

    return split(load_data(data, plugins), data)
