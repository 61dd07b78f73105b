"""What every recipe script shares: arguments, smoke runs, and the closing summary.

A recipe is a plain script::

    CONFIG = {...}                        # the run config as a dict
    if __name__ == "__main__":
        engine.recipes.main(CONFIG, smoke={"trainer.epochs": 1})

so the same file runs as ``python recipes/x.py``, ``ray job submit -- python
recipes/x.py`` and ``ray submit cluster.yaml recipes/x.py``, and
``gentrain fit recipes/x.py`` reads its ``CONFIG``.

A tuning recipe adds a search space of Ray Tune distributions::

    SPACE = {"optim.lr": tune.loguniform(1e-4, 1e-2), "model.beta": tune.uniform(0.5, 4)}
    if __name__ == "__main__":
        engine.recipes.tune_main(CONFIG, SPACE, smoke={"tune.num_samples": 2})

and ``gentrain tune recipes/x.py`` reads its ``CONFIG`` and ``SPACE``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from engine.config import build_raw, parse_overrides
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
    use_cluster_token()
    from engine.api import fit

    args = parse_args(argv, description)
    raw = build_raw(config, dict(smoke or {}) if args.smoke else {})
    try:
        raw = switch_model(raw, args.overrides)
        result = fit(raw, args.overrides)
    except GentrainError as e:
        print(f"gentrain: error: {e}", file=sys.stderr)
        return 2
    print(summary(result))
    return 0


def tune_main(
    config: Mapping[str, Any],
    space: Mapping[str, Any],
    *,
    smoke: Mapping[str, Any] | None = None,
    smoke_space: Mapping[str, Any] | None = None,
    mutations: Mapping[str, Any] | None = None,
    before: Callable[[dict[str, Any]], None] | None = None,
    argv: Sequence[str] | None = None,
    description: str = "",
) -> int:
    """Run a tuning recipe: search ``space`` around ``config`` (``smoke``/``smoke_space`` with ``--smoke``).

    ``mutations`` are what PBT perturbs (default: every searched key);
    ``before`` gets the final config dict first (to prepare a cache, say).
    Joins the Ray cluster it finds (``RAY_ADDRESS``, or one started with
    ``ray start``), else starts a local one; ends with the table of trials and
    where the outputs are.
    """
    use_cluster_token()
    from engine.ray import tune

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. tune.num_samples=16 trainer.epochs=5")
    parser.add_argument("--smoke", action="store_true", help="a tiny search that checks the recipe works end to end")
    parser.add_argument("--resume", action="store_true", help="continue run.name's search (else the newest)")
    parser.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2, 3], help="Ray Tune's console output")
    args = parser.parse_args(argv)
    raw = build_raw(config, dict(smoke or {}) if args.smoke else {})
    searched = smoke_space if args.smoke and smoke_space is not None else space
    try:
        raw = switch_model(raw, args.overrides)
        if before is not None:
            before(build_raw(raw, args.overrides))
        result = tune(
            raw, searched, args.overrides, hyperparam_mutations=mutations, resume=args.resume, verbose=args.verbose
        )
    except GentrainError as e:
        print(f"gentrain: error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def use_cluster_token(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set ``RAY_AUTH_MODE=token`` for a client of ``RAY_ADDRESS`` when a Ray token is at hand; whether it did.

    The cluster files start Ray with token authentication. Ray turns it on in
    a client by itself only for a cluster it finds (``ray start`` on this
    machine); with an explicit ``RAY_ADDRESS`` and ``RAY_AUTH_MODE`` unset the
    connection fails. Here a token is at hand when ``RAY_AUTH_TOKEN`` is set,
    or the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` exists (Ray's
    places); a token also works against a cluster without authentication. An
    ``RAY_AUTH_MODE`` already set, or ``RAY_ADDRESS`` unset or ``local``, is
    left as it is. Call it before Ray is imported.
    """
    env = os.environ if environ is None else environ
    address = env.get("RAY_ADDRESS", "")
    if "RAY_AUTH_MODE" in env or address in ("", "local", "auto"):
        return False
    token_path = env.get("RAY_AUTH_TOKEN_PATH")
    files = [Path(token_path).expanduser()] if token_path else []
    files.append(Path(env.get("HOME") or Path.home()).expanduser() / ".ray" / "auth_token")
    if not env.get("RAY_AUTH_TOKEN") and not any(f.is_file() for f in files):
        return False
    env["RAY_AUTH_MODE"] = "token"
    return True


def switch_model(raw: Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` ready for ``overrides``: without its model's fields if they switch ``model.name`` to another model.

    A recipe's model section holds fields of its own model (``beta`` for a
    VAE, ``loss`` for a GAN); ``model.name=gan`` on a VAE recipe would
    otherwise fail with one "unknown field" error for each. The fields the
    overrides set again are applied after, as usual. Prints one note naming
    what was dropped.
    """
    out = dict(raw)
    items = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    model = out.get("model")
    if "model.name" not in items or not isinstance(model, Mapping):
        return out
    old, new = model.get("name"), items["model.name"]
    set_again = {key.split(".")[1] for key in items if key.startswith("model.")}
    dropped = [k for k in model if k not in set_again and k != "name"]
    if old is None or old == new or not dropped:
        return out
    out["model"] = {"name": old}
    note = f"gentrain: note: model.name={new} replaces {old}; dropped {old}'s fields: {', '.join(dropped)}"
    print(note, file=sys.stderr)
    return out


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
