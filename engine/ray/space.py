"""Search spaces: Ray Tune's distributions keyed by dotted config paths, and the checks made before Ray starts.

A space maps dotted config keys to Ray Tune's own distributions
(``{"optim.lr": tune.loguniform(1e-4, 1e-2)}``); a space file spells the same
distributions as ``optim.lr: {loguniform: [1e-4, 1e-2]}`` (:data:`SPECS`,
:func:`load_space`). Every key is checked before Ray starts by resolving the
config with the key set to each of its candidate values (both ends of a
range, every choice: :func:`check_space`). PBT may only perturb what leaves
the shapes of the model's parameters alone (``optim.*``, ``model.beta``);
other ``model.*`` mutations are refused before Ray starts (:func:`check_mutations`).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engine.config import build_raw, read_yaml, resolve, set_dotted
from engine.errors import ConfigError, suggest
from engine.plugins import PluginManager

#: Distributions of a search space file: ``key: {name: [args...]}`` calls ``ray.tune.<name>(*args)``.
SPECS: dict[str, str] = {
    "uniform": "[lower, upper]",
    "quniform": "[lower, upper, q]",
    "loguniform": "[lower, upper] or [lower, upper, base]",
    "qloguniform": "[lower, upper, q] or [lower, upper, q, base]",
    "randn": "[mean, sd]",
    "qrandn": "[mean, sd, q]",
    "randint": "[lower, upper) (upper excluded)",
    "qrandint": "[lower, upper, q] (upper included)",
    "lograndint": "[lower, upper) or [lower, upper, base]",
    "qlograndint": "[lower, upper, q] or [lower, upper, q, base]",
    "choice": "[value, value, ...]",
    "grid_search": "[value, value, ...]",
}

# YAML 1.1 reads 1e-4 (no dot) as a string; a space file means a number.
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def load_space(path: str | Path) -> dict[str, Any]:
    """Read a search space file: ``dotted.key: {distribution: [args]}`` per line.

    .. code-block:: yaml

        optim.lr: {loguniform: [1e-4, 1e-2]}
        model.beta: {choice: [1, 4]}
        model.latent_dim: {grid_search: [8, 16]}
        optim.per_optimizer.disc.lr: {uniform: [1e-4, 1e-3]}

    Each maps onto the Ray Tune function of the same name (:data:`SPECS`).
    """
    raw = read_yaml(path)
    space = {}
    for key, value in raw.items():
        if not (isinstance(value, Mapping) and len(value) == 1):
            raise ConfigError.one(
                f"<search space> {key}",
                value,
                "must be one distribution, {name: args}, e.g. {loguniform: [1e-4, 1e-2]} or {choice: [8, 16]}; "
                f"names: {', '.join(SPECS)}",
            )
        name = str(next(iter(value)))
        if name not in SPECS:
            raise ConfigError.one(
                f"<search space> {key}",
                dict(value),
                f"unknown distribution {name!r}{suggest(name, SPECS)}; one of: {', '.join(SPECS)}",
            )
        space[str(key)] = value
    return normalize_space(space)


def normalize_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """Flat ``{dotted key: Tune domain, grid search or constant}``.

    Accepts Ray Tune's own distributions (``tune.loguniform(...)``,
    ``tune.grid_search([...])``), the file form ``{"loguniform": [a, b]}``,
    constants, and nested mappings of those (``{"optim": {"lr": ...}}``).
    """
    out: dict[str, Any] = {}
    for key, value in space.items():
        key = str(key)
        if _is_spec(value):
            out[key] = _from_spec(key, value)
        elif isinstance(value, Mapping) and not is_grid(value):
            nested = normalize_space(value)
            if not nested:
                out[key] = dict(value)
            for sub, v in nested.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def is_grid(value: Any) -> bool:
    """Whether ``value`` is ``tune.grid_search([...])`` (a dict ``{"grid_search": [...]}``)."""
    return isinstance(value, Mapping) and list(value) == ["grid_search"]


def _is_spec(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in SPECS


def _from_spec(key: str, spec: Mapping[str, Any]) -> Any:
    from ray import tune as ray_tune

    (name, args), *_ = spec.items()
    if name in ("choice", "grid_search"):
        if not isinstance(args, list) or not args:
            raise ConfigError.one(key, dict(spec), f"{name} takes a non-empty list of values")
        values = [_number(v) for v in args]
        return ray_tune.grid_search(values) if name == "grid_search" else ray_tune.choice(values)
    problem = _range_problem(name, args)
    if problem:
        raise ConfigError.one(key, dict(spec), f"{name} takes {SPECS[name]}: {problem}")
    try:
        if isinstance(args, Mapping):
            return getattr(ray_tune, name)(**{k: _number(v) for k, v in args.items()})
        if not isinstance(args, list):
            args = [args]
        return getattr(ray_tune, name)(*[_number(v) for v in args])
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError.one(key, dict(spec), f"{name} takes {SPECS[name]}: {e}") from e


def _range_problem(name: str, args: Any) -> str | None:
    """What is wrong with a distribution's bounds (reversed, empty, not numbers, log of <= 0), or ``None``."""
    values = [_number(v) for v in (args if isinstance(args, list) else [args])] if not isinstance(args, Mapping) else []
    if isinstance(args, Mapping):
        keys = ("mean", "sd") if name in ("randn", "qrandn") else ("lower", "upper")
        values = [_number(args.get(k)) for k in keys if k in args]
    if len(values) < 2:
        return None  # Ray's own call names the missing arguments
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return f"its arguments must be finite numbers, got {values!r}"
    if name in ("randn", "qrandn"):
        return None if values[1] > 0 else f"sd must be greater than 0, got {values[1]!r}"
    lower, upper = values[0], values[1]
    if lower >= upper:
        kind = "empty" if lower == upper else "reversed"
        return f"the range [{lower!r}, {upper!r}] is {kind}: lower must be less than upper"
    if "log" in name and lower <= 0:
        return f"a log scale needs lower > 0, got {lower!r}"
    if name.startswith("q") and len(values) >= 3 and not values[2] > 0:
        return f"q must be greater than 0, got {values[2]!r}"
    return None


