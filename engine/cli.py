"""``gentrain``: the command line.

::

    gentrain fit [CONFIG.yaml | RECIPE.py] [key.path=value ...]
    gentrain tune [CONFIG.yaml | RECIPE.py] [key.path=value ...] --space SPACE.yaml [--resume]
    gentrain plugins [-v] [--json]
    gentrain config show [CONFIG.yaml | RECIPE.py] [key.path=value ...] [--json]
    gentrain new-plugin NAME [--dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, GentrainError


def load_config_source(source: str | None) -> dict[str, Any]:
    """A config dict from a YAML file, a recipe script (its ``CONFIG`` dict), or nothing."""
    if source is None:
        return {}
    path = Path(source)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError.one("<recipe>", source, "no such file")
        spec = importlib.util.spec_from_file_location(f"gentrain_recipe_{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # a recipe's main() runs only under __main__
        config = getattr(module, "CONFIG", None)
        if not isinstance(config, dict):
            raise ConfigError.one("<recipe>", source, "a recipe used as a config must define a dict CONFIG")
        return config
    from engine.config import read_yaml

    return read_yaml(path)


def cmd_fit(args: argparse.Namespace) -> int:
    from engine.api import fit
    from engine.recipes import switch_model, use_cluster_token

    use_cluster_token()  # before Ray is imported
    source, overrides = args.config, list(args.overrides)
    # `gentrain fit model.name=ae ...` has no file: the first word is an override.
    if source is not None and "=" in source and not Path(source).exists():
        source, overrides = None, [source, *overrides]
    if getattr(args, "check", False):
        from engine.api import prepare
        from engine.loop import run_dir_of
        from engine.rundir import check_resume

        prepared, dataset = prepare(switch_model(load_config_source(source), overrides), overrides)
        check_resume(prepared)
        print(f"config ok: {prepared.model.name} on {len(dataset)} {prepared.data.name} images; nothing was trained")
        print(f"run directory would be: {run_dir_of(prepared)}")
        return 0
    result = fit(switch_model(load_config_source(source), overrides), overrides)
    print(f"run directory: {result.run_dir}")
    if result.checkpoint is not None:
        print(f"last checkpoint: {result.checkpoint}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from engine.ray import load_space, tune
    from engine.recipes import switch_model, use_cluster_token

    use_cluster_token()  # before Ray is imported
    source, overrides = args.config, list(args.overrides)
    if source is not None and "=" in source and not Path(source).exists():
        source, overrides = None, [source, *overrides]
    space: dict[str, Any] = {}
    if args.space is not None:
        space = load_space(args.space)
    elif source is not None and source.endswith(".py"):
        space = dict(_recipe_attr(source, "SPACE") or {})
    if not space and not args.resume:
        raise ConfigError.one("--space", None, "a search space file is required (or a recipe defining SPACE)")
    config = switch_model(load_config_source(source), overrides)
    result = tune(config, space, overrides, resume=args.resume, verbose=args.verbose)
    print(result.summary())
    return 0


def _recipe_attr(source: str, name: str) -> Any:
    path = Path(source)
    spec = importlib.util.spec_from_file_location(f"gentrain_recipe_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name, None)


def cmd_plugins(args: argparse.Namespace) -> int:
    from engine.plugins import current

    pm = current()
    if args.verbose or args.json:
        from engine import describe

        data = describe.describe(pm)
        print(describe.to_json(data) if args.json else describe.to_text(data))
        return 0
    registries = (("models", pm.models), ("losses", pm.losses), ("datasets", pm.datasets))
    for name, info in sorted(pm.info.items(), key=lambda kv: (not kv[1].builtin, kv[0])):
        origin = "built-in" if info.builtin else (info.dist or "GENTRAIN_PLUGINS")
        print(f"{name} {info.version} ({origin}: {info.module})")
        for label, registry in registries:
            entries = registry.by_plugin(name)
            if entries:
                print(f"  {label}: " + ", ".join(e.name + (f" [{e.kind}]" if e.kind else "") for e in entries))
        events = [h for h in info.hooks if h.startswith("gentrain_on_") or h == "gentrain_make_optimizer"]
        if events:
            print("  trainer hooks: " + ", ".join(events))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    import json

    from engine.describe import config_show
    from engine.plugins import current
    from engine.recipes import switch_model

    source, overrides = args.config, list(args.overrides)
    if source is not None and "=" in source and not Path(source).exists():
        source, overrides = None, [source, *overrides]
    config = config_show(switch_model(load_config_source(source), overrides), overrides, current())
    print(json.dumps(config.to_dict(), indent=2) if args.json else config.to_yaml(), end="" if not args.json else "\n")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from engine.scaffold import new_plugin

    root = new_plugin(args.name, Path(args.dir))
    print(f"wrote {root}: pip install -e {root} && pytest {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gentrain", description="Train generative models with plugins and Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="train a model", description="Train a model from a config and dotted overrides.")
    p.add_argument("config", nargs="?", help="a YAML config or a recipe .py defining CONFIG (optional)")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. trainer.epochs=5 model.latent_dim=32")
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config, data, model and paths as a run would, then stop: nothing is trained or written",
    )
    p.set_defaults(func=cmd_fit)
    p = sub.add_parser(
        "tune",
        help="search hyperparameters (Ray Tune; every trial a training run)",
        description="Search hyperparameters: every trial is one training run with its own Ray Train workers. "
        "The config's tune section picks the metric, scheduler and search; the space file maps dotted "
        "config keys to distributions, e.g. 'optim.lr: {loguniform: [1e-4, 1e-2]}'.",
    )
    p.add_argument("config", nargs="?", help="a YAML config or a recipe .py defining CONFIG (and SPACE)")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. tune.num_samples=16 tune.metric=val/recon")
    p.add_argument("--space", help="search space YAML: dotted.key: {loguniform|uniform|choice|grid_search|...: [...]}")
    p.add_argument("--resume", action="store_true", help="continue run.name's search (else the newest)")
    p.add_argument(
        "--verbose", type=int, default=1, choices=[0, 1, 2, 3], help="0 quiet, 1 gentrain's table, 2-3 Ray Tune's"
    )
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("plugins", help="list plugins and what they registered")
    p.add_argument("-v", "--verbose", action="store_true", help="every model, loss, dataset and option with its fields")
    p.add_argument("--json", action="store_true", help="the -v listing as JSON")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("config", help="show the resolved config a command would run with")
    csub = p.add_subparsers(dest="config_command", required=True)
    p = csub.add_parser("show", help="print the full resolved config (YAML) of a config file, recipe and overrides")
    p.add_argument("config", nargs="?", help="a YAML config or a recipe .py defining CONFIG (optional)")
    p.add_argument("overrides", nargs="*", help="key.path=value, e.g. model.name=vae trainer.epochs=5")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=cmd_config_show)
    p = sub.add_parser("new-plugin", help="write a plugin package (model, entry point, contract test, README)")
    p.add_argument("name", help="the model's registered name and the package's base name (a Python identifier)")
    p.add_argument("--dir", default=".", help="where to create the package folder (default: here)")
    p.set_defaults(func=cmd_new_plugin)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key.path=value`` overrides may stand anywhere, before or after options.

    argparse stops filling a positional list at the first option
    (``tune my.yaml --space s.yaml tune.scheduler=pbt``); the words left over
    that are overrides are appended to ``overrides``, anything else is an error.
    """
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error("unrecognized arguments: " + " ".join(stray))
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    try:
        return int(args.func(args))
    except GentrainError as e:
        print(f"gentrain: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
