"""The typed run config: YAML in and out, dotted overrides, validation.

A run config is a handful of sections, each a frozen dataclass::

    model:    {name: vae, latent_dim: 20, ...}      # name + the model's own config fields
    data:     {name: shapes, val_fraction: 0.1, ...} # name + the dataset's own config fields
    optim:    {algo: adam, lr: 1e-3, per_optimizer: {disc: {lr: 4e-4}}}
    trainer:  {epochs: 10, batch_size: 64, precision: "32", ...}
    scaling:  {num_workers: 0, use_gpu: false, ...}
    run:      {name: null, output_dir: runs, resume: auto}
    callbacks: {progress: true, sample_every: 1, ...}
    tune:     {metric: val/elbo, mode: min, scheduler: asha, ...}   # gentrain tune only

Validation uses pydantic on plain dataclasses (types, ``Annotated`` bounds,
``Literal`` choices); unknown keys are refused with close-name suggestions.
Every problem is reported as ``section.field = value: what is allowed`` in one
:class:`~engine.errors.ConfigError`, before any training or Ray start.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from engine import guards
from engine.errors import ConfigError, PluginError, suggest
from engine.lossfields import LossName, loss_fields, loss_problems, split_mappings  # noqa: F401 (re-exported)
from engine.registry import LossRef

_log = logging.getLogger("gentrain")

if TYPE_CHECKING:
    from engine.registry import Registry

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class Registries(Protocol):
    """What :func:`resolve` needs of a plugin manager: its three registries."""

    models: Registry[Any]
    losses: Registry[Any]
    datasets: Registry[Any]
    options: Registry[Any]


# ---------------------------------------------------------------------------
# sections owned by the engine
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings; ``per_optimizer`` overrides them for one optimizer name."""

    algo: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    weight_decay: NonNegativeFloat = 0.0
    momentum: NonNegativeFloat = 0.0
    eps: PositiveFloat = 1e-8
    #: Learning-rate schedule (:mod:`engine.optim`): ``cosine`` (to ``min_lr`` over the run),
    #: ``linear_warmup`` (then constant), ``step`` (× ``gamma`` every ``step_size``),
    #: ``exponential`` (× ``gamma`` each interval), ``plateau`` (× ``gamma`` when
    #: ``plateau_metric`` stops improving for ``plateau_patience`` validations).
    scheduler: Literal["none", "cosine", "linear_warmup", "step", "exponential", "plateau"] = "none"
    #: Steps of linear warm-up from ``lr × warmup_start`` to ``lr`` (``cosine``, ``linear_warmup``).
    warmup_steps: NonNegativeInt = 0
    warmup_start: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.01
    #: ``step`` / ``epoch``: when the schedule advances; ``None``: per step for cosine and
    #: linear_warmup, per epoch for step and exponential (plateau: every validation).
    scheduler_interval: Literal["step", "epoch"] | None = None
    step_size: PositiveInt = 10
    gamma: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 0.1
    min_lr: NonNegativeFloat = 0.0
    plateau_metric: str = "val/loss"
    plateau_mode: Literal["min", "max"] = "min"
    plateau_patience: NonNegativeInt = 2
    per_optimizer: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_optimizer(self, name: str) -> OptimConfig:
        """The settings of optimizer ``name``: these, with its ``per_optimizer`` entry applied."""
        return dataclasses.replace(self, **self.per_optimizer.get(name, {}), per_optimizer={})


@dataclass(frozen=True)
class TrainerConfig:
    """How the loop runs. ``batch_size`` is per worker (the global batch is ``batch_size × num_workers``)."""

    epochs: PositiveInt = 10
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 64
    accumulate_grad_batches: PositiveInt = 1
    clip_grad_norm: PositiveFloat | None = None
    precision: Literal["32", "bf16", "fp16"] = "32"
    seed: int = 0
    val_every: PositiveInt = 1
    checkpoint_every: PositiveInt = 1
    keep_checkpoints: PositiveInt = 3
    log_every: PositiveInt = 50
    nan_policy: Literal["raise", "skip"] = "raise"
    num_threads: PositiveInt | None = None
    deterministic: bool = False
    #: Keep an exponential moving average of the weights (``None``: off; e.g. 0.999).
    #: Kept on every rank without communication (DDP keeps weights identical), saved in
    #: checkpoints, used for sample grids, sample metrics and ``engine.load``.
    ema_decay: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None = None
    #: Ramp the decay up as ``min(ema_decay, (1 + n) / (10 + n))`` over the first updates.
    ema_warmup: bool = True
    #: Sub-networks (names of ``Model.ddp_modules()``) to average; ``None``: all of them.
    ema_modules: list[str] | None = None
    #: ``torch.compile`` each sub-network (after its DDP wrapper); losses match eager within tolerance.
    compile: bool = False