def _number(value: Any) -> Any:
    if isinstance(value, str) and _EXPONENT.match(value.strip()):
        return float(value)
    return value


def native(value: Any) -> Any:
    """Python scalars and lists for what Tune sampled (numpy scalars do not go into YAML or pydantic)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, (list, tuple)):
        return [native(v) for v in value]
    if isinstance(value, Mapping):
        return {k: native(v) for k, v in value.items()}
    return value


def candidate_values(value: Any) -> list[Any]:
    """Values that stand for a distribution when the config is checked: bounds, every choice, a sample."""
    from ray.tune.search.sample import Categorical, Domain, Float, Integer

    if is_grid(value):
        return [native(v) for v in value["grid_search"]]
    if isinstance(value, Categorical):
        return [native(v) for v in value.categories]
    if isinstance(value, Float):
        lower, upper = value.lower, value.upper
        if lower is not None and upper is not None and math.isfinite(lower) and math.isfinite(upper):
            return [math.nextafter(float(lower), float(upper)), math.nextafter(float(upper), float(lower))]
    if isinstance(value, Integer) and value.lower is not None and value.upper is not None:
        return [int(value.lower), int(value.upper) - 1]
    if isinstance(value, Domain):
        return [native(value.sample())]
    return [native(value)]


class _Shown:
    """A value that shows as the given text in a :class:`ConfigError`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def describe(value: Any) -> Any:
    """``loguniform(0.0001, 0.01)`` for a Tune domain (its repr is an object address); other values as they are."""
    from ray.tune.search.sample import Categorical, Domain, Float, Integer

    if is_grid(value):
        return _Shown(f"grid_search({list(value['grid_search'])!r})")
    if isinstance(value, Categorical):
        return _Shown(f"choice({list(value.categories)!r})")
    if isinstance(value, (Float, Integer)):
        sampler: Any = value.sampler
        q = ""
        if type(sampler).__name__ == "Quantized":
            q, sampler = "q", sampler.sampler
        kind = type(sampler).__name__.strip("_").lower()  # uniform, loguniform, normal
        if isinstance(value, Integer):
            name = {"uniform": "randint", "loguniform": "lograndint"}.get(kind, kind)
        else:
            name = {"normal": "randn"}.get(kind, kind)
        return _Shown(f"{q}{name}({value.lower!r}, {value.upper!r})")
    if isinstance(value, Domain):
        return _Shown(type(value).__name__)
    return value


