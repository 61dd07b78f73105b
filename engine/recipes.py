"""What every recipe script shares: arguments, smoke runs, and the closing summary.

A recipe is a plain script::

    CONFIG = {...}                        # the run config as a dict
    if __name__ == "__main__":
        engine.recipes.main(CONFIG, smoke={"trainer.epochs": 1})

so the same file runs as ``python recipes/x.py``, ``ray job submit -- python
recipes/x.py`` and ``ray submit cluster.yaml recipes/x.py``, and
``gentrain fit recipes/x.py`` reads its ``CONFIG``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from engine.config import build_raw
from engine.errors import GentrainError


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=5 scaling.num_workers=2")
    parser.add_argument("--smoke", action="store_true", help="a tiny run that checks the recipe works end to end")
    return parser.parse_args(argv)


def main(
    config: Mapping[str, Any],
    *,
    smoke: Mapping[str, Any] | None = None,
    argv: Sequence[str] | None = None,
    description: str = "",
) -> int:
    """Run a fit recipe: ``config``, then ``smoke`` overrides if ``--smoke``, then the command line's."""
    from engine.api import fit

    args = parse_args(argv, description)
    raw = build_raw(config, dict(smoke or {}) if args.smoke else {})
    try:
        result = fit(raw, args.overrides)
    except GentrainError as e:
        print(f"gentrain: error: {e}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


def summary(result: Any) -> str:
    """The closing lines a person reads: best metrics and where the outputs are."""
    run = result.run_dir
    lines = ["", f"run {result.config.run.name} finished"]
    shown = {k: v for k, v in result.metrics.items() if k.startswith("val/")} or result.metrics
    for key, value in shown.items():
        lines.append(f"  {key:<24} {value:.5g}")
    lines.append(f"  outputs: {run}")
    for name in ("config.yaml", "metrics.csv", "loss_curves.png", "samples", "tensorboard", "checkpoints"):
        if (run / name).exists():
            lines.append(f"    {name}")
    return "\n".join(lines)
