"""Held-out metrics of a loaded run, each next to what real data scores (``gentrain eval``).

Everything is computed by :mod:`engine.metrics`: the ELBO and IWAE bound,
reconstruction error, and :func:`engine.metrics.sample_report` (Fréchet
distance, KID, classifier score, class coverage and, for conditional models,
label accuracy, each next to the same figure of held-out real images, reported
only when the feature classifier and its check classifier agree). The
classifiers are the ones the ``sample_metrics`` plugin trains during
training (same cache key and settings), so an evaluation after a run that
scored samples loads them instead of training them again.

On Ray. With ``scaling.num_workers > 0`` (the run's, or an override
``scaling.num_workers=2``) the ``n`` samples are drawn on Ray workers
(:func:`engine.ray.tasks.run_on_workers`: the same cluster checks, resources
and one-line errors as ``gentrain fit``). The samples are cut into batches of
``batch_size``; batch ``b`` is drawn with the seed :func:`batch_seed` ``(seed,
b)`` and its slice of the labels, wherever it is drawn, and each worker takes a
run of whole batches, loads the checkpoint itself (:func:`engine.load`: the
checkpoint path or URI must be reachable from every node) and returns what the
two classifiers say of its samples (:class:`SampleShare`). The driver gathers
the shares in batch order and computes the figures, so they do not depend on
the number of workers (in-process is the same with one share). The likelihood
bounds and reconstruction error of the held-out images stay on the driver:
they read the data, and their estimators draw from one generator in turn.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine import metrics
from engine.config import RunConfig
from engine.data import ImageData, split
from engine.errors import ConfigError
from engine.load import LoadedRun, autocast, can
from engine.plugins import current

__all__ = ["EvalReport", "SampleShare", "batch_seed", "classifiers", "evaluate", "sample_share"]

#: The sample figures :func:`evaluate` reports, with their labels.
SAMPLE_ROWS = {
    "frechet": "classifier Fréchet distance",
    "kid": "KID",
    "classifier_score": "classifier score",
    "class_coverage": "class coverage",
    "label_accuracy": "label accuracy of samples",
}


@dataclass
class EvalReport:
    """What :func:`evaluate` measured, plus context.

    ``rows`` maps a metric id (``neg_elbo``, ``iwae``, ``recon_error``, ``frechet``,
    ``kid``, ``classifier_score``, ``class_accuracy``) to ``{"label": what it is,
    "model": the model's value, "real": what real held-out data scores, or None}``.
    """

    rows: dict[str, dict[str, Any]]
    info: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.info, "metrics": self.rows, "notes": self.notes}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def table(self) -> str:
        lines = [f"{'metric':<36} {'model':>12} {'real data':>12}"]
        for row in self.rows.values():
            lines.append(f"{row['label']:<36} {_fmt(row['model']):>12} {_fmt(row.get('real')):>12}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"


def _held_out(run: LoadedRun, overrides: Sequence[str] | Mapping[str, Any]) -> tuple[RunConfig, ImageData, ImageData]:
    """``(config, training images, held-out images)``: the run's own split, or the overridden data's.

    ``config`` is the run's with ``overrides`` applied (``data.*`` picks other
    held-out data, ``scaling.*`` where the samples are drawn).
    """
    config, data = run.dataset(())
    train, held = split(data, config.data)
    if overrides:
        config = run.config.replace(overrides, run.plugin_manager or current())
        if config.data != run.config.data:
            config, other = run.dataset(overrides)
            if config.data.val_fraction > 0:
                _, held = split(other, config.data)
            else:
                held = other  # a whole other split (data.split=test data.val_fraction=0)
    return config, train, held


def evaluate(
    run: LoadedRun,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    n: int = 1000,
    iwae_k: int = 50,
    batch_size: int = 256,
    seed: int = 0,
    precision: str = "32",
    elbo_samples: int = 8,
    classifier_cache: str | Path | None = None,
    classifier_epochs: int | None = None,
) -> EvalReport:
    """Held-out metrics of a loaded run, each next to what real data scores.

    The held-out images are the run's own validation split (or, with data
    ``overrides``, that data's validation split, or all of it for
    ``data.val_fraction=0``). Reported where the model supports them:
    ``-ELBO`` and the IWAE bound with ``iwae_k`` samples (models with
    ``encode``/``decode``/``log_likelihood``, :mod:`engine.metrics`),
    reconstruction error, and on ``n`` samples :func:`engine.metrics.sample_report`:
    the classifier Fréchet distance, KID, classifier score, class coverage and,
    for conditional models, label accuracy. The classifiers are the run's
    training-time ones (:func:`classifiers`).
    ``elbo_samples`` draws of z per image make the -ELBO estimate's noise small.

    ``overrides`` may also set ``scaling.*``: with ``scaling.num_workers > 0``
    (or a run trained so) the samples are drawn on Ray workers, in whole
    batches of ``batch_size`` (see the module docstring); the figures are the
    in-process ones. A scaling request the cluster can never hold fails before
    anything is computed. ``info["sample_workers"]`` says which process drew how many.
    """
    _positive_int("n", n)
    _positive_int("batch_size", batch_size)
    if iwae_k < 0:
        raise ConfigError.one("iwae_k", iwae_k, "must be 0 (skip the IWAE bound) or a positive number of samples")
    _positive_int("elbo_samples", elbo_samples)
    config, train, held = _held_out(run, overrides)
    if len(held) < 2:
        raise ConfigError.one(
            "data.val_fraction", config.data.val_fraction, f"leaves {len(held)} held-out image(s); need 2"
        )
    model = run.model
    k = run.data_spec.num_classes or 0
    sampling = can(model, "sample") and k >= 2
    if sampling and n < 2:
        raise ConfigError.one("n", n, "needs 2 or more samples for the sample metrics")
    if sampling and config.scaling.num_workers > 0:
        from engine.ray.tasks import check_workers

        check_workers(config.scaling)  # a request the cluster can never hold fails now, before any work
    rows: dict[str, dict[str, Any]] = {}

    def row(key: str, label: str, value: float, real: float | None = None) -> None:
        rows[key] = {"label": label, "model": value, "real": real}

    notes: list[str] = []
    held_x = held.images
    with autocast(precision, run.device):
        if all(callable(getattr(model, a, None)) for a in ("encode", "decode", "log_likelihood")):
            try:
                value = metrics.elbo(model, held_x, batch_size, samples=elbo_samples, seed=seed)  # type: ignore[arg-type]
                row("neg_elbo", "-ELBO (nats/image)", value)
                if iwae_k > 0:
                    value = metrics.iwae_bound(model, held_x, k=iwae_k, batch_size=max(1, batch_size // 2), seed=seed)  # type: ignore[arg-type]
                    row("iwae", f"IWAE bound, k={iwae_k} (nats/image)", value)
            except TypeError as e:  # encode() is not a Gaussian's (mu, logvar)
                notes.append(f"no likelihood bounds: {e}")
        if can(model, "reconstruct"):
            row(
                "recon_error",
                "reconstruction error (SSE/image)",
                metrics.reconstruction_error(model, held_x, batch_size),
                0.0,
            )
    shares: list[SampleShare] = []
    if not can(model, "sample"):
        notes.append(f"{config.model.name} cannot sample: no sample metrics")
    elif not sampling:
        notes.append("the data has no labels: no classifier-based sample metrics")
    else:
        pair = classifiers(run, train, cache_dir=classifier_cache, epochs=classifier_epochs)
        shares = _draw(run, config, pair, n=n, seed=seed, batch_size=batch_size, precision=precision)
        conditional = shares[0].labels is not None
        names = [n for n in metrics.SAMPLE_METRICS if n != "label_accuracy" or conditional]
        report = _gathered_report(pair, shares, train, held, names=names, seed=seed, batch_size=batch_size)
        m = int(report["n"])
        for name in names:
            label = SAMPLE_ROWS[name] + (f" (n={m})" if name in ("frechet", "kid") else "")
            value = report[name] * (1000 if name == "kid" else 1)
            if name == "label_accuracy":  # what the classifier scores on held-out real images of their own labels
                real = metrics.class_accuracy(pair.main, held.images, held.labels, batch_size)
            else:
                real = report[f"real_{name}"] * (1000 if name == "kid" else 1)
            row(name, label + (" ×1000" if name == "kid" else ""), value, real)
        notes.append(
            f"classifiers: held-out accuracy {pair.main.val_accuracy:.3f} "
            f"(check {pair.check_classifier.val_accuracy:.3f}), "
            f"disagreement on the samples {report['classifier_disagreement']:.3f}"
        )
        if report["reason"] is not None:
            notes.append(str(report["reason"]))
    info = {
        "checkpoint": run.checkpoint,
        "model": config.model.name,
        "step": run.step,
        "epoch": run.epoch,
        "weights": run.weights,
        "data": config.data.name,
        "held_out_images": len(held),
        "training_images": len(train),
        "samples": sum(len(share.features) for share in shares),
        "sample_workers": [{"pid": sh.pid, "node": sh.node, "samples": len(sh.features)} for sh in shares],
        "seed": seed,
        "run_metrics": run.metrics,
    }
    return EvalReport(rows, info, notes)


def classifiers(
    run: LoadedRun,
    train: ImageData | None = None,
    *,
    cache_dir: str | Path | None = None,
    epochs: int | None = None,
) -> metrics.ClassifierPair:
    """The run's feature and check classifiers: those the ``sample_metrics`` plugin trained, if cached.

    Keyed like the plugin (``<dataset>-<training images>``), with its cache and
    epochs when the run config has them (``callbacks.sample_metrics_cache``,
    ``callbacks.sample_metrics_classifier_epochs``), else ``cache_dir`` / 5 epochs.
    ``train``: the run's training split, when the caller has it (else it is loaded).
    """
    if train is None:
        config, data = run.dataset(())
        train = split(data, config.data)[0]
    k = run.data_spec.num_classes
    if not k or k < 2:
        raise ConfigError.one("data", run.config.data.name, "needs labels of 2 or more classes for a classifier")
    c = run.config.callbacks
    cache = cache_dir if cache_dir is not None else getattr(c, "sample_metrics_cache", None)
    epochs = epochs or getattr(c, "sample_metrics_classifier_epochs", None) or 5
    disagreement = getattr(c, "sample_metrics_max_disagreement", metrics.MAX_DISAGREEMENT)
    return metrics.ClassifierPair.for_dataset(
        f"{run.config.data.name}-{len(train)}",
        train.images,
        train.labels,
        k,
        cache_dir=cache,
        epochs=epochs,
        max_disagreement=disagreement,
    )


# ---------------------------------------------------------------------------
# the samples: drawn in whole batches, in-process or on Ray workers
# ---------------------------------------------------------------------------


def batch_seed(seed: int, index: int) -> int:
    """The seed of sample batch ``index`` of an evaluation with ``seed``: the same batch, the same images, anywhere."""
    state = np.random.SeedSequence([seed % 2**63, index]).generate_state(1, np.uint64)
    return int(state[0]) % 2**63


@dataclass
class SampleShare:
    """What the two classifiers say of a run of sample batches (:func:`sample_share`), and which process drew them."""

    features: Tensor
    """The feature classifier's features, ``N×D`` float32."""
    main_log_probs: Tensor
    """Its ``log p(y|x)``, ``N×K`` float64."""
    check_log_probs: Tensor
    """The check classifier's ``log p(y|x)``."""
    labels: Tensor | None
    """The classes the samples were drawn for (conditional models), else ``None``."""
    pid: int
    node: str


