"""Name -> entry registries for models, losses and datasets.

A plugin fills these from its registration hooks::

    @hookimpl
    def gentrain_register_models(registry):
        registry.add("vae", VAE, VAEConfig)

Each entry remembers which plugin added it, so a duplicate name is refused with
both plugins named, and a typo on lookup suggests the close names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine.errors import ConfigError, PluginError, suggest

T = TypeVar("T")

DOMAINS = ("logits", "probabilities", "features")
"""What a loss's first argument can be (:meth:`Registry.add` ``domain``)."""

ADAPTABLE = frozenset({("logits", "probabilities")})
"""(what a model gives, what a loss takes) pairs :func:`engine.get_loss` converts (a sigmoid)."""


def can_feed(takes: str | None, domain: str | None) -> bool:
    """Whether a model giving ``takes`` can feed a loss of ``domain`` (directly or converted)."""
    return takes is None or domain is None or takes == domain or (takes, domain) in ADAPTABLE


def domain_problem(name: str, domain: str | None, takes: str) -> str:
    """What is wrong with a loss of ``domain`` that a model giving ``takes`` cannot feed."""
    also = " or probabilities" if takes == "logits" else ""
    return f"loss {str(name)!r} takes {domain}, but this model gives {takes}: choose a loss of domain {takes}{also}"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, the object, its config class, who added it."""

    name: str
    obj: T
    config_cls: type | None
    plugin: str
    kind: str | None = None
    doc: str = ""
    domain: str | None = None
    """Losses: what the first argument is (``logits``, ``probabilities`` or ``features``)."""


class Registry(Generic[T]):
    """A name -> :class:`Entry` mapping that refuses duplicates.

    ``what`` is the human name of the things held ("model", "loss", "dataset"),
    used in messages; ``field`` is the config field that selects an entry, so a
    lookup failure reads ``model.name = 'vea': unknown model (did you mean 'vae'?)``.
    """

    def __init__(self, what: str, field: str) -> None:
        self.what = what
        self.field = field
        self._entries: dict[str, Entry[T]] = {}
        # Set by the plugin manager while the registration hooks run: who is
        # calling ``add`` (found from the call stack), in which order plugins
        # were registered, and how to name a plugin with its distribution.
        self.caller: Callable[[], str | None] = lambda: None
        self.order: dict[str, int] = {}
        self.describe: Callable[[str], str] = lambda plugin: repr(plugin)

    @property
    def current_plugin(self) -> str:
        """The plugin whose registration hook is calling :meth:`add` (``<direct>`` outside one)."""
        return self.caller() or "<direct>"

    def add(
        self,
        name: str,
        obj: T,
        config_cls: type | None = None,
        *,
        kind: str | None = None,
        doc: str | None = None,
        domain: str | None = None,
    ) -> None:
        """Register ``obj`` under ``name``.

        :param name: lowercase identifier users write in configs.
        :param obj: the class or function.
        :param config_cls: a ``@dataclass`` holding the entry's options, or None.
        :param kind: a sub-kind (losses: ``reconstruction``, ``adversarial``, ...).
        :param doc: one line for ``gentrain plugins``; defaults to the docstring's first line.
        :param domain: losses only: what the loss's first argument is, one of :data:`DOMAINS`
            (``logits``: raw decoder outputs; ``probabilities``: images in ``[0, 1]``;
            ``features``: anything else, e.g. latent codes or discriminator outputs).
            A reconstruction loss that does not say is taken as ``probabilities``.
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise PluginError(f"plugin {self.current_plugin!r} registered a {self.what} with an invalid name {name!r}")
        plugin = self.current_plugin
        if name in self._entries:
            first, second = sorted(
                {self._entries[name].plugin, plugin}, key=lambda p: (self.order.get(p, len(self.order)), p)
            )
            raise PluginError(
                f"{self.what} {name!r} is registered twice: by plugin {self.describe(first)} and by plugin "
                f"{self.describe(second)}; uninstall one or block it with GENTRAIN_DISABLE_PLUGINS={second}"
            )
        if config_cls is not None and not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
            raise PluginError(
                f"plugin {self.current_plugin!r} registered {self.what} {name!r} with config class "
                f"{config_cls!r}, which is not a @dataclass; decorate it with @dataclasses.dataclass"
            )
        if domain is not None and domain not in DOMAINS:
            raise PluginError(
                f"plugin {self.current_plugin!r} registered {self.what} {name!r} with domain "
                f"{domain!r}{suggest(str(domain), DOMAINS)}; domains: {', '.join(DOMAINS)}"
            )
        if domain is None and kind == "reconstruction":
            domain = "probabilities"
        if doc is None:
            lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            doc = lines[0] if lines else ""
        self._entries[name] = Entry(name, obj, config_cls, plugin, kind, doc, domain)

    def get(self, name: str, *, kind: str | None = None) -> Entry[T]:
        """Return the entry called ``name`` (of sub-kind ``kind`` if given).

        Raises :class:`ConfigError` naming the config field, the value, the
        known names and the close ones.
        """
        entry = self._entries.get(name)
        choices = self.names(kind=kind)
        if entry is not None and kind is not None and entry.kind != kind:
            other = entry.kind or "untyped"
            article = "an" if other[0] in "aeiou" else "a"
            plural = self.what + ("es" if self.what.endswith("s") else "s")
            raise ConfigError.one(
                self.field,
                name,
                f"{name!r} is {article} {other} {self.what}, not a {kind} {self.what}; "
                f"{kind} {plural}: {', '.join(choices) or 'none'}",
            )
        if entry is None:
            what = f"{kind} {self.what}" if kind else self.what
            raise ConfigError.one(
                self.field,
                name,
                f"unknown {what}{suggest(str(name), choices)}; known: {', '.join(choices) or 'none'}",
            )
        return entry

    def names(self, *, kind: str | None = None) -> list[str]:
        return sorted(n for n, e in self._entries.items() if kind is None or e.kind == kind)

    def by_plugin(self, plugin: str) -> list[Entry[T]]:
        return [e for e in self._entries.values() if e.plugin == plugin]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)


LossFn = Callable[..., Any]


class LossRef(str):
    """A loss name from a config, with the loss's own validated parameters.

    ``recon_loss: {name: huber, delta: 0.5}`` resolves to ``LossRef("huber",
    HuberConfig(delta=0.5))``: it compares and prints as the name, and
    :func:`engine.get_loss` passes the parameters to the loss as keywords.
    The plain form ``recon_loss: huber`` stays a plain ``str``.
    """

    params: Any

    def __new__(cls, name: str, params: Any = None) -> LossRef:
        self = super().__new__(cls, name)
        self.params = params
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return LossRef, (str(self), self.params)

    def kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments (``{}`` when there are none)."""
        if self.params is None:
            return {}
        return {f.name: getattr(self.params, f.name) for f in dataclasses.fields(self.params)}