@dataclass(frozen=True)
class ScalingConfig:
    """Where the loop runs. ``num_workers=0`` runs it in this process, without Ray."""

    num_workers: NonNegativeInt = 0
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: NonNegativeFloat | None = None
    resources_per_worker: dict[str, NonNegativeFloat] = field(default_factory=dict)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: NonNegativeInt = 3
    start_timeout_s: PositiveFloat = 60.0


@dataclass(frozen=True)
class RunSection:
    """Naming and storage. A rerun with the same ``name`` resumes (``resume: auto``)."""

    name: str | None = None
    output_dir: str = "runs"
    resume: Literal["auto", "never", "must"] = "auto"


@dataclass(frozen=True)
class CallbacksConfig:
    """The ``callbacks`` section when no plugin declares options in it.

    The section's fields are declared by the trainer plugins themselves
    (``gentrain_register_options``): :func:`resolve` builds one frozen
    dataclass from every plugin's option class, so ``config.callbacks.csv``
    exists exactly when a loaded plugin declares it.
    """


@dataclass(frozen=True)
class TuneSection:
    """Settings of ``gentrain tune`` (``gentrain fit`` ignores them): what to optimise and how to search.

    ``metric`` is a key the trials report (``val/elbo``, ``val/recon``, a
    plugin's ``val/...``); ``None`` picks the model's ``val/loss``, ``val/elbo``
    or ``val/recon``, in that order. Times (``grace_period``,
    ``perturbation_interval``) count epochs. ``max_concurrent_trials`` ``None``:
    as many trials as the cluster's resources hold at once.
    """

    metric: str | None = None
    mode: Literal["min", "max"] = "min"
    num_samples: PositiveInt = 8
    scheduler: Literal["asha", "pbt", "none"] = "asha"
    search: Literal["random", "grid", "optuna", "hyperopt"] = "random"
    max_concurrent_trials: PositiveInt | None = None
    max_failures: NonNegativeInt = 2
    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(gt=1, allow_inf_nan=False)] = 3.0
    perturbation_interval: PositiveInt = 2
    quantile_fraction: Annotated[float, Field(gt=0, le=0.5, allow_inf_nan=False)] = 0.25
    resample_probability: Probability = 0.25
    seed: int | None = None


@dataclass(frozen=True)
class DataConfig:
    """Engine-owned data fields; the dataset's own fields live in ``params``."""

    name: str = "shapes"
    root: str | None = None
    download: bool = False
    val_fraction: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.1
    limit: PositiveInt | None = None
    split_seed: int = 0
    #: ``auto``: in memory for data that fits (and has no per-epoch random transforms),
    #: a ``DataLoader`` over the files otherwise; ``ray_data``: Ray Data streams each worker's shard.
    loader: Literal["auto", "memory", "dataloader", "ray_data"] = "auto"
    #: ``DataLoader`` worker processes that decode files (0: in the training process).
    loader_workers: NonNegativeInt = 0
    #: Batches each loader worker keeps ready (``DataLoader(prefetch_factor=)``).
    prefetch_factor: PositiveInt = 2
    #: An unreadable or corrupt file met while streaming: ``fail`` names it; ``skip`` drops it and counts it.
    on_bad_file: Literal["fail", "skip"] = "fail"
    params: Any = None

    def root_path(self, dataset: str) -> Path:
        """``root`` as an absolute path; file datasets require it unless downloading (then ``./data``)."""
        if self.root is None:
            if self.download:
                return Path("data").resolve()
            raise ConfigError.one(
                "data.root",
                None,
                f"required for dataset {dataset!r}: the directory holding its files "
                "(or set data.download=true to fetch them into ./data)",
            )
        return Path(self.root).expanduser().resolve()


@dataclass(frozen=True)
class ModelSection:
    name: str
    params: Any


