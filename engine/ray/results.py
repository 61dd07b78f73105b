"""The outcome of a search: the table of trials, ``trials.csv``, ``trials.png`` and ``best.yaml``.

:func:`summarize` turns Tune's ``ResultGrid`` into a :class:`TuneResult`:
one :class:`TrialSummary` per trial (best first), each trial's metric over
epochs from its run directory's history (which survives restarts and PBT
clones), and the best trial's whole run config, named
``<experiment>-best``, which ``gentrain fit best.yaml`` trains.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import RunConfig, resolve, set_dotted
from engine.errors import TrainingError
from engine.plugins import PluginManager
from engine.ray.space import native
from engine.ray.train import root_cause
from engine.ray.trial import HISTORY, TrialSetup


@dataclass
class TrialSummary:
    """One trial, as the table, the CSV and the plot show it."""

    trial_id: str
    params: dict[str, Any]
    epochs: int
    metric: float | None
    best: float | None
    status: str
    run_dir: Path
    error: str | None = None
    history: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class TuneResult:
    """What :func:`tune` returns."""

    experiment_dir: Path
    metric: str
    mode: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config: RunConfig | None
    best_config_path: Path | None
    csv_path: Path
    plot_path: Path | None
    result_grid: Any = None

    def table(self) -> str:
        """The trials, best first: id, searched values, epochs, last and best metric, status."""
        keys = sorted({k for t in self.trials for k in t.params})
        head = ["trial", *keys, "epochs", self.metric, "best", "status"]
        rows = [
            [t.trial_id, *(_fmt(t.params.get(k)) for k in keys), str(t.epochs), _fmt(t.metric), _fmt(t.best), t.status]
            for t in self.trials
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        """The table and where the outputs are."""
        lines = ["", f"{len(self.trials)} trial(s), {self.metric} ({self.mode}):", self.table(), ""]
        if self.best is not None:
            lines.append(f"best trial: {self.best.trial_id}  {self.metric} = {_fmt(self.best.metric)}")
        lines.append(f"experiment: {self.experiment_dir}")
        lines.append(f"  trials.csv: {self.csv_path}")
        if self.plot_path is not None:
            lines.append(f"  trials.png: {self.plot_path}")
        if self.best_config_path is not None:
            lines.append(f"  best.yaml:  {self.best_config_path}   (gentrain fit {self.best_config_path})")
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def summarize(grid: Any, setup: TrialSetup, output_dir: str | None, plugins: PluginManager) -> TuneResult:
    """Turn Tune's results into the table, ``trials.csv``, ``trials.png`` and ``best.yaml``.

    :param output_dir: where ``best.yaml``'s run goes (default: next to the experiment).
    :param plugins: the driver's plugins, against which the best config is resolved.
    """
    experiment_dir = Path(setup.experiment_dir)
    epochs_max = int(setup.base["trainer"]["epochs"])
    sign = 1.0 if setup.mode == "min" else -1.0
    trials = []
    for result in grid:
        trials.append(_summary(result, setup, epochs_max, sign))
    trials.sort(key=lambda t: (t.metric is None, sign * t.metric if t.metric is not None else 0.0, t.trial_id))
    best = next((t for t in trials if t.metric is not None and t.error is None), None)
    if best is None:
        best = next((t for t in trials if t.metric is not None), None)
    csv_path = experiment_dir / "trials.csv"
    write_csv(trials, setup, csv_path)
    plot_path = plot_trials(trials, setup.metric, experiment_dir / "trials.png")
    best_config = best_path = None
    if best is not None:
        best_config = best_run_config(setup, best, output_dir, plugins)
        best_path = experiment_dir / "best.yaml"
        best_config.save(best_path)
    elif trials and all(t.error for t in trials):
        raise TrainingError(
            f"every trial of {experiment_dir} failed; the first: {trials[0].trial_id}: {trials[0].error}"
        )
    return TuneResult(
        experiment_dir=experiment_dir,
        metric=setup.metric,
        mode=setup.mode,
        trials=trials,
        best=best,
        best_config=best_config,
        best_config_path=best_path,
        csv_path=csv_path,
        plot_path=plot_path,
        result_grid=grid,
    )


def _summary(result: Any, setup: TrialSetup, epochs_max: int, sign: float) -> TrialSummary:
    metric = setup.metric
    trial_id = Path(result.path).name
    params = {k: native(result.config.get(k)) for k in result.config}
    run_dir = Path(setup.base["run"]["output_dir"]) / trial_id
    frame = result.metrics_dataframe
    history: list[tuple[float, float]] = []
    if (run_dir / HISTORY).is_file():
        for line in (run_dir / HISTORY).read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                history.append((float(entry["epoch"]), float(entry[metric])))
    elif frame is not None and len(frame) and metric in frame and "epoch" in frame:
        rows = frame[["epoch", metric]].dropna()
        history = [(float(e), float(v)) for e, v in zip(rows["epoch"], rows[metric], strict=True)]
    last = result.metrics.get(metric) if result.metrics else None
    epochs = int(result.metrics.get("epoch", 0)) if result.metrics else 0
    best = None
    if history:
        best = sign * min(sign * v for _, v in history)
    error = None
    if result.error is not None:
        text = str(root_cause(result.error)).strip().splitlines()
        error = f"{type(root_cause(result.error)).__name__}: {text[0] if text else ''}"
        status = "error"
    elif epochs >= epochs_max:
        status = "completed"
    else:
        status = "stopped early"
    return TrialSummary(
        trial_id=trial_id,
        params=params,
        epochs=epochs,
        metric=float(last) if isinstance(last, (int, float)) else None,
        best=best,
        status=status,
        run_dir=run_dir,
        error=error,
        history=history,
    )


def write_csv(trials: list[TrialSummary], setup: TrialSetup, path: Path) -> None:
    """``trials.csv``: a row per trial, best first: searched values, epochs, last and best metric, status, where."""
    keys = sorted({k for t in trials for k in t.params})
    metric = setup.metric
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", *keys, "epochs", metric, f"best {metric}", "status", "run_dir", "error"])
        for t in trials:
            values = [t.params.get(k, "") for k in keys]
            outcome = [t.status, str(t.run_dir), t.error or ""]
            writer.writerow([t.trial_id, *values, t.epochs, _csv(t.metric), _csv(t.best), *outcome])


def _csv(value: float | None) -> str:
    return "" if value is None else repr(value)


def plot_trials(trials: list[TrialSummary], metric: str, path: Path) -> Path | None:
    """Every trial's metric over epochs, one line per trial."""
    if not any(t.history for t in trials):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trials:
        if t.history:
            xs, ys = zip(*t.history, strict=True)
            label = t.trial_id + " " + " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in t.params.items())
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of every trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def best_run_config(setup: TrialSetup, best: TrialSummary, output_dir: str | None, plugins: PluginManager) -> RunConfig:
    """The best trial's whole run config, named for a new run: ``gentrain fit best.yaml`` trains it."""
    raw = copy.deepcopy(setup.base)
    for key, value in best.params.items():
        set_dotted(raw, key, value)
    experiment_dir = Path(setup.experiment_dir)
    raw["run"] = {
        **raw["run"],
        "name": f"{experiment_dir.name}-best",
        "output_dir": output_dir or str(experiment_dir.parent),
        "resume": "auto",
    }
    return resolve(raw, plugins)


__all__ = ["TrialSummary", "TuneResult", "best_run_config", "plot_trials", "summarize", "write_csv"]
