"""Ray Tune driver: a hyperparameter search in which every trial is one gentrain training run.

:func:`tune` is what ``gentrain tune`` and the tuning recipes call::

    driver (engine.tune)                 Tune trial actor (one per trial)            Ray Train workers
    --------------------                 --------------------------------            -----------------
    check config, every searched key,    gentrain_trial(params)  (engine.ray.trial)
      the metric, PBT's mutations          config = base + params, run.name = trial id
      (engine.ray.space)                   adopt a PBT donor's checkpoint, if any
    connect to or start Ray                num_workers = 0: loop.train() right here
      (engine.ray.cluster)                 num_workers > 0: make_trainer(), fit in a   train_loop_per_worker
    max_concurrent_trials from the           thread; a Train callback in the            (engine.ray.train)
      cluster's resources                    controller hands each report to this
    Tuner(...).fit()            <-------     thread: tune.report(metrics, pointer)
    table, trials.csv, trials.png,
      best.yaml (engine.ray.results)

Resources. Tune reserves resources only for a trial's driver, so the Train
workers a trial starts are not counted: ``max_concurrent_trials`` is set to
the number of trials whose workers fit on the cluster at once
(:func:`engine.ray.cluster.max_concurrent`), and a driver takes a little
logical memory and no CPU (:func:`engine.ray.cluster.trial_resources`).
``num_workers=0`` trials train in their own actor, which holds one worker's
resources.

Where things are. An experiment lives in ``<run.output_dir>/<run.name>``
(``run.name`` defaults to ``tune-<model>-<time>``): Tune's own files under
``.ray/<name>/`` (one folder per trial there, named by the trial id; no TensorBoard
files of Tune's), ``runs/<trial id>/`` (each trial's gentrain run directory:
config.yaml, metrics.csv, checkpoints, tensorboard, samples, ``tune-history.jsonl``;
Ray's files under its ``.ray/``), and at the end ``trials.csv``, ``trials.png`` and
``best.yaml`` (the best trial's whole run config, named ``<experiment>-best``).
How a trial's checkpoints reach Tune, and how PBT clones them, is told in
:mod:`engine.ray.trial`.

Failures. A trial that fails (a raise, a dead worker once
``scaling.max_failures`` worker-group restarts are spent, a dead trial actor)
is started again by Tune up to ``tune.max_failures`` times; its run name is
its trial id, so it resumes from the newest checkpoint in its run directory.
``tune(..., resume=True)`` (``gentrain tune --resume``) continues an
interrupted experiment: finished trials stay finished, unfinished and failed
ones resume from their checkpoints. A metric that a trial's validation does
not report ends the whole search with a :class:`~engine.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from engine.config import RunConfig, ScalingConfig, TuneSection, build_raw, resolve, set_dotted
from engine.errors import ConfigError, suggest
from engine.paths import resolve_output_dir
from engine.plugins import PluginManager, using
from engine.prepare import prepare
from engine.ray import cluster
from engine.ray import console as ray_console
from engine.ray.results import TuneResult, summarize
from engine.ray.space import check_mutations, check_space, is_grid, normalize_space, pbt_mutations, representative
from engine.ray.train import RAY_FOLDER
from engine.ray.trial import METRIC_MARKER, TrialSetup, make_trainable

log = logging.getLogger(__name__)

#: The file in an experiment directory that lets ``--resume`` rebuild the trials. (After a restore,
#: Tune re-uploads the top-level ``*.json`` of the experiment directory from its staging copy now and
#: then; this file never changes and is read only before Tune starts, so that does no harm.)
SETUP_FILE = "gentrain-tune.json"
#: Metrics the model reports, in order of preference, when ``tune.metric`` is not set.
DEFAULT_METRICS = ("val/loss", "val/elbo", "val/recon")


def tune(
    config: RunConfig | Mapping[str, Any],
    search_space: Mapping[str, Any] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    hyperparam_mutations: Mapping[str, Any] | None = None,
    resume: bool = False,
    plugins: PluginManager | None = None,
    verbose: int = 1,
) -> TuneResult:
    """Search hyperparameters of ``config``: every trial is one training run, on its own Ray Train workers.

    :param config: the run config every trial starts from (a :class:`RunConfig` or a dict);
        its ``tune`` section says what to optimise and how (:class:`~engine.config.TuneSection`).
    :param search_space: ``{dotted config key: distribution}`` with Ray Tune's distributions
        (``tune.loguniform(1e-4, 1e-2)``, ``tune.choice([8, 16])``, ``tune.grid_search([...])``),
        the file form (``{"loguniform": [1e-4, 1e-2]}``, :func:`load_space`) or constants.
    :param overrides: dotted overrides applied to ``config``.
    :param hyperparam_mutations: what PBT perturbs (default: every searched key).
    :param resume: continue the experiment named ``run.name`` (default: the newest
        ``tune-<model>-*`` in ``run.output_dir``) where it stopped.
    :param verbose: the console: 0 nothing, 1 gentrain's compact table of trials (a row per trial
        event), 2 and 3 Ray Tune's own status tables (its ``verbose`` 2 and 3) with every trial's lines.
    :raises ConfigError: before Ray starts, for a bad config, a key that is not a config field,
        a value a field does not allow, a metric the model does not report, a missing optional package.
    """
    with using(plugins) as pm:
        raw = config.to_dict() if isinstance(config, RunConfig) else dict(config)
        raw = build_raw(raw, overrides)
        given = resolve(raw, pm)
        space = normalize_space(search_space or {})
        output_dir = Path(resolve_output_dir(given.run.output_dir))
        scheduler = search_alg = None
        if resume:
            experiment_dir = _find_experiment(output_dir, given)
            setup = TrialSetup.from_json(json.loads((experiment_dir / SETUP_FILE).read_text()))
            setup.env = cluster.driver_env()
            settings = resolve(setup.base, pm).tune
        else:
            if not space:
                raise ConfigError.one("<search space>", {}, "is empty: give at least one dotted key to search")
            check_space(raw, space, pm)
            name = given.run.name or f"tune-{given.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            experiment_dir = output_dir / name
            if (experiment_dir / SETUP_FILE).exists():
                raise ConfigError.one(
                    "run.name",
                    name,
                    f"an experiment of this name exists in {output_dir}; resume it (gentrain tune --resume, "
                    f"tune(..., resume=True)) or choose another run.name",
                )
            sample = build_raw(raw, representative(space))
            set_dotted(sample, "run.name", "trial")
            prepared, dataset = prepare(sample, (), pm)
            settings = prepared.tune
            metric = choose_metric(prepared, dataset, pm)
            setup = _setup(prepared, experiment_dir, metric)
            epochs = prepared.trainer.epochs
            scheduler = make_scheduler(settings, epochs, setup, space, hyperparam_mutations)
            if settings.scheduler == "pbt":
                if hyperparam_mutations:
                    check_space(raw, normalize_space(hyperparam_mutations), pm)
                check_mutations(sample, dataset, pbt_mutations(space, hyperparam_mutations), pm)
            search_alg = make_search(settings, space)
        scaling = resolve(setup.base, pm).scaling
        with cluster.ray_environment():
            # Below verbose 2 the trials' own output stays in Ray's log files.
            found = cluster.connect(scaling, log_to_driver=verbose >= 2)
            concurrency = _concurrency(settings, scaling, found)
            if found.local:
                # Spot-instance preemption cannot happen on this machine (ray#53727).
                watcher = cluster.PREEMPTION_WATCHER_ENV
                setup.env[watcher] = os.environ.get(watcher, "0")
            setup.driver_resources = cluster.trial_resources(scaling)
            # gentrain tune's own table (verbose 1) replaces the trials' console lines; verbose 2 shows both.
            setup.env[ray_console.TRIAL_CONSOLE_ENV] = "on" if verbose >= 2 else ray_console.OFF
            if verbose == 1:
                ray_console.say(
                    f"tune {experiment_dir.name}: metric {setup.metric} ({setup.mode}), up to {concurrency} "
                    f"trial(s) at a time; each trial's run in {experiment_dir / 'runs'}/<trial>"
                )
            if not resume:
                experiment_dir.mkdir(parents=True, exist_ok=True)
                (experiment_dir / SETUP_FILE).write_text(json.dumps(setup.to_json(), indent=1))
            grid = _run_tuner(setup, space, settings, scheduler, search_alg, concurrency, resume, verbose)
        return summarize(grid, setup, None if resume else str(output_dir), pm)


def _setup(prepared: RunConfig, experiment_dir: Path, metric: str) -> TrialSetup:
    base = prepared.to_dict()
    base["run"] = {**base["run"], "name": None, "output_dir": str(experiment_dir / "runs"), "resume": "auto"}
    t = prepared.tune
    keep = prepared.trainer.keep_checkpoints
    if t.scheduler == "pbt":
        # PBT clones the checkpoint a trial had at its last perturbation time.
        every = prepared.trainer.checkpoint_every
        keep = max(keep, 2 * math.ceil(t.perturbation_interval / every) + 2)
    return TrialSetup(
        base=base,
        experiment_dir=str(experiment_dir),
        metric=metric,
        mode=t.mode,
        env=cluster.driver_env(),
        keep=keep,
        driver_resources={},
    )


def _find_experiment(output_dir: Path, given: RunConfig) -> Path:
    if given.run.name is not None:
        found = output_dir / given.run.name
        if not (found / SETUP_FILE).is_file():
            raise ConfigError.one("run.name", given.run.name, f"no gentrain tune experiment in {found} to resume")
        return found
    candidates = sorted(
        (p for p in output_dir.glob(f"tune-{given.model.name}-*") if (p / SETUP_FILE).is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise ConfigError.one(
            "run.name", None, f"no tune-{given.model.name}-* experiment in {output_dir} to resume; set run.name"
        )
    return candidates[-1]


def known_metrics(config: RunConfig, dataset: Any, plugins: PluginManager) -> set[str] | None:
    """The metric keys the loop will report for this model, from one step on four images (``None``: unknown)."""
    from engine.data import to_float

    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = plugins.models.get(config.model.name).obj(config.model.params, dataset.spec)
            batch = (to_float(dataset.images[:4]), dataset.labels[:4])
            phases = model.phases()
            keys = {"epoch", "step"}
            for phase in phases:
                prefix = f"{phase.name}/" if len(phases) > 1 else ""
                keys |= {f"train/{prefix}{k}" for k in model.training_step(batch, phase.name)}
            if config.data.val_fraction > 0:
                model.eval()
                with torch.no_grad():
                    keys |= {f"val/{k}" for k in model.validation_step(batch)}
    except Exception as e:  # a model that cannot run on four images: the trials will tell
        log.debug("could not list the metrics of %s: %s", config.model.name, e)
        return None
    # Metrics plugins add at the end of validation (the sample metrics, say).
    for added in plugins.hook.gentrain_validation_metrics(config=config):
        keys |= set(added or ())
    return keys


def choose_metric(config: RunConfig, dataset: Any, plugins: PluginManager) -> str:
    """``tune.metric``, checked against what the model reports; a default if it is not set."""
    known = known_metrics(config, dataset, plugins)
    metric = config.tune.metric
    # Plugins may add metrics at the end of validation (a sample score, say).
    adders = [
        name
        for name, info in plugins.info.items()
        if not info.builtin
        and ("gentrain_on_validation_end" in info.hooks or "gentrain_on_train_epoch_end" in info.hooks)
    ]
    if metric is None:
        for candidate in DEFAULT_METRICS:
            if known is not None and candidate in known:
                return candidate
        listed = ", ".join(sorted(known)) if known else "unknown"
        raise ConfigError.one("tune.metric", None, f"required for model {config.model.name!r}; it reports: {listed}")
    if known is None or metric in known or adders:
        return metric
    raise ConfigError.one(
        "tune.metric",
        metric,
        f"is not reported by model {config.model.name!r}{suggest(metric, known)}; it reports: "
        f"{', '.join(sorted(known))}",
    )


def make_scheduler(
    settings: TuneSection,
    epochs: int,
    setup: TrialSetup,
    space: Mapping[str, Any],
    mutations: Mapping[str, Any] | None,
) -> Any:
    """Tune's trial scheduler for ``tune.scheduler``; time is counted in epochs."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "asha":
        if settings.grace_period > epochs:
            raise ConfigError.one(
                "tune.grace_period", settings.grace_period, f"must not exceed trainer.epochs={epochs}"
            )
        return ASHAScheduler(
            time_attr="epoch",
            max_t=epochs,
            grace_period=settings.grace_period,
            reduction_factor=settings.reduction_factor,
        )
    if settings.scheduler == "pbt":
        every = int(setup.base["trainer"]["checkpoint_every"])
        if settings.perturbation_interval % every:
            raise ConfigError.one(
                "tune.perturbation_interval",
                settings.perturbation_interval,
                f"must be a multiple of trainer.checkpoint_every={every} (PBT clones checkpoints)",
            )
        found = pbt_mutations(space, mutations)
        if not found:
            raise ConfigError.one(
                "tune.scheduler", "pbt", "needs hyperparameters to perturb: a range or choice in the search space"
            )
        return _final_epoch_pbt()(
            last_epoch=epochs,
            time_attr="epoch",
            perturbation_interval=settings.perturbation_interval,
            hyperparam_mutations=found,
            quantile_fraction=settings.quantile_fraction,
            resample_probability=settings.resample_probability,
        )
    return FIFOScheduler()


