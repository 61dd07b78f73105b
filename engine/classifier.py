"""The feature classifiers behind the sample metrics, and the check that two of them agree.

:class:`FeatureClassifier` is a small CNN trained on a dataset's labels; it
stands in for Inception on small images. Its class probabilities give the
classifier score and class coverage; the Fréchet distance and KID read its
**distance features** (:meth:`FeatureClassifier.distance_features`): the
per-channel mean and maximum of every conv block but the last, next to the
penultimate layer, each layer divided by its typical scale on the training
images so that none dominates. The penultimate layer alone, trained to ignore
noise and blur, hardly sees them (on real MNIST, pixel noise of std 0.05 moved
its distance to 1.3× the real-data floor); the earlier layers do (2.2×, and
78× for a blur of σ=0.5), as a Fréchet distance must (Heusel et al. 2017
show FID rising with each such disturbance). Two things make its figures worth
reading for generated images, which are noisier and blurrier than the data it
was trained on:

* **robust training**: every batch is augmented (Gaussian pixel noise of a
  random strength, a random Gaussian blur, a shift of up to 2 pixels) on a
  random half of its images (:func:`augment`), so a noisy or blurry digit is
  classified as the digit it shows instead of collapsing into one "garbage"
  class;
* **a second opinion**: :class:`ClassifierPair` trains a second classifier of
  another architecture (``arch="wide"``: two 5×5 conv layers, average pooling)
  from another seed. Before a classifier figure is reported, the two must put
  the same generated images into classes in the same proportions: the total
  variation distance of their class histograms (:func:`histogram_disagreement`)
  must be at most ``max_disagreement`` (:data:`MAX_DISAGREEMENT`, 0.15). When
  it is larger, :meth:`ClassifierPair.check` returns a reason and the callers
  (:func:`engine.metrics.sample_report`, the ``sample_metrics`` plugin) report
  NaN in place of every classifier figure and log the reason: a figure two
  classifiers cannot agree on says more about the classifier than the model.

Both are trained once per dataset and cached (:meth:`FeatureClassifier.for_dataset`,
file ``<cache>/<key>.v<VERSION>[-check].pt``: keyed by the dataset and the
classifier version; a file recording other data or settings is retrained).
Their held-out accuracies are kept as ``val_accuracy``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.data import to_float

#: The classifier version: part of every cache file's name, raised when training, architecture or features change.
VERSION = 3

#: Largest total variation distance of the two classifiers' class histograms at which figures are reported.
MAX_DISAGREEMENT = 0.15

Arch = Literal["cnn", "wide"]

__all__ = [
    "MAX_DISAGREEMENT",
    "VERSION",
    "ClassifierPair",
    "FeatureClassifier",
    "augment",
    "class_accuracy",
    "class_histogram",
    "classifier_features",
    "classifier_score",
    "default_cache_dir",
    "histogram_disagreement",
]


# ---------------------------------------------------------------------------
# helpers (shared with engine.metrics)
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


# ---------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------


def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable 5-tap Gaussian blur of ``N×C×H×W`` with one ``sigma`` per image."""
    n, c, h, w = x.shape
    taps = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N·C)×5
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k.view(n * c, 1, 1, 5), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k.view(n * c, 1, 5, 1), groups=n * c)
    return y.view(n, c, h, w)