def sample_share(
    run: LoadedRun,
    pair: metrics.ClassifierPair,
    *,
    n: int,
    batches: range,
    seed: int,
    batch_size: int,
    precision: str = "32",
) -> SampleShare:
    """The classifiers' view of sample batches ``batches`` of the ``n`` samples an evaluation draws.

    Batch ``b`` holds samples ``b·batch_size`` up to ``(b+1)·batch_size`` (the last
    may be shorter), with those of ``run.labels(n)``, drawn by ``run.sample`` with
    the seed :func:`batch_seed` ``(seed, b)``: the same images in any process.
    The images themselves are not kept.
    """
    labels = run.labels(n)
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for b in batches:
        start, stop = b * batch_size, min(n, (b + 1) * batch_size)
        y = None if labels is None else labels[start:stop]
        images = run.sample(stop - start, y, seed=batch_seed(seed, b), batch_size=stop - start, precision=precision)
        parts.append(
            (
                metrics.classifier_features(pair.main, images, batch_size),
                metrics.log_probs(pair.main, images, batch_size),
                metrics.log_probs(pair.check_classifier, images, batch_size),
            )
        )
    first, last = (batches.start, batches.stop) if len(batches) else (0, 0)
    span = None if labels is None else labels[first * batch_size : min(n, last * batch_size)]
    feats, main_lp, check_lp = (torch.cat([p[i] for p in parts]) if parts else torch.zeros(0) for i in range(3))
    return SampleShare(feats, main_lp, check_lp, span, os.getpid(), socket.gethostname())