def _final_epoch_pbt() -> Any:
    """Tune's PBT, except that a trial's last epoch is never a perturbation point.

    Tune's PBT also exploits on a trial's final result: the trial then takes the
    donor's perturbed hyperparameters and restores the donor's last checkpoint,
    with no epoch left to train, so its reported config (and ``best.yaml``) would
    name values it never trained with.
    """
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class FinalEpochPBT(PopulationBasedTraining):
        def __init__(self, *, last_epoch: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.last_epoch = last_epoch

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> Any:
            if result.get(self._time_attr, 0) >= self.last_epoch:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    return FinalEpochPBT


def make_search(settings: TuneSection, space: Mapping[str, Any]) -> Any:
    """Tune's search algorithm for ``tune.search``; Optuna and HyperOpt are optional packages.

    ``None`` for random and grid search: Tune's own variant generator, built
    in :func:`_run_tuner` once the number of concurrent trials is known (Tune
    ignores ``max_concurrent_trials`` for a generator passed in).
    """
    name = settings.search
    if name in ("random", "grid"):
        return None
    package = {"optuna": "optuna", "hyperopt": "hyperopt"}[name]
    if importlib.util.find_spec(package) is None:
        extra = "pip install 'gentrain[search]'" if name == "optuna" else "pip install hyperopt"
        raise ConfigError.one("tune.search", name, f"needs the {package} package, which is not installed: {extra}")
    grids = [k for k, v in space.items() if is_grid(v)]
    if grids:
        raise ConfigError.one(
            "tune.search", name, f"cannot search grids ({', '.join(grids)}); use tune.choice or tune.search=random"
        )
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=settings.seed)
    from ray.tune.search.hyperopt import HyperOptSearch

    return HyperOptSearch(random_state_seed=settings.seed)


