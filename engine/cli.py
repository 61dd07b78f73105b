"""``gentrain``: the command line.

::

    gentrain fit [CONFIG.yaml | RECIPE.py] [key.path=value ...]
    gentrain tune [CONFIG.yaml | RECIPE.py] [key.path=value ...] --space SPACE.yaml [--resume]
    gentrain plugins [-v] [--json]
    gentrain config show [CONFIG.yaml | RECIPE.py] [key.path=value ...] [--json]
    gentrain new-plugin NAME [--dir DIR]
    gentrain sample RUN [--n N] [--labels 3|1,2,5|0-9|all] [--seed S] [--out samples.png|DIR/|x.npz|x.pt]
                        [--reconstruct FOLDER | --interpolate]
    gentrain eval RUN [data.key=value | scaling.key=value ...] [--n N] [--iwae-k K] [--json PATH]
    gentrain export RUN [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
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


# -- using a trained run: sample, eval, export --------------------------------

#: How the API's argument names read on the command line, for one-line errors.
_CLI_NAMES = {
    "which": "--checkpoint",
    "metric": "--metric",
    "mode": "--mode",
    "device": "--device",
    "labels": "--labels",
    "n": "--n",
    "batch_size": "--batch-size",
    "precision": "--precision",
    "out": "--out",
    "reconstruct": "--reconstruct",
    "interpolate": "--interpolate",
    "iwae_k": "--iwae-k",
    "json": "--json",
    "elbo_samples": "--elbo-samples",
}


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), exit status 2."""

    def error(self, message: str) -> Any:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _one_line(e: GentrainError) -> str:
    """An error of sample/eval/export as one line, with the API's names in their command-line spelling."""
    if isinstance(e, ConfigError):
        return "; ".join(f"{_CLI_NAMES.get(f, f)} = {v!r}: {a}" for f, v, a in e.problems)
    return " ".join(str(e).split("\n"))


def _which(text: str) -> str | int:
    if text in ("last", "best"):
        return text
    if text.isdigit():
        return int(text)
    raise ConfigError.one("which", text, "must be last, best or a step number")