@dataclass(frozen=True)
class RunConfig:
    """A whole, validated run config. Build it with :func:`resolve` (or :func:`load`)."""

    model: ModelSection
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunSection = field(default_factory=RunSection)
    callbacks: Any = field(default_factory=CallbacksConfig)
    tune: TuneSection = field(default_factory=TuneSection)
    #: Top-level sections that plugins declared (``gentrain_register_options``), by name.
    sections: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> Any:
        """The validated options of plugin section ``name`` (``config.section("wandb").project``)."""
        try:
            return self.sections[name]
        except KeyError:
            raise KeyError(
                f"no plugin section {name!r}; sections: {', '.join(sorted(self.sections)) or 'none'}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, not tuples): what YAML, Ray and checkpoints carry."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ModelSection):
                out[f.name] = {"name": value.name, **_plain(value.params)}
            elif isinstance(value, DataConfig):
                d = _plain(value)
                params = d.pop("params") or {}
                out[f.name] = {**d, **params}
            elif f.name == "sections":
                out.update({name: _plain(section) for name, section in value.items()})
            else:
                out[f.name] = _plain(value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def replace(self, overrides: Mapping[str, Any] | Iterable[str], plugins: Registries) -> RunConfig:
        """A new config with dotted overrides applied (``{"optim.lr": 1e-4}``), validated against ``plugins``."""
        raw = self.to_dict()
        items = overrides.items() if isinstance(overrides, Mapping) else parse_overrides(overrides).items()
        for key, value in items:
            set_dotted(raw, key, value)
        return resolve(raw, plugins)


_SECTIONS: dict[str, type] = {
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "scaling": ScalingConfig,
    "run": RunSection,
    "tune": TuneSection,
}
#: The shared section whose fields trainer plugins declare (``kind="callbacks"``).
CALLBACKS = "callbacks"
_composed: dict[tuple[tuple[str, type], ...], type] = {}


def _rebuild_callbacks(parts: tuple[tuple[str, type], ...], values: dict[str, Any]) -> Any:
    return _compose(parts)(**values)


def callbacks_class(options: Registry[Any]) -> type:
    """One frozen dataclass with the fields every plugin declared for the ``callbacks`` section.

    Built once per set of contributions (so configs resolved in one process
    compare equal); two plugins declaring the same field is a plugin error.
    """
    return _compose(tuple((e.name, e.config_cls) for e in options if e.kind == CALLBACKS and e.config_cls is not None))


def _compose(parts: tuple[tuple[str, type], ...]) -> type:
    cls = _composed.get(parts)
    if cls is not None:
        return cls
    owners: dict[str, str] = {}
    fields: list[tuple[str, Any, Any]] = []
    for name, part in parts:
        hints = typing.get_type_hints(part, include_extras=True)
        for f in dataclasses.fields(part):
            if f.name in owners:
                raise PluginError(
                    f"option callbacks.{f.name} is declared by two plugins: {owners[f.name]!r} and {name!r}; "
                    "rename one of them"
                )
            owners[f.name] = name
            fields.append((f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory)))
    if not fields:
        cls = CallbacksConfig
    else:
        # Pickled by its parts (importable plugin classes), not by this built class.
        def __reduce__(self: Any, parts: Any = parts) -> Any:
            return _rebuild_callbacks, (parts, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

        cls = dataclasses.make_dataclass("CallbacksConfig", fields, frozen=True, namespace={"__reduce__": __reduce__})
        cls.__module__ = __name__
        cls.__doc__ = "Options of the trainer plugins: " + ", ".join(f"{o}: {n}" for o, n in owners.items())
    _composed[parts] = cls
    return cls


def _plain(value: Any) -> Any:
    if isinstance(value, LossRef):
        return str(value) if value.params is None else {"name": str(value), **_plain(value.params)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

_adapters: dict[type, TypeAdapter[Any]] = {}


def validate_dataclass(cls: type, raw: Any, prefix: str) -> tuple[Any, list[tuple[str, object, str]]]:
    """Build ``cls`` from the dict ``raw``; return ``(instance or None, problems)``.

    Unknown keys, wrong types and out-of-range values each become one
    ``(field, value, allowed)`` problem with ``prefix`` in front of the field.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return None, [(prefix.rstrip("."), raw, "must be a mapping of field: value")]
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    problems: list[tuple[str, object, str]] = []
    for key in raw:
        if key not in names:
            problems.append(
                (f"{prefix}{key}", raw[key], f"unknown field{suggest(str(key), names)}; known: {', '.join(names)}")
            )
    known = {k: v for k, v in raw.items() if k in names}
    known, strict = guards.split_strict(cls, known, prefix)  # what pydantic's lax mode would let through
    problems += strict
    adapter = _adapters.get(cls)
    if adapter is None:
        adapter = _adapters[cls] = TypeAdapter(cls)
    try:
        instance = adapter.validate_python(known)
        return (None, problems) if problems else (instance, [])
    except ValidationError as e:
        for err in e.errors():
            loc = [str(p) for p in err["loc"]]
            # Keep the path into the data, drop pydantic's union-member tags.
            path = loc[:1] + [p for p in loc[1:] if p.isdigit() or p in _nested_keys(known, loc[0])]
            allowed = err["msg"].replace("Input should be", "must be")
            value = err.get("input")
            if err["type"] == "literal_error" and isinstance(value, str):
                # pydantic gives the choices only as text: "'a', 'b' or 'c'".
                choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
                allowed += suggest(value, choices)
            if err["type"] in ("tuple_type", "list_type", "set_type") and isinstance(value, (int, float, str)):
                allowed += f"; write [{value}] for a list of one"
            problems.append((prefix + ".".join(path), err.get("input"), allowed))
        return None, problems
    except (TypeError, ValueError) as e:  # raised by a dataclass's own __post_init__
        return None, [(prefix.rstrip("."), dict(raw), str(e))]


def _nested_keys(raw: Mapping[str, Any], key: str) -> set[str]:
    value = raw.get(key)
    return {str(k) for k in value} if isinstance(value, Mapping) else set()


def resolve(raw: Mapping[str, Any], plugins: Registries) -> RunConfig:
    """Validate a plain dict (from YAML, a recipe, Ray) into a :class:`RunConfig`.

    :param plugins: whose registries name the models, datasets and losses (a
        :class:`~engine.plugins.PluginManager`); explicit, so the config layer
        never reaches for a process-global plugin host.
    :raises ConfigError: listing every problem found.
    """
    pm = plugins
    if not isinstance(raw, Mapping):
        raise ConfigError.one("<config>", raw, "must be a mapping of section: {field: value}")
    options = getattr(pm, "options", None)
    plugin_sections = {e.name: e for e in options or () if e.kind is None and e.config_cls is not None}
    known = ["model", "data", *_SECTIONS, CALLBACKS, *sorted(plugin_sections)]
    problems: list[tuple[str, object, str]] = []
    for key in raw:
        if key not in known:
            problems.append(
                (str(key), raw[key], f"unknown section{suggest(str(key), known)}; known: {', '.join(known)}")
            )

    sections: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        sections[key], found = validate_dataclass(cls, raw.get(key), f"{key}.")
        problems += found
    sections[CALLBACKS], found = _validate_callbacks(raw.get(CALLBACKS), options, pm)
    problems += found
    declared: dict[str, Any] = {}
    for key, entry in sorted(plugin_sections.items()):
        declared[key], found = validate_dataclass(entry.config_cls, raw.get(key), f"{key}.")
        problems += found
    sections["sections"] = declared
    problems += guards.run_problems(sections.get("run"))
    optim = sections.get("optim")
    if optim is not None:
        for name, over in optim.per_optimizer.items():
            allowed = {f.name: f for f in dataclasses.fields(OptimConfig) if f.name != "per_optimizer"}
            base = {k: v for k, v in _plain(optim).items() if k in allowed}
            _, found = validate_dataclass(OptimConfig, {**base, **over}, f"optim.per_optimizer.{name}.")
            problems += found

    model_raw = _section(raw, "model", problems)
    model_name = model_raw.pop("name", None)
    model = None
    if model_name is None:
        problems.append(("model.name", None, f"required; one of: {', '.join(pm.models.names()) or 'none registered'}"))
    elif not isinstance(model_name, str):
        problems.append(("model.name", model_name, f"must be a string; one of: {', '.join(pm.models.names())}"))
    else:
        try:
            entry = pm.models.get(model_name)
        except ConfigError as e:
            problems += e.problems
        else:
            params, found = _validate_params(entry.config_cls, model_raw, "model.", pm)
            problems += found
            model = ModelSection(model_name, params)

    data_raw = _section(raw, "data", problems)
    engine_keys = {f.name for f in dataclasses.fields(DataConfig)} - {"params"}
    data_name = data_raw.get("name", DataConfig.name)
    data = None
    if not isinstance(data_name, str):
        problems.append(("data.name", data_name, f"must be a string; one of: {', '.join(pm.datasets.names())}"))
    else:
        try:
            dentry = pm.datasets.get(data_name)
        except ConfigError as e:
            problems += e.problems
        else:
            own = {k: v for k, v in data_raw.items() if k in engine_keys}
            rest = {k: v for k, v in data_raw.items() if k not in engine_keys}
            params, found = _validate_params(dentry.config_cls, rest, "data.", pm, extra_known=sorted(engine_keys))
            problems += found
            base, found = validate_dataclass(DataConfig, own, "data.")
            found += guards.path_problems("data.root", own.get("root"))
            problems += found
            if base is not None and not found:
                data = dataclasses.replace(base, params=params)

    if problems:
        raise ConfigError(problems)
    assert model is not None
    assert data is not None
    return RunConfig(model=model, data=data, **sections)


def _validate_callbacks(raw: Any, options: Registry[Any] | None, pm: Any) -> tuple[Any, list[tuple[str, object, str]]]:
    """The ``callbacks`` section against the fields the loaded plugins declare.

    A key that no loaded plugin declares is refused, unless plugins are
    blocked (``GENTRAIN_DISABLE_PLUGINS``): then it may belong to a blocked
    plugin, and is dropped with a log line instead.
    """
    cls = callbacks_class(options) if options is not None else CallbacksConfig
    blocked = bool(getattr(pm, "blocked", ()))
    if blocked and isinstance(raw, Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        dropped = sorted(str(k) for k in raw if k not in names)
        if dropped:
            _log.info("callbacks.%s: no loaded plugin declares it (some plugins are blocked); ignored", dropped)
            raw = {k: v for k, v in raw.items() if k in names}
    return validate_dataclass(cls, raw, f"{CALLBACKS}.")


def _section(raw: Mapping[str, Any], key: str, problems: list[tuple[str, object, str]]) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append((key, value, "must be a mapping of field: value"))
        return {}
    return {str(k): v for k, v in value.items()}


def _validate_params(
    cls: type | None, raw: dict[str, Any], prefix: str, pm: Any, extra_known: list[str] | None = None
) -> tuple[Any, list[tuple[str, object, str]]]:
    if cls is None:
        if raw:
            key = next(iter(raw))
            return None, [(prefix + key, raw[key], "unknown field; this entry takes no options")]
        return None, []
    raw, mappings = split_mappings(cls, raw)  # a {name: ..., param: ...} loss field: its name is the value
    instance, problems = validate_dataclass(cls, raw, prefix)
    if extra_known:
        for i, (fieldname, value, allowed) in enumerate(problems):
            if allowed.startswith("unknown field"):
                key = fieldname[len(prefix) :]
                names = [f.name for f in dataclasses.fields(cls)] + extra_known
                problems[i] = (fieldname, value, f"unknown field{suggest(key, names)}; known: {', '.join(names)}")
    problems += loss_problems(cls, raw, mappings, instance, prefix, pm, validate_dataclass)
    return instance, problems


# ---------------------------------------------------------------------------
# YAML and dotted overrides
# ---------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """Parse an override's value the way YAML would (``1e-3`` -> float, ``[1,2]`` -> list)."""
    try:
        value = guards.safe_load(text, what="<override>")
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string; users mean a float.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["model.latent_dim=32", "trainer.epochs=5"]`` -> ``{"model.latent_dim": 32, ...}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError.one(item, item, "overrides are written key.path=value, e.g. trainer.epochs=5")
        out[key.strip()] = parse_value(value)
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw["a"]["b"]["c"] = value`` for ``key = "a.b.c"``, creating dicts on the way."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError.one(".".join(parts[: i + 1]), child, f"is not a section, so {key} cannot be set")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file; errors name the file and line (size, depth, aliases bounded: :mod:`engine.guards`)."""
    data = guards.read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError.one("<config file>", str(path), "must hold a mapping of section: {field: value}")
    return data


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two config dicts; ``over`` wins."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_raw(
    base: Mapping[str, Any] | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()
) -> dict[str, Any]:
    """A raw config dict: ``base`` (a dict or nothing) with dotted overrides applied."""
    raw = copy.deepcopy(dict(base or {}))
    items = overrides.items() if isinstance(overrides, Mapping) else parse_overrides(overrides).items()
    for key, value in items:
        set_dotted(raw, key, value)
    return raw
