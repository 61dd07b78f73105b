"""Held-out metrics of a loaded run, each next to what real data scores (``gentrain eval``).

Everything is computed by :mod:`engine.metrics`: the ELBO and IWAE bound,
reconstruction error, and :func:`engine.metrics.sample_report` (Fréchet
distance, KID, classifier score, class coverage and, for conditional models,
label accuracy, each next to the same figure of held-out real images, reported
only when the feature classifier and its check classifier agree). The
classifiers are the ones the ``sample_metrics`` plugin trains during
training (same cache key and settings), so an evaluation after a run that
scored samples loads them instead of training them again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import metrics
from engine.config import RunConfig
from engine.data import ImageData, split
from engine.errors import ConfigError
from engine.load import LoadedRun, autocast, can

__all__ = ["EvalReport", "classifiers", "evaluate"]

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
    """``(config, training images, held-out images)``: the run's own split, or the overridden data's."""
    config, data = run.dataset(())
    train, held = split(data, config.data)
    if overrides:
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
    samples = None
    sample_labels = None
    if can(model, "sample"):
        sample_labels = run.labels(n)
        samples = run.sample(n, sample_labels, seed=seed, batch_size=batch_size, precision=precision)
    k = run.data_spec.num_classes
    if samples is None:
        notes.append(f"{config.model.name} cannot sample: no sample metrics")
    elif not k or k < 2:
        notes.append("the data has no labels: no classifier-based sample metrics")
    else:
        pair = classifiers(run, train, cache_dir=classifier_cache, epochs=classifier_epochs)
        names = [n for n in metrics.SAMPLE_METRICS if n != "label_accuracy" or sample_labels is not None]
        report = metrics.sample_report(
            pair,
            samples,
            train.images,
            held.images,
            labels=sample_labels,
            names=names,
            seed=seed,
            batch_size=batch_size,
        )
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
        "samples": 0 if samples is None else len(samples),
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


def _positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError.one(name, value, "must be a positive whole number")