def _positive_arg(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError.one(name, value, "must be a positive whole number")


def _load_run(args: argparse.Namespace) -> Any:
    from engine.errors import CheckpointError, PluginError
    from engine.load import load

    which = _which(args.checkpoint)
    try:
        return load(args.run, device=args.device, which=which, metric=args.metric, mode=args.mode, ema=not args.no_ema)
    except (CheckpointError, PluginError) as e:
        raise type(e)(f"RUN: {e}") from e


def cmd_sample(args: argparse.Namespace) -> int:
    import os

    import torch

    from engine.export import check_output, output_kind, read_images, write_images
    from engine.load import can

    _positive_arg("n", args.n)
    _positive_arg("batch_size", args.batch_size)
    if args.reconstruct is not None and args.interpolate:
        raise ConfigError.one("interpolate", True, "cannot be combined with --reconstruct; choose one")
    kind = output_kind(args.out)
    out = check_output(args.out, overwrite=args.overwrite, folder=kind == "folder")
    run = _load_run(args)
    source = f"{run.config.model.name} step {run.step} ({run.checkpoint})"
    if args.reconstruct is not None:
        if not can(run.model, "reconstruct"):
            raise ConfigError.one("reconstruct", run.config.model.name, "this model has no reconstruct(x) (ae, vae do)")
        images, names = read_images(args.reconstruct, run.data_spec.shape)
        recon = run.reconstruct(images, batch_size=args.batch_size, precision=args.precision)
        if kind == "grid":
            k = min(len(images), 8)
            x = images.float() / 255
            rows = [t for i in range(0, len(x), k) for t in (x[i : i + k], recon[i : i + k])]
            write_images(out, torch.cat(rows), nrow=k, kind=kind)
        else:
            write_images(out, recon, names=names, extra={"originals": images.float() / 255}, kind=kind)
        print(f"wrote reconstructions of {len(images)} images from {args.reconstruct} to {out}: {source}")
        return 0
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    if args.interpolate:
        images = run.interpolate(args.n, args.labels, seed=seed, precision=args.precision)
        first = run.labels(1, args.labels)
        write_images(out, images, None if first is None else first.expand(args.n), nrow=args.n, kind=kind)
        print(f"wrote {args.n} images interpolated between two latent codes (seed {seed}) to {out}: {source}")
        return 0
    labels = run.labels(args.n, args.labels)
    images = run.sample(args.n, labels, seed=seed, batch_size=args.batch_size, precision=args.precision)
    k = run.data_spec.num_classes
    nrow = k if labels is not None and args.labels in (None, "all") and k and 8 <= k <= 16 else None
    write_images(out, images, labels, nrow=nrow, kind=kind)
    print(f"wrote {args.n} samples (seed {seed}) to {out}: {source}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.evaluate import evaluate
    from engine.export import atomic_file, check_output
    from engine.recipes import use_cluster_token

    use_cluster_token()  # before Ray is imported: scaling.num_workers > 0 draws the samples on Ray, as fit trains

    _positive_arg("n", args.n)
    _positive_arg("batch_size", args.batch_size)
    if args.iwae_k < 0:
        raise ConfigError.one("iwae_k", args.iwae_k, "must be 0 (skip the IWAE bound) or a positive number of samples")
    json_path = check_output(args.json, overwrite=args.overwrite, what="json") if args.json else None
    run = _load_run(args)
    report = evaluate(
        run,
        list(args.overrides),
        n=args.n,
        iwae_k=args.iwae_k,
        batch_size=args.batch_size,
        seed=args.seed,
        precision=args.precision,
        elbo_samples=args.elbo_samples,
        classifier_cache=args.classifier_cache,
        classifier_epochs=args.classifier_epochs,
    )
    info = report.info
    print(
        f"{info['model']} step {info['step']} ({info['checkpoint']}) on {info['held_out_images']} held-out "
        f"{info['data']} images, {info['samples']} samples"
    )
    print(report.table())
    if json_path is not None:
        with atomic_file(json_path) as tmp:
            tmp.write_text(report.to_json() + "\n")
        print(f"wrote {json_path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine.export import check_output, export

    if args.out is not None:
        check_output(args.out, overwrite=args.overwrite, folder=True)
    run = _load_run(args)
    out = args.out if args.out is not None else f"{run.config.run.name or run.config.model.name}-export"
    result = export(run, out, overwrite=args.overwrite, onnx=not args.no_onnx)
    for path in result.files.values():
        print(f"wrote {path}")
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    checks = ", ".join(f"{k}={v}" for k, v in result.checks.items())
    if checks:
        print(f"checked: {checks}")
    return 0


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run", metavar="RUN", help="a run directory, its checkpoints/ folder, a checkpoint file, or a URI (s3://...)"
    )
    p.add_argument("--checkpoint", default="last", help="last (default), best (by --metric) or a step number")
    p.add_argument("--metric", help="the metric --checkpoint best ranks by (default val/loss, val/elbo or val/recon)")
    p.add_argument("--mode", default="min", help="min (default) or max: which --metric is better")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--precision", default="32", choices=["32", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--no-ema", action="store_true", help="load the raw weights even if the checkpoint has EMA weights")


def _add_use_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples from a trained run",
        description="Draw samples (or reconstructions, or a latent interpolation) from a trained run and write "
        "them as a PNG grid (*.png), a folder of PNGs (DIR/), or one .npz/.pt file.",
    )
    p.__class__ = _OneLineParser
    _add_run_arguments(p)
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--labels", help="conditional models: a class (3), a list (1,2,5), a range (0-9) or all")
    p.add_argument("--seed", type=int, help="the same seed gives the same images (default: a random seed, printed)")
    p.add_argument("--out", default="samples.png", help="*.png grid, DIR/ of PNGs, *.npz or *.pt (default samples.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--reconstruct", metavar="FOLDER", help="reconstruct the images of FOLDER instead of sampling")
    p.add_argument(
        "--interpolate",
        action="store_true",
        help="--n images between two latent codes (models that take z in sample(), e.g. gan, aegan)",
    )
    p.set_defaults(func=cmd_sample, one_line=True)

    p = sub.add_parser(
        "eval",
        help="held-out metrics of a trained run",
        description="Held-out metrics of a trained run, each next to what real data scores: -ELBO and the IWAE "
        "bound where the model has a likelihood, reconstruction error, and the classifier Fréchet distance, KID, "
        "classifier score (and class accuracy) of --n samples. Data overrides (data.split=test ...) pick other data; "
        "scaling.num_workers=N draws the samples on N Ray workers (the same figures).",
    )
    p.__class__ = _OneLineParser
    _add_run_arguments(p)
    p.add_argument(
        "overrides",
        nargs="*",
        help="data or scaling overrides, e.g. data.split=test data.val_fraction=0 scaling.num_workers=4",
    )
    p.add_argument("--n", type=int, default=1000, help="samples for the sample metrics (default 1000)")
    p.add_argument("--iwae-k", type=int, default=50, help="IWAE bound importance samples, 0 skips it (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples and estimators (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --json if it exists")
    p.add_argument("--elbo-samples", type=int, default=8, help="draws of z per image for the -ELBO (default 8)")
    p.add_argument("--classifier-cache", metavar="DIR", help="where the feature classifier is cached")
    p.add_argument("--classifier-epochs", type=int, help="epochs of the feature classifier (default: about 200 steps)")
    p.set_defaults(func=cmd_eval, one_line=True)

    p = sub.add_parser(
        "export",
        help="weights (safetensors) and a sampler program that runs without gentrain",
        description="Export a trained run: model.safetensors (weights, config as metadata), sampler.pt2 and, for "
        "models with a latent, decoder.pt2 (torch.export programs that need only torch), model.onnx if the "
        "exporter is installed. Every file is checked before the folder is written.",
    )
    p.__class__ = _OneLineParser
    _add_run_arguments(p)
    p.add_argument("--out", help="the folder to write (default ./<run name>-export)")
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it holds files")
    p.add_argument("--no-onnx", action="store_true", help="do not write model.onnx")
    p.set_defaults(func=cmd_export, one_line=True)


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
    _add_use_parsers(sub)
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


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process: building it costs more than a small ``gentrain sample``."""
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(_parser(), argv)
    try:
        return int(args.func(args))
    except GentrainError as e:
        print(f"gentrain: error: {_one_line(e) if getattr(args, 'one_line', False) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