def _concurrency(settings: TuneSection, scaling: ScalingConfig, found: cluster.Cluster) -> int:
    """How many trials run at once: ``tune.max_concurrent_trials``, else as many as the cluster holds."""
    if found.autoscaling:
        return settings.max_concurrent_trials or settings.num_samples
    per_worker = cluster.worker_resources(scaling)
    room = cluster.max_concurrent(scaling, per_worker, found.nodes)
    if room == 0:
        raise ConfigError.one(
            "scaling", dict(per_worker), "the Ray cluster has no node with room for one trial's resources"
        )
    return settings.max_concurrent_trials or room


def _run_tuner(
    setup: TrialSetup,
    space: Mapping[str, Any],
    settings: TuneSection,
    scheduler: Any,
    search_alg: Any,
    concurrency: int,
    resume: bool,
    verbose: int,
) -> Any:
    from ray import tune as ray_tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = ray_tune.with_resources(make_trainable(setup), dict(setup.driver_resources))
    experiment_dir = Path(setup.experiment_dir)
    # Tune's own files under <experiment>/.ray/<name>/ (an experiment from before that: at the top).
    tune_dir = experiment_dir / RAY_FOLDER / experiment_dir.name
    if resume and not tune_dir.is_dir():
        tune_dir = experiment_dir
    # Tune's result.json and progress.csv, but not a second TensorBoard tree per trial; below
    # verbose 2 Tune's older console output, which (unlike the new one) prints nothing at verbose 0.
    no_tbx = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", **({"RAY_AIR_NEW_OUTPUT": "0"} if verbose < 2 else {})}
    callbacks: list[Any] = [CSVLoggerCallback(), JsonLoggerCallback()]
    if verbose == 1:
        callbacks.append(ray_console.tune_table(setup.metric, setup.mode, int(setup.base["trainer"]["epochs"])))
    with _quiet_tune(), cluster.ray_environment(no_tbx):
        if resume:
            if not ray_tune.Tuner.can_restore(str(tune_dir)):
                raise ConfigError.one(
                    "run.name",
                    experiment_dir.name,
                    f"Tune saved no experiment state in {experiment_dir} before it stopped, so there is nothing "
                    f"to resume; start the search again under another run.name",
                )
            (experiment_dir / METRIC_MARKER).unlink(missing_ok=True)
            tuner = ray_tune.Tuner.restore(
                str(tune_dir), trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = ray_tune.Tuner(
                trainable,
                param_space=dict(space),
                tune_config=ray_tune.TuneConfig(
                    metric=setup.metric,
                    mode=setup.mode,
                    num_samples=settings.num_samples,
                    scheduler=scheduler,
                    search_alg=search_alg
                    or BasicVariantGenerator(max_concurrent=concurrency, random_state=settings.seed),
                    max_concurrent_trials=None if search_alg is None else concurrency,
                    reuse_actors=False,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=ray_tune.RunConfig(
                    name=experiment_dir.name,
                    storage_path=str(experiment_dir / RAY_FOLDER),
                    failure_config=ray_tune.FailureConfig(max_failures=settings.max_failures),
                    # Tune keeps every pointer (a few bytes each); the files they name are
                    # pruned to setup.keep per trial (_pin). Tune's own pruning, under PBT,
                    # trips over checkpoints that exploited trials point to.
                    checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=None),
                    stop=_stopper_class()(str(experiment_dir)),
                    # Tune's own status tables from verbose 2 on; verbose 1 is gentrain's table.
                    verbose=verbose if verbose >= 2 else 0,
                    callbacks=callbacks,
                ),
            )
        with warnings.catch_warnings():
            # Each trial gets a fresh actor on purpose: its environment and plugins are the driver's.
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance")
            # Tune leaves the result.json of errored trials open when a stopper ends the search (Ray 2.60).
            warnings.simplefilter("ignore", ResourceWarning)
            grid = tuner.fit()
            gc.collect()
    marker = experiment_dir / METRIC_MARKER
    if marker.exists():
        raise ConfigError.one("tune.metric", setup.metric, marker.read_text().partition(": ")[2].strip() or "missing")
    return grid


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's INFO lines about each checkpoint and trial; warnings and errors stay."""
    names = ["ray.tune", "ray.train", "ray.air"]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(max(logging.WARNING, saved[n]))
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _stopper_class() -> type:
    from ray.tune import Stopper

    class MetricMissingStopper(Stopper):
        """Ends the whole search once a trial found that the metric is never reported."""

        def __init__(self, experiment_dir: str) -> None:
            self.marker = Path(experiment_dir) / METRIC_MARKER

        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return self.marker.exists()

    return MetricMissingStopper


__all__ = ["DEFAULT_METRICS", "SETUP_FILE", "choose_metric", "make_scheduler", "make_search", "tune"]
