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

* :func:`frechet_distance` between two sets of penultimate-layer features;
* :func:`real_data_floor` – the same distance between held-out and training
  images at the same sample size. Fréchet distances are biased upwards at
  small sample sizes and a small classifier's features are not Inception's,
  so a model's figure means little alone: report it next to this floor
  (:func:`frechet_report` returns both);
* :func:`classifier_score` – the Inception-score analogue ``exp E_x KL(p(y|x) ‖ p(y))``;
* :func:`class_accuracy` – whether class-conditional samples are of their class.

Every function puts the model in eval mode under ``torch.no_grad`` (and
restores its mode), accepts ``uint8`` or float images ``N×C×H×W`` and is
deterministic for a given ``seed``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.data import to_float

_LOG_2PI = math.log(2 * math.pi)

__all__ = [
    "FeatureClassifier",
    "GaussianLatentModel",
    "class_accuracy",
    "classifier_features",
    "classifier_score",
    "default_cache_dir",
    "elbo",
    "frechet_distance",
    "frechet_distance_from_stats",
    "frechet_report",
    "iwae_bound",
    "real_data_floor",
    "reconstruction_error",
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


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _device_of(model: Any) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's mode is restored after."""
    was_training = bool(getattr(model, "training", False))
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)


def _batches(images: Tensor, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(images), batch_size):
        yield to_float(images[start : start + batch_size]).to(device)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor N×C×H×W, got {shape}")
    if len(images) == 0:
        raise ValueError("images is empty")


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
# the feature classifier
# ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gentrain/classifiers`` (``~/.cache/gentrain/classifiers`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "gentrain" / "classifiers"


def _fingerprint(images: Tensor, labels: Tensor) -> str:
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(np.ascontiguousarray(t.detach().cpu().numpy()).tobytes())
    return h.hexdigest()


