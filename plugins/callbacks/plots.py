"""``<run dir>/loss_curves.png``: every metric of ``metrics.csv`` over epochs, redrawn each epoch on rank 0."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import engine


def plot_metrics(csv_path: Path, out: Path) -> None:
    """Draw one panel per metric group (``train/``, ``val/``) from a metrics CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("epoch", "step")]
    groups = sorted({k.split("/", 1)[0] for k in keys})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.5), squeeze=False)
    epochs = [float(r["epoch"]) for r in rows]
    for ax, group in zip(axes[0], groups, strict=True):
        for key in (k for k in keys if k.split("/", 1)[0] == group):
            values = [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]
            ax.plot(epochs, values, marker="o", ms=3, label=key.split("/", 1)[-1])
        ax.set_title(group)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


@engine.hookimpl(trylast=True)  # after the CSV logger has written this epoch's row
def gentrain_on_train_epoch_end(trainer: Any) -> None:
    if not (trainer.is_rank_zero and getattr(trainer.config.callbacks, "csv", False)):
        return
    path = Path(trainer.run_dir) / "metrics.csv"
    if path.exists():
        plot_metrics(path, Path(trainer.run_dir) / "loss_curves.png")
