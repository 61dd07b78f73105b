"""What the tracker plugins (TensorBoard, MLflow, W&B) share: the flattened config and an epoch's grid files."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.lr": 0.001, "model.hidden": [16], ...}``: the nested run config as dotted keys, leaves as they are."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def epoch_grids(run_dir: Path, epoch: int) -> dict[str, Path]:
    """The PNG grids ``sample_grids`` wrote for 1-based ``epoch``: ``{"samples": path, "reconstructions": path}``."""
    found = sorted((Path(run_dir) / "samples").glob(f"epoch={epoch:04d}-*.png"))
    return {p.stem.split("-", 1)[1]: p for p in found}
