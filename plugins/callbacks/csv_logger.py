"""Metrics to ``<run dir>/metrics.csv``: one row per epoch, written by rank 0.

A resumed run appends to the same file; a column that appears later widens
the file (it is rewritten with the new header).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine


@dataclass(frozen=True)
class CsvOptions:
    """``callbacks.csv``: write ``metrics.csv`` (rank 0, one row per epoch)."""

    csv: bool = True


@engine.hookimpl
def gentrain_register_options(registry: engine.Registry[Any]) -> None:
    registry.add("csv_logger", CsvOptions, CsvOptions, kind="callbacks")


@engine.hookimpl
def gentrain_on_train_epoch_end(trainer: Any, metrics: dict[str, float]) -> None:
    if not (trainer.is_rank_zero and trainer.config.callbacks.csv):
        return
    path = Path(trainer.run_dir) / "metrics.csv"
    rows: list[dict[str, Any]] = []
    fields: list[str] = []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if float(r.get("epoch") or 0) < metrics.get("epoch", 0)]
    for key in metrics:
        if key not in fields:
            fields.append(key)
    rows.append(dict(metrics))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
