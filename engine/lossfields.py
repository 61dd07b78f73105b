"""Model-config fields that name a loss: :class:`LossName`, and checking them against the loss registry.

Part of the config layer (:mod:`engine.config` re-exports :class:`LossName`
and calls :func:`loss_problems`); kept apart so the config module stays one
concern. The field takes a name (``huber``) or a mapping with the loss's own
parameters (``{name: huber, delta: 0.5}``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from engine.errors import ConfigError
from engine.registry import LossRef, can_feed, domain_problem

Problems = list[tuple[str, object, str]]


@dataclass(frozen=True)
class LossName:
    """Marks a model-config field that names a registered loss of ``kind``.

    ``recon_loss: Annotated[str, LossName("reconstruction", takes="logits")] = "bce"``
    makes the engine check the name against the loss registry (with
    suggestions), and the loss's domain against what the model gives it
    (``takes``: ``logits``, ``probabilities`` or ``features``; ``None``: any),
    before training. The field takes a name (``huber``) or a mapping with the
    loss's own parameters (``{name: huber, delta: 0.5}``), validated against
    the config class the loss was registered with; the model receives a
    :class:`~engine.registry.LossRef` and ``engine.get_loss`` applies them.
    """

    kind: str
    takes: str | None = None


def loss_fields(cls: type) -> dict[str, LossName]:
    """Fields of a config class annotated with :class:`LossName`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, LossName] = {}
    for name, hint in hints.items():
        for arg in _walk_annotated(hint):
            if isinstance(arg, LossName):
                out[name] = arg
    return out


def _walk_annotated(hint: Any) -> Iterable[Any]:
    if typing.get_origin(hint) is Annotated:
        yield from hint.__metadata__
        yield from _walk_annotated(typing.get_args(hint)[0])
    else:
        for arg in typing.get_args(hint):
            yield from _walk_annotated(arg)


def split_mappings(cls: type, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Mapping[str, Any]]]:
    """``raw`` with each ``{name: ..., <param>: ...}`` loss field replaced by its name, and those mappings."""
    mappings = {k: raw[k] for k in loss_fields(cls) if isinstance(raw.get(k), Mapping)}
    return {**raw, **{k: m.get("name") for k, m in mappings.items()}}, mappings


def loss_problems(
    cls: type,
    raw: dict[str, Any],
    mappings: Mapping[str, Mapping[str, Any]],
    instance: Any,
    prefix: str,
    pm: Any,
    validate: Callable[[type, Any, str], tuple[Any, Problems]],
) -> Problems:
    """Check every loss field of ``cls`` from the raw values (so another field's error hides none of these).

    Each name is looked up by kind, its domain checked against ``takes``, its
    parameters validated against the loss's config class; on success the
    field of ``instance`` becomes a :class:`~engine.registry.LossRef`.
    """
    problems: Problems = []
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for fname, marker in loss_fields(cls).items():
        value = raw.get(fname, defaults.get(fname))
        if not isinstance(value, str):
            continue  # None (no loss) or a type error the field validation reported
        try:
            entry = pm.losses.get(value, kind=marker.kind)
        except ConfigError as e:
            problems += [(prefix + fname, v, a) for _, v, a in e.problems]
            continue
        if not can_feed(marker.takes, entry.domain):
            problems.append((prefix + fname, value, domain_problem(value, entry.domain, str(marker.takes))))
        given = {str(k): v for k, v in mappings.get(fname, {}).items() if k != "name"}
        params = None
        if entry.config_cls is not None:
            params, found = validate(entry.config_cls, given, f"{prefix}{fname}.")
            problems += found
        elif given:
            key = next(iter(given))
            allowed = f"unknown field; loss {value!r} takes no parameters"
            problems.append((f"{prefix}{fname}.{key}", given[key], allowed))
        if instance is not None and params is not None and fname in mappings:
            object.__setattr__(instance, fname, LossRef(value, params))
    return problems