def augment(x: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    """Light corruption of a random ``p`` of float images in ``[0, 1]``: shift, blur and noise.

    Each chosen image is shifted by up to 2 pixels (1 below 21×21; zero fill); half of them are
    blurred (σ ∈ [0.4, 1.2] pixels); all get Gaussian noise of std ∈ [0, 0.15],
    clipped back to ``[0, 1]``. What generated images look like, short of being
    another class.
    """
    n = x.shape[0]
    chosen = torch.rand(n, generator=gen) < p
    if not bool(chosen.any()):
        return x
    idx = chosen.nonzero().squeeze(1)
    y = x[idx.to(x.device)]
    m = len(idx)
    reach = max(1, round(min(y.shape[2:]) / 14))  # 2 pixels for 28×28 or 32×32, 1 for 16×16
    dx, dy = torch.randint(-reach, reach + 1, (2,), generator=gen).tolist()
    y = torch.roll(y, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        y[:, :, :dy] = 0
    elif dy < 0:
        y[:, :, dy:] = 0
    if dx > 0:
        y[:, :, :, :dx] = 0
    elif dx < 0:
        y[:, :, :, dx:] = 0
    blur = torch.rand(m, generator=gen) < 0.5
    if bool(blur.any()) and min(y.shape[2:]) >= 5:
        sigma = (0.4 + 0.8 * torch.rand(m, generator=gen)).to(y.device, y.dtype)
        blurred = _blur(y, sigma)
        y = torch.where(blur.to(y.device)[:, None, None, None], blurred, y)
    std = (0.15 * torch.rand(m, generator=gen)).to(y.device, y.dtype)
    y = (y + std[:, None, None, None] * torch.randn(y.shape, generator=gen).to(y.device, y.dtype)).clamp(0, 1)
    out = x.clone()
    out[idx.to(x.device)] = y
    return out


# ---------------------------------------------------------------------------
# the classifier
# ---------------------------------------------------------------------------


class _GlobalMaxAvgPool(nn.Module):
    """``N×C×H×W`` -> ``N×2C``: the maximum and the mean of each channel over the image."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


def _conv_block(c_in: int, c_out: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.BatchNorm2d(c_out), nn.ReLU()]


class FeatureClassifier(nn.Module):
    """A small CNN classifier whose layers are the feature space of the Fréchet distance and KID.

    ``arch="cnn"`` (the default, the feature classifier): three 3×3 conv layers
    with batch norm (``width``, ``2·width``, ``4·width`` channels, max-pooling
    between them), global max- and average-pooling (position-invariant), a
    ``feature_dim`` ReLU layer (the penultimate features) and a linear head.
    ``arch="wide"`` (the check classifier of :class:`ClassifierPair`): two 5×5
    conv layers (``2·width``, ``4·width``) with average pooling, then the same
    pooling, feature layer and head. Any image size from 4×4 up works.

    :meth:`distance_features` (``distance_dim`` wide) is what the distances
    compare; :meth:`fit` sets each of its layers' scale and the centre
    (:meth:`standardize`; buffers saved with the weights) from the training images.

    Build one with :meth:`for_dataset` (trained once, then loaded from the
    cache) or construct and :meth:`fit` it yourself.
    """

    FORMAT = VERSION

    def __init__(
        self,
        shape: tuple[int, int, int],
        num_classes: int,
        width: int = 32,
        feature_dim: int = 128,
        arch: Arch = "cnn",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        c, h, w = shape
        if min(h, w) < 4:
            raise ValueError(f"images must be at least 4×4, got {h}×{w}")
        if arch not in ("cnn", "wide"):
            raise ValueError(f"unknown classifier arch {arch!r}; known: cnn, wide")
        self.shape = (int(c), int(h), int(w))
        self.num_classes = int(num_classes)
        self.width = int(width)
        self.feature_dim = int(feature_dim)
        self.arch: Arch = arch
        self.val_accuracy = float("nan")
        if arch == "cnn":
            convs = [
                *_conv_block(c, width),
                nn.MaxPool2d(2),
                *_conv_block(width, 2 * width),
                nn.MaxPool2d(2),
                *_conv_block(2 * width, 4 * width),
            ]
        else:
            convs = [*_conv_block(c, 2 * width, 5), nn.AvgPool2d(2), *_conv_block(2 * width, 4 * width, 5)]
        self.body = nn.Sequential(
            *convs, _GlobalMaxAvgPool(), nn.Linear(8 * width, feature_dim), nn.ReLU(), nn.Dropout(0.1)
        )
        self.head = nn.Linear(feature_dim, num_classes)
        # Taps: the ReLU of every conv block but the last (whose pooled output feeds the
        # penultimate layer already); the body's last ReLU is the penultimate layer's own.
        relus = [i for i, m in enumerate(self.body) if isinstance(m, nn.ReLU)]
        self._taps = tuple(relus[:-2])
        tap_channels = [cast(nn.BatchNorm2d, self.body[i - 1]).num_features for i in self._taps]
        self.distance_dim = 2 * sum(tap_channels) + self.feature_dim
        self.layer_scale: Tensor
        self.feature_center: Tensor
        self.register_buffer("layer_scale", torch.ones(len(self._taps) + 1))
        self.register_buffer("feature_center", torch.zeros(self.distance_dim))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``N×feature_dim`` of float images in ``[0, 1]`` (what the head reads)."""
        return self.body(x)

    def layers(self, x: Tensor) -> list[Tensor]:
        """The unscaled layers of :meth:`distance_features`: each tapped block pooled to ``N×2C``, the penultimate."""
        out = []
        for i, module in enumerate(self.body):
            x = module(x)
            if i in self._taps:
                out.append(_GlobalMaxAvgPool()(x))
        return [*out, x]

    def distance_features(self, x: Tensor) -> Tensor:
        """``N×distance_dim``: :meth:`layers`, each over its ``layer_scale``, side by side, less ``feature_center``."""
        return self._standardized(self.layers(x))

    def _standardized(self, layers: list[Tensor]) -> Tensor:
        scaled = torch.cat([layer / s for layer, s in zip(layers, self.layer_scale, strict=True)], dim=1)
        return scaled - self.feature_center

    @torch.no_grad()
    def standardize(self, images: Tensor, batch_size: int = 256) -> None:
        """Set ``layer_scale`` (each layer's root mean per-dimension variance) and ``feature_center`` from ``images``.

        Runs at the end of :meth:`fit` on (up to 4,096 of) the training images, without
        augmentation. The scale weighs the layers alike in the Fréchet distance; the
        centre keeps KID's polynomial kernel near 1 for the data (Fréchet does not
        depend on it).
        """
        _check_images(images)
        with _evaluating(self):
            parts = [self.layers(x) for x in _batches(images, batch_size, _device_of(self))]
        layers = [torch.cat(layer).double() for layer in zip(*parts, strict=True)]
        scale = [layer.var(0).mean().sqrt() for layer in layers]
        # A dead layer (all constant) keeps scale 1 rather than dividing by zero.
        self.layer_scale.copy_(torch.stack([s if s > 1e-12 else s.new_ones(()) for s in scale]).float())
        self.feature_center.zero_()
        self.feature_center.copy_(self._standardized([layer.float() for layer in layers]).mean(0))

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
        augmented: bool = True,
    ) -> float:
        """Train on ``images``/``labels`` with Adam (one-cycle cosine decay); return the held-out accuracy.

        ``augmented``: corrupt half of each batch with :func:`augment`. Batches are
        shuffled from ``seed`` with a private generator: the global RNG is left untouched.
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
        steps = max(1, epochs * math.ceil(len(train_idx) / batch_size))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
        )
        self.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout
            for _ in range(epochs):
                order = train_idx[torch.randperm(len(train_idx), generator=gen)]
                for start in range(0, len(order), batch_size):
                    sel = order[start : start + batch_size]
                    x = to_float(images[sel]).to(device)
                    if augmented:
                        x = augment(x, gen)
                    loss = F.cross_entropy(self(x), labels[sel].to(device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
        self.eval()
        self.standardize(images[train_idx[:4096]])
        if n_val:
            self.val_accuracy = class_accuracy(self, images[val_idx], labels[val_idx], batch_size=256)
        return self.val_accuracy

    # -- saving and the cache ------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs, in types ``torch.load(weights_only=True)`` accepts."""
        return {
            "format": self.FORMAT,
            "arch": self.arch,
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
        clf = cls((c, h, w), state["num_classes"], state["width"], state["feature_dim"], arch=state["arch"])
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

    @staticmethod
    def cache_path(key: str, cache_dir: str | Path | None = None, *, check: bool = False) -> Path:
        """``<cache_dir>/<key>.v<VERSION>.pt`` (``...-check.pt`` for the check classifier)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", key):
            raise ValueError(f"classifier key {key!r} must be letters, digits, '.', '_' or '-'")
        base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        return base / f"{key}.v{VERSION}{'-check' if check else ''}.pt"

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
        lr: float = 2e-3,
        seed: int = 0,
        arch: Arch = "cnn",
        augmented: bool = True,
    ) -> FeatureClassifier:
        """The classifier of dataset ``key``: loaded from :meth:`cache_path`, or trained and saved there.

        The file records a fingerprint of ``images`` and ``labels`` and the
        training settings; if they differ (the key was reused for other data),
        the classifier is trained again and the file replaced.

        :param key: names the dataset, e.g. ``"mnist-train"``; letters, digits, ``._-``.
        :param cache_dir: default :func:`default_cache_dir`.
        :param arch: ``cnn`` (the feature classifier) or ``wide`` (a check classifier,
            cached as ``<key>.v<VERSION>-check.pt``).
        """
        path = cls.cache_path(key, cache_dir, check=arch != "cnn")
        settings: dict[str, Any] = {"width": width, "feature_dim": feature_dim, "epochs": epochs, "arch": arch}
        settings.update(batch_size=batch_size, lr=lr, seed=seed, augmented=augmented)
        fingerprint = _fingerprint(images, labels)
        if path.is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("fingerprint") == fingerprint and state.get("settings") == settings:
                return cls.from_state(state)
        c, h, w = images.shape[1:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clf = cls((int(c), int(h), int(w)), num_classes, width=width, feature_dim=feature_dim, arch=arch)
        clf.fit(images, labels, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, augmented=augmented)
        clf.save(path, fingerprint=fingerprint, settings=settings)
        return clf


# ---------------------------------------------------------------------------
# what a classifier says about images
# ---------------------------------------------------------------------------


def _logits_and_features(
    classifier: FeatureClassifier, images: Tensor, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    _check_images(images)
    if tuple(images.shape[1:]) != classifier.shape:
        raise ValueError(f"images are {tuple(images.shape[1:])} but the classifier was trained on {classifier.shape}")
    device = _device_of(classifier)
    with _evaluating(classifier):
        for x in _batches(images, batch_size, device):
            layers = classifier.layers(x)
            yield classifier.head(layers[-1]), classifier._standardized(layers)


def classifier_features(classifier: FeatureClassifier, images: Tensor, batch_size: int = 256) -> Tensor:
    """:meth:`FeatureClassifier.distance_features`, ``N×distance_dim`` (float32, on the CPU), of ``images``.

    The space of the Fréchet distance and KID.
    """
    return torch.cat([f.float().cpu() for _, f in _logits_and_features(classifier, images, batch_size)])


def log_probs(classifier: FeatureClassifier, images: Tensor, batch_size: int = 256) -> Tensor:
    """``log p(y|x)``, ``N×num_classes`` float64 on the CPU."""
    return torch.cat(
        [F.log_softmax(logits.double(), 1).cpu() for logits, _ in _logits_and_features(classifier, images, batch_size)]
    )


def score_from_log_probs(log_p: Tensor, splits: int = 1) -> float:
    """:func:`classifier_score` from ``log p(y|x)`` already computed."""
    scores = []
    for part in torch.tensor_split(log_p, splits):
        if len(part) == 0:
            raise ValueError(f"{len(log_p)} images cannot be cut into {splits} splits")
        log_py = torch.logsumexp(part, 0) - math.log(len(part))
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(math.exp(float(kl)))
    return float(np.mean(scores))


def classifier_score(classifier: FeatureClassifier, images: Tensor, batch_size: int = 256, splits: int = 1) -> float:
    """``exp(E_x KL(p(y|x) ‖ p(y)))``, the Inception score with ``classifier`` in place of Inception.

    Between 1 (every image looks alike to the classifier, or none is confidently
    classified) and ``num_classes`` (confident and classes balanced). With
    ``splits > 1`` it is the mean over that many equal parts, as is customary.
    """
    return score_from_log_probs(log_probs(classifier, images, batch_size), splits)


def class_accuracy(classifier: FeatureClassifier, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels`` (e.g. conditional samples and their classes)."""
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    pred = log_probs(classifier, images, batch_size).argmax(1)
    return float((pred == labels.cpu()).double().mean())


def histogram_of(log_p: Tensor) -> Tensor:
    """The share of images predicted in each class (argmax), from ``log p(y|x)``."""
    counts = torch.bincount(log_p.argmax(1), minlength=log_p.shape[1]).double()
    return counts / counts.sum()


def class_histogram(classifier: FeatureClassifier, images: Tensor, batch_size: int = 256) -> Tensor:
    """The share of ``images`` the classifier puts in each class, ``num_classes`` float64 summing to 1."""
    return histogram_of(log_probs(classifier, images, batch_size))


def histogram_disagreement(a: Tensor, b: Tensor) -> float:
    """Total variation distance ``½ Σ |a_k - b_k|`` of two class histograms (0: the same, 1: disjoint)."""
    if a.shape != b.shape:
        raise ValueError(f"histograms over different classes: {tuple(a.shape)} and {tuple(b.shape)}")
    return 0.5 * float((a.double() - b.double()).abs().sum())


class ClassifierPair:
    """The feature classifier and an independently trained check classifier (another seed and architecture).

    :meth:`check` compares their class histograms of the same images; figures
    are reported only when they agree (total variation ≤ ``max_disagreement``).
    """

    def __init__(
        self, main: FeatureClassifier, check: FeatureClassifier, max_disagreement: float = MAX_DISAGREEMENT
    ) -> None:
        if main.num_classes != check.num_classes or main.shape != check.shape:
            raise ValueError("the two classifiers must be trained on the same classes and image shape")
        self.main = main
        self.check_classifier = check
        self.max_disagreement = float(max_disagreement)

    @property
    def num_classes(self) -> int:
        return self.main.num_classes

    @classmethod
    def for_dataset(
        cls,
        key: str,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        *,
        cache_dir: str | Path | None = None,
        epochs: int = 5,
        width: int = 32,
        seed: int = 0,
        max_disagreement: float = MAX_DISAGREEMENT,
    ) -> ClassifierPair:
        """Both classifiers of dataset ``key``, each trained once and cached (:meth:`FeatureClassifier.for_dataset`)."""
        main = FeatureClassifier.for_dataset(
            key, images, labels, num_classes, cache_dir=cache_dir, epochs=epochs, width=width, seed=seed
        )
        check = FeatureClassifier.for_dataset(
            key,
            images,
            labels,
            num_classes,
            cache_dir=cache_dir,
            epochs=epochs,
            width=max(4, width // 4),
            feature_dim=96,
            seed=seed + 1,
            arch="wide",
        )
        return cls(main, check, max_disagreement)

    def disagreement(self, images: Tensor, batch_size: int = 256) -> float:
        """Total variation distance of the two classifiers' class histograms of ``images``."""
        return histogram_disagreement(
            class_histogram(self.main, images, batch_size), class_histogram(self.check_classifier, images, batch_size)
        )

    def check(self, images: Tensor, batch_size: int = 256) -> tuple[float, str | None]:
        """``(disagreement, reason)``: ``reason`` is None when the figures may be reported."""
        tv = self.disagreement(images, batch_size)
        return tv, self.reason(tv)

    def reason(self, tv: float) -> str | None:
        """Why figures at disagreement ``tv`` are withheld, or None when they are not."""
        if tv <= self.max_disagreement:
            return None
        return (
            f"the feature classifier and the check classifier disagree on the samples' classes "
            f"(total variation {tv:.3f} > {self.max_disagreement:.2f}): classifier figures withheld (NaN)"
        )