def _worker_share(
    checkpoint: str,
    ema: bool,
    device: str,
    pair: metrics.ClassifierPair,
    n: int,
    batches: range,
    seed: int,
    batch_size: int,
    precision: str,
) -> SampleShare:
    """What one Ray worker runs: load the checkpoint the driver evaluates, then :func:`sample_share`."""
    from engine.load import load

    run = load(checkpoint, device=device, ema=ema)
    return sample_share(run, pair, n=n, batches=batches, seed=seed, batch_size=batch_size, precision=precision)


def _draw(
    run: LoadedRun,
    config: RunConfig,
    pair: metrics.ClassifierPair,
    *,
    n: int,
    seed: int,
    batch_size: int,
    precision: str,
) -> list[SampleShare]:
    """The shares of all ``n`` samples, in batch order: one in-process, or one per Ray worker (whole batches each)."""
    count = math.ceil(n / batch_size)
    workers = config.scaling.num_workers
    if workers == 0:
        return [
            sample_share(run, pair, n=n, batches=range(count), seed=seed, batch_size=batch_size, precision=precision)
        ]
    from engine.ray.tasks import run_on_workers

    # Contiguous runs of whole batches, as even as they go (fewer workers than batches: one batch each).
    bounds = [i * count // workers for i in range(workers + 1)]
    blocks = [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    device = "cuda" if config.scaling.use_gpu else "cpu"
    ema = run.weights == "ema"
    calls = [(run.checkpoint, ema, device, pair, n, block, seed, batch_size, precision) for block in blocks]
    return run_on_workers(config.scaling, _worker_share, calls, what="eval")


def _gathered_report(
    pair: metrics.ClassifierPair,
    shares: list[SampleShare],
    train: ImageData,
    held: ImageData,
    *,
    names: list[str],
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """:func:`engine.metrics.sample_report` of the gathered shares: the same picks, from what the workers computed."""
    feats, main_lp, check_lp = (
        torch.cat([getattr(s, a) for s in shares]) for a in ("features", "main_log_probs", "check_log_probs")
    )
    labels = None if shares[0].labels is None else torch.cat([s.labels for s in shares if s.labels is not None])
    m = min(len(feats), len(held), len(train))
    gen = torch.Generator().manual_seed(seed)
    ref = metrics.classifier_features(
        pair.main, train.images[torch.randperm(len(train), generator=gen)[:m]], batch_size
    )
    held_x = held.images[torch.randperm(len(held), generator=gen)[:m]]
    order = torch.randperm(len(feats), generator=gen)[:m]
    real_hist = metrics.class_histogram(pair.main, held_x, batch_size)
    common: dict[str, Any] = {"names": names, "real_histogram": real_hist, "seed": seed}
    out, reason = metrics.sample_figures(
        pair,
        feats[order],
        main_lp[order],
        check_lp[order],
        ref,
        labels=None if labels is None else labels[order],
        **common,
    )
    real, _ = metrics.sample_figures(
        pair,
        metrics.classifier_features(pair.main, held_x, batch_size),
        metrics.log_probs(pair.main, held_x, batch_size),
        metrics.log_probs(pair.check_classifier, held_x, batch_size),
        ref,
        **common,
    )
    return {**out, **{f"real_{k}": v for k, v in real.items()}, "n": m, "reason": reason}


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError.one(name, value, "must be a positive whole number")