def dotted_keys(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every leaf key of a config dict, dotted (``optim.lr``, ``model.latent_dim``)."""
    out = []
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out += dotted_keys(value, name + ".")
        else:
            out.append(name)
    return out


def check_space(raw: Mapping[str, Any], space: Mapping[str, Any], plugins: PluginManager) -> None:
    """Raise :class:`ConfigError` if a key of ``space`` is not a config field or a value is not allowed there.

    Each key is checked by resolving ``raw`` with that key set to each of its
    candidate values (bounds of a range, every choice).
    """
    known = dotted_keys(resolve(raw, plugins).to_dict())
    problems: list[tuple[str, object, str]] = []
    for key, value in space.items():
        if key.startswith("run.") or key == "run":
            problems.append((key, describe(value), "run.* names the experiment and cannot be searched"))
            continue
        for candidate in candidate_values(value):
            trial = copy.deepcopy(dict(raw))
            try:
                set_dotted(trial, key, candidate)
                resolve(trial, plugins)
            except ConfigError as e:
                for fieldname, _, allowed in e.problems:
                    if allowed.startswith(("unknown field", "unknown section")) or "is not a section" in allowed:
                        allowed = f"is not a config field{suggest(key, known)}"
                        problems.append((f"search space key {key!r}", describe(value), allowed))
                    else:
                        problems.append((f"search space key {key!r}", candidate, f"{fieldname}: {allowed}"))
                break
    if problems:
        raise ConfigError(problems)


def representative(space: Mapping[str, Any]) -> dict[str, Any]:
    """One value per key: what the whole config is prepared with before Ray starts."""
    return {key: candidate_values(value)[0] for key, value in space.items()}


def pbt_mutations(space: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """PBT's ``hyperparam_mutations``: ``given`` or every searched key; choices and grids become lists.

    A list is perturbed to a neighbouring value; a range is multiplied by 0.8
    or 1.2 (or resampled with ``tune.resample_probability``).
    """
    from ray.tune.search.sample import Categorical, Domain

    source = normalize_space(given) if given is not None else space
    out: dict[str, Any] = {}
    for key, value in source.items():
        if is_grid(value):
            out[key] = [native(v) for v in value["grid_search"]]
        elif isinstance(value, Categorical):
            out[key] = [native(v) for v in value.categories]
        elif isinstance(value, (Domain, list)) or callable(value):
            out[key] = value
    return out


def check_mutations(raw: Mapping[str, Any], dataset: Any, mutations: Mapping[str, Any], plugins: PluginManager) -> None:
    """Refuse PBT mutations of model fields that change the shapes of its parameters.

    PBT continues a trial from another trial's checkpoint with a perturbed
    config; a checkpoint of a 16-unit latent space does not load into a model
    with 32.
    """

    def shapes(overrides: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        config = resolve(build_raw(raw, overrides), plugins)
        with torch.random.fork_rng():
            model = plugins.models.get(config.model.name).obj(config.model.params, dataset.spec)
        return {name: tuple(t.shape) for name, t in model.state_dict().items()}

    problems: list[tuple[str, object, str]] = []
    for key, value in mutations.items():
        if not key.startswith("model."):
            continue
        values = [native(v) for v in value] if isinstance(value, list) else candidate_values(value)
        if len(values) < 2:
            continue
        reference = shapes({key: values[0]})
        if any(shapes({key: v}) != reference for v in values[1:]):
            problems.append(
                (
                    f"PBT mutation {key!r}",
                    describe(value),
                    "changes the shapes of the model's parameters, so a trial cannot continue from another's "
                    "checkpoint; search it with tune.scheduler=asha, or give PBT the keys it may perturb "
                    "(hyperparam_mutations)",
                )
            )
    if problems:
        raise ConfigError(problems)


__all__ = [
    "SPECS",
    "candidate_values",
    "check_mutations",
    "check_space",
    "describe",
    "is_grid",
    "load_space",
    "native",
    "normalize_space",
    "pbt_mutations",
    "representative",
]