class _GlobalMaxAvgPool(nn.Module):
    """``N×C×H×W`` -> ``N×2C``: the maximum and the mean of each channel over the image."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class FeatureClassifier(nn.Module):
    """A small CNN classifier whose penultimate layer serves as the feature space of
    :func:`frechet_distance`, standing in for Inception on small images.

    Three 3×3 conv layers with batch norm (``width``, ``2·width``, ``4·width``
    channels, max-pooling between them), global max- and average-pooling
    (position-invariant: small objects anywhere in the frame are found), a
    ``feature_dim`` ReLU layer (the features) and a linear head. Any image
    size from 4×4 up works.

    Build one with :meth:`for_dataset` (trained once, then loaded from the
    cache) or construct and :meth:`fit` it yourself.
    """

    FORMAT = 1

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        c, h, w = shape
        if min(h, w) < 4:
            raise ValueError(f"images must be at least 4×4, got {h}×{w}")
        self.shape = (int(c), int(h), int(w))
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.feature_dim = int(feature_dim)
        self.val_accuracy = float("nan")
        self.body = nn.Sequential(
            *_conv_block(c, width),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_block(2 * width, 4 * width),
            _GlobalMaxAvgPool(),
            nn.Linear(8 * width, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``N×feature_dim`` of float images in ``[0, 1]``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``N×num_classes``."""
        return self.head(self.body(x))

    def fit(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        epochs: int = 5,
        batch_size: int = 128,
        lr: float = 1e-3,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> float:
        """Train on ``images``/``labels`` with Adam; return the accuracy on a held-out ``val_fraction``.

        Batches are shuffled from ``seed`` with a private generator: the global RNG is left untouched.
        """
        _check_images(images)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(images), generator=gen)
        n_val = int(len(images) * val_fraction)
        train_idx, val_idx = perm[n_val:], perm[:n_val]
        device = _device_of(self)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        self.train()
        for _ in range(epochs):
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for start in range(0, len(order), batch_size):
                sel = order[start : start + batch_size]
                x = to_float(images[sel]).to(device)
                y = labels[sel].to(device)
                loss = F.cross_entropy(self(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        self.eval()
        if n_val:
            self.val_accuracy = class_accuracy(self, images[val_idx], labels[val_idx], batch_size=256)
        return self.val_accuracy

    # -- saving and the cache ------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs, in types ``torch.load(weights_only=True)`` accepts."""
        return {
            "format": self.FORMAT,
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
            "val_accuracy": self.val_accuracy,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FeatureClassifier:
        if state.get("format") != cls.FORMAT:
            raise ValueError(f"unknown classifier file format {state.get('format')!r} (expected {cls.FORMAT})")
        c, h, w = state["shape"]
        clf = cls((c, h, w), state["num_classes"], state["width"], state["feature_dim"])
        clf.load_state_dict(state["state_dict"])
        clf.val_accuracy = float(state["val_accuracy"])
        return clf.eval()

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write :meth:`state` (plus ``extra`` plain values) atomically to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({**self.state(), **extra}, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureClassifier:
        return cls.from_state(torch.load(path, map_location="cpu", weights_only=True))

    @classmethod
    def for_dataset(
        cls,
        key: str,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        *,
        cache_dir: str | Path | None = None,
        width: int = 32,
        feature_dim: int = 128,
        epochs: int = 5,
        batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> FeatureClassifier:
        """The classifier of dataset ``key``: loaded from ``<cache_dir>/<key>.pt``, or trained and saved there.

        The file records a fingerprint of ``images`` and ``labels`` and the
        training settings; if they differ (the key was reused for other data),
        the classifier is trained again and the file replaced.

        :param key: names the dataset, e.g. ``"mnist-train"``; letters, digits, ``._-``.
        :param cache_dir: default :func:`default_cache_dir`.
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", key):
            raise ValueError(f"classifier key {key!r} must be letters, digits, '.', '_' or '-'")
        path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = path / f"{key}.pt"
        settings: dict[str, float] = {"width": width, "feature_dim": feature_dim, "epochs": epochs}
        settings.update(batch_size=batch_size, lr=lr, seed=seed)
        fingerprint = _fingerprint(images, labels)
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("fingerprint") == fingerprint and state.get("settings") == settings:
                return cls.from_state(state)
        c, h, w = images.shape[1:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clf = cls((int(c), int(h), int(w)), num_classes, width=width, feature_dim=feature_dim)
        clf.fit(images, labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        clf.save(path, fingerprint=fingerprint, settings=settings)
        return clf


def _logits_and_features(
    classifier: FeatureClassifier, images: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    _check_images(images)
    if tuple(images.shape[1:]) != classifier.shape:
        raise ValueError(f"images are {tuple(images.shape[1:])} but the classifier was trained on {classifier.shape}")
    device = _device_of(classifier)
    with _evaluating(classifier):
        for x in _batches(images, batch_size, device):
            feats = classifier.features(x)
            yield classifier.head(feats), feats


def classifier_features(classifier: FeatureClassifier, images: Tensor, batch_size: int = 256) -> Tensor:
    """Penultimate-layer features ``N×feature_dim`` (float32, on the CPU) of ``images``."""
    return torch.cat([f.float().cpu() for _, f in _logits_and_features(classifier, images, batch_size)])


def _log_probs(classifier: FeatureClassifier, images: Tensor, batch_size: int) -> Tensor:
    return torch.cat(
        [F.log_softmax(logits.double(), 1).cpu() for logits, _ in _logits_and_features(classifier, images, batch_size)]
    )


def classifier_score(classifier: FeatureClassifier, images: Tensor, batch_size: int = 256, splits: int = 1) -> float:
    """``exp(E_x KL(p(y|x) ‖ p(y)))``, the Inception score with ``classifier`` in place of Inception.

    Between 1 (every image looks alike to the classifier, or none is confidently
    classified) and ``num_classes`` (confident and classes balanced). With
    ``splits > 1`` it is the mean over that many equal parts, as is customary.
    """
    log_p = _log_probs(classifier, images, batch_size)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        if len(part) == 0:
            raise ValueError(f"{len(log_p)} images cannot be cut into {splits} splits")
        log_py = torch.logsumexp(part, 0) - math.log(len(part))
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores))


def class_accuracy(classifier: FeatureClassifier, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels`` (e.g. conditional samples and their classes)."""
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    pred = _log_probs(classifier, images, batch_size).argmax(1)
    return float((pred == labels.cpu()).double().mean())


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
