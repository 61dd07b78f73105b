"""Sample metrics during validation, for any model that samples: ``val/frechet``, ``val/kid``, ...

Turn them on with ``callbacks.sample_metrics``::

    gentrain fit model.name=gan callbacks.sample_metrics=[frechet,kid,classifier_score,class_coverage] \\
        callbacks.sample_metrics_every=2 callbacks.sample_metrics_n=1000

Every ``sample_metrics_every`` validations (counted from the epoch, so a resumed run keeps
the cadence; and always at the last epoch), each rank
draws its share of ``sample_metrics_n`` samples (from a private seed, the same
every epoch), runs both feature classifiers on them, and the ranks gather the
results (``trainer.env.all_gather``), so every rank adds the same figures to
the validation metrics: ``val/<name>`` for each name asked for, plus
``val/classifier_disagreement`` (the total variation of the two classifiers'
class histograms). Class-conditional models (``model.conditional``) also get
``val/label_accuracy``. They reach the CSV, TensorBoard, early stopping and
Tune like any validation metric: ``tune.metric=val/frechet`` works from config.
With ``trainer.ema_decay`` set, the samples come from the EMA weights.

The classifiers (:class:`engine.quality.ClassifierPair`) are trained on the
run's training split once and cached (``callbacks.sample_metrics_cache``,
default ``~/.cache/gentrain/classifiers``); rank 0 trains, the others then
load. Their held-out accuracies and the real-data floor (the same figures for
held-out real images) are logged once. When the two classifiers disagree on the
samples (TV > ``callbacks.sample_metrics_max_disagreement``, 0.15), every figure
is NaN and the reason is logged: the figure is withheld, not guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

import engine
from engine import metrics as quality

log = logging.getLogger(__name__)

MetricName = Literal["frechet", "kid", "classifier_score", "class_coverage"]


@dataclass(frozen=True)
class SampleMetricsOptions:
    """``callbacks.sample_metrics*``: classifier-based sample metrics added to the validation metrics."""

    sample_metrics: tuple[MetricName, ...] = ()
    """Which figures: ``frechet``, ``kid``, ``classifier_score``, ``class_coverage`` (empty: off).
    Conditional models add ``label_accuracy`` whenever this is not empty."""
    sample_metrics_every: engine.PositiveInt = 1
    """Every how many validations (the last epoch's is always scored)."""
    sample_metrics_n: engine.PositiveInt = 1000
    """Samples per evaluation, over all ranks (at most the training split's size)."""
    sample_metrics_max_disagreement: engine.Probability = quality.MAX_DISAGREEMENT
    """Largest total variation of the two classifiers' class histograms at which figures are reported."""
    sample_metrics_classifier_epochs: engine.PositiveInt = 5
    """Training epochs of each classifier (once per dataset: cached)."""
    sample_metrics_cache: str | None = None
    """Directory of the cached classifiers; default ``$XDG_CACHE_HOME/gentrain/classifiers``."""


def _names(config: Any) -> list[str]:
    c = config.callbacks
    names = list(getattr(c, "sample_metrics", ()) or ())
    if names and getattr(config.model.params, "conditional", False):
        names.append("label_accuracy")
    return names


def classifiers_for(config: Any, plugins: Any) -> tuple[quality.ClassifierPair, Any, Any]:
    """``(classifier pair, train split, held-out split)`` of a run config: trained once per dataset, then cached.

    Recipes call it before a search (``recipes/tune_gan.py``), so the trials only load the files.
    """
    c = config.callbacks
    train, held = quality.load_reference(config.data, plugins)
    k = train.num_classes
    if not k or k < 2:
        raise engine.ConfigError.one(
            "callbacks.sample_metrics",
            list(c.sample_metrics),
            f"needs a labelled dataset for its classifiers, but {config.data.name!r} has no classes",
        )
    pair = quality.ClassifierPair.for_dataset(
        f"{config.data.name}-{len(train)}",
        train.images,
        train.labels,
        k,
        cache_dir=c.sample_metrics_cache,
        epochs=c.sample_metrics_classifier_epochs,
        max_disagreement=c.sample_metrics_max_disagreement,
    )
    return pair, train, held


class _Reference:
    """What every evaluation of a run compares against: the classifiers, real features and histograms."""

    def __init__(self, trainer: Any) -> None:
        config = trainer.config
        c = config.callbacks

        def build() -> tuple[quality.ClassifierPair, Any, Any]:
            return classifiers_for(config, trainer.plugins)

        # Rank 0 trains (or loads) first; the others wait for it, then load its file.
        if trainer.is_rank_zero:
            self.pair, train, held = build()
        trainer.env.all_gather(None)
        if not trainer.is_rank_zero:
            self.pair, train, held = build()
        # On the run's device (the classifiers are small; their outputs come back to the CPU).
        self.pair.main.to(trainer.device)
        self.pair.check_classifier.to(trainer.device)
        self.n = min(c.sample_metrics_n, len(train))
        gen = torch.Generator().manual_seed(config.trainer.seed + 271828)
        pick = torch.randperm(len(train), generator=gen)[: self.n]
        self.reference = quality.classifier_features(self.pair.main, train.images[pick])
        self.held = held
        self.real_histogram = quality.class_histogram(self.pair.main, held.images if len(held) else train.images)
        self.floor_logged = False

    def log_floor(self, names: list[str]) -> None:
        """The same figures for held-out real images (the floor a model is read against), logged once."""
        if self.floor_logged or len(self.held) < 2:
            return
        self.floor_logged = True
        images = self.held.images[: self.n]
        figures, _ = quality.sample_figures(
            self.pair,
            quality.classifier_features(self.pair.main, images),
            quality.log_probs(self.pair.main, images),
            quality.log_probs(self.pair.check_classifier, images),
            self.reference,
            names=[n for n in names if n != "label_accuracy"],
            real_histogram=self.real_histogram,
        )
        text = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
        log.warning(
            "sample metrics: classifiers' held-out accuracy %.4f (check %.4f); real-data floor (n=%d held-out): %s",
            self.pair.main.val_accuracy,
            self.pair.check_classifier.val_accuracy,
            len(images),
            text,
        )


class SampleMetrics:
    def __init__(self) -> None:
        self.reference: _Reference | None = None

    @engine.hookimpl
    def gentrain_register_options(self, registry: engine.Registry[Any]) -> None:
        registry.add("sample_metrics", SampleMetricsOptions, SampleMetricsOptions, kind="callbacks")

    @engine.hookimpl
    def gentrain_validation_metrics(self, config: Any) -> list[str]:
        return [f"val/{n}" for n in _names(config)] + (["val/classifier_disagreement"] if _names(config) else [])

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        self.reference = None

    @engine.hookimpl
    def gentrain_on_validation_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        names = _names(trainer.config)
        if not names:
            return
        # Counted from the epoch, not from this process's validations: a resumed run keeps the cadence.
        t = trainer.config.trainer
        nth = (epoch + 1) // max(1, getattr(t, "val_every", 1))
        last = trainer.epoch >= t.epochs
        if nth % trainer.config.callbacks.sample_metrics_every != 0 and not last:
            return
        if self.reference is None:
            self.reference = _Reference(trainer)
        ref = self.reference
        if trainer.is_rank_zero:
            ref.log_floor(names)
        conditional = "label_accuracy" in names
        shares = self._share(trainer, ref.n, conditional)
        if shares is None:
            return  # the model cannot sample
        gathered = trainer.env.all_gather(shares)
        feats, main_lp, check_lp = (torch.cat([g[i] for g in gathered]) for i in range(3))
        labels = torch.cat([g[3] for g in gathered]) if conditional else None
        figures, reason = quality.sample_figures(
            ref.pair,
            feats,
            main_lp,
            check_lp,
            ref.reference,
            names=names,
            labels=labels,
            real_histogram=ref.real_histogram,
            seed=trainer.config.trainer.seed,
        )
        if reason is not None and trainer.is_rank_zero:
            log.warning("sample metrics at epoch %d: %s", epoch + 1, reason)
        metrics.update({f"val/{k}": float(v) for k, v in figures.items()})

    def _share(self, trainer: Any, n: int, conditional: bool) -> tuple[Any, ...] | None:
        """This rank's samples, as (features, main log-probs, check log-probs, labels), on the CPU."""
        assert self.reference is not None
        pair = self.reference.pair
        rank, world = trainer.rank, trainer.world_size
        count = n // world + (1 if rank < n % world else 0)
        if count == 0:
            empty = torch.zeros(0)
            return empty.view(0, pair.main.distance_dim), *(empty.view(0, pair.num_classes),) * 2, empty.long()
        start = rank * (n // world) + min(rank, n % world)
        labels = (torch.arange(start, start + count) % pair.num_classes) if conditional else None
        # The EMA weights when the run keeps them (trainer.ema_decay), as the sample grids do.
        with trainer.unwrapped(ema=True) as model, torch.random.fork_rng(devices=[]):
            # The same noise every epoch (and a different share per rank).
            torch.manual_seed(trainer.config.trainer.seed + 31337 + 7919 * rank)
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    images = model.sample(count, labels=labels.to(model.device) if labels is not None else None)
            except NotImplementedError:
                return None
            finally:
                model.train(was_training)
        images = images.detach().float().clamp(0, 1).cpu()
        if not torch.isfinite(images).all():
            images = torch.nan_to_num(images, nan=0.0)
        return (
            quality.classifier_features(pair.main, images),
            quality.log_probs(pair.main, images),
            quality.log_probs(pair.check_classifier, images),
            labels if labels is not None else torch.zeros(0, dtype=torch.long),
        )


plugin = SampleMetrics()

__all__ = ["SampleMetricsOptions", "classifiers_for", "plugin"]
