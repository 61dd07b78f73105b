"""Loading plugins and holding what they registered.

Where plugins come from, in order:

1. every entry point in the group ``gentrain`` (the built-in AE, VAE, GAN,
   AE-GAN, datasets, losses and callbacks are entry points of the ``gentrain``
   distribution itself, loaded exactly like a third party's; the host imports
   none of their content);
2. modules named in ``GENTRAIN_PLUGINS`` (comma-separated import paths).

Environment variables:

``GENTRAIN_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry points from other distributions (the built-ins still load);
``GENTRAIN_DISABLE_PLUGINS=a,b``
    block the plugins named ``a`` and ``b`` (entry-point names), built-in or not.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as md
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any

import pluggy

from engine import hookspecs
from engine.errors import GentrainError, PluginError, suggest
from engine.registry import Registry

ENTRY_POINT_GROUP = "gentrain"
DIST_NAME = "gentrain"
AUTOLOAD_ENV = "GENTRAIN_DISABLE_PLUGIN_AUTOLOAD"
BLOCK_ENV = "GENTRAIN_DISABLE_PLUGINS"
EXTRA_ENV = "GENTRAIN_PLUGINS"


@dataclass
class PluginInfo:
    """What ``gentrain plugins`` shows for one plugin."""

    name: str
    module: str
    dist: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


class PluginManager:
    """A pluggy plugin manager plus the registries its plugins filled.

    Build one with :func:`load_plugins`; the engine keeps one per process
    (:func:`current`), and tests build fresh ones with ``autoload=False``.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.models: Registry[Any] = Registry("model", "model.name")
        self.losses: Registry[Any] = Registry("loss", "loss")
        self.datasets: Registry[Any] = Registry("dataset", "data.name")
        self.options: Registry[Any] = Registry("option set", "section")
        self.blocked: list[str] = []
        self.info: dict[str, PluginInfo] = {}
        self._registered = False

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- loading -----------------------------------------------------------

    def register(
        self, plugin: object, name: str | None = None, *, dist: str = "", version: str = "", builtin: bool = False
    ) -> None:
        """Register one plugin object (a module or any object with hookimpls)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if self.pm.is_blocked(name):
            return
        if self._registered:
            raise PluginError(f"plugin {name!r} registered after the registries were filled; register it earlier")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as e:
            raise PluginError(f"plugin {name!r} is invalid: {e}") from e
        except ValueError as e:  # pluggy: name or object already registered
            raise PluginError(f"plugin {name!r} cannot be registered: {e}") from e
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        declared = getattr(plugin, "gentrain_api", None) or getattr(sys.modules.get(module), "gentrain_api", None)
        if declared is not None and str(declared) != hookspecs.API_VERSION:
            self.pm.unregister(name=name)
            where = f"{dist} {version}" if dist else module
            raise PluginError(
                f"plugin {name!r} ({where}) is written for gentrain plugin API {str(declared)!r}, but this gentrain "
                f"{_version(DIST_NAME)} provides API {hookspecs.API_VERSION!r}; install a version of the plugin "
                f"for API {hookspecs.API_VERSION!r}, or block it with {BLOCK_ENV}={name}"
            )
        self.info[name] = PluginInfo(name, module, dist, version, builtin)

    def block(self, names: Iterable[str]) -> None:
        for n in names:
            if n:
                self.pm.set_blocked(n)
                self.blocked.append(n)

    def load_entry_points(self, *, third_party: bool) -> None:
        """Import and register every entry point in the ``gentrain`` group.

        :param third_party: also load entry points of distributions other than gentrain.
        """
        # Built-ins first, then other distributions in name order.
        eps = sorted(
            md.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda e: ((e.dist.name if e.dist else "") != DIST_NAME, e.dist.name if e.dist else "", e.name),
        )
        seen: dict[str, str] = {}
        for ep in eps:
            dist = ep.dist.name if ep.dist else "unknown"
            builtin = dist == DIST_NAME
            if (not builtin and not third_party) or self.pm.is_blocked(ep.name):
                continue
            if ep.name in seen:
                if seen[ep.name] == dist:  # the same distribution seen twice on sys.path
                    continue
                # A plugin name is unique: another distribution must not replace (impersonate) one.
                raise PluginError(
                    f"plugin name {ep.name!r} is claimed by two distributions: {seen[ep.name]} "
                    f"{_version(seen[ep.name])} and {dist} {_version(dist)}; uninstall one, or block the name "
                    f"with {BLOCK_ENV}={ep.name} (that blocks both)"
                )
            seen[ep.name] = dist
            try:
                plugin = ep.load()
            except Exception as e:
                raise PluginError(
                    f"plugin {ep.name!r} (entry point {ep.value!r} of {dist} {_version(dist)}) "
                    f"failed to import: {type(e).__name__}: {e}; uninstall it or block it with {BLOCK_ENV}={ep.name}"
                ) from e
            self.register(plugin, ep.name, dist=dist, version=_version(dist), builtin=builtin)

    def load_modules(self, modules: Iterable[str]) -> None:
        for mod in modules:
            mod = mod.strip()
            if not mod:
                continue
            try:
                plugin = importlib.import_module(mod)
            except Exception as e:
                raise PluginError(f"plugin module {mod!r} (from {EXTRA_ENV}) failed to import: {e}") from e
            self.register(plugin, mod, dist="", version="")

    def finish(self) -> PluginManager:
        """Validate hook names, then run the registration hooks once."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            plugin = self.pm.get_name(e.plugin) if e.plugin is not None else "?"
            found = re.search(r"unknown hook '([^']+)'", str(e))
            hooks = [n for n in dir(hookspecs) if n.startswith("gentrain_")]
            hint = suggest(found.group(1), hooks) if found else ""
            raise PluginError(
                f"plugin {plugin!r} implements an unknown hook: {e}{hint}. "
                f"Hook names start with 'gentrain_'; see engine/hookspecs.py"
            ) from e
        order = {name: i for i, name in enumerate(self.info)}
        for hookname, registry in (
            ("gentrain_register_models", self.models),
            ("gentrain_register_losses", self.losses),
            ("gentrain_register_datasets", self.datasets),
            ("gentrain_register_options", self.options),
        ):
            # Called through the manager with keyword arguments, so a spec can
            # grow an argument without breaking implementations that take fewer.
            impls = getattr(self.pm.hook, hookname).get_hookimpls()
            registry.caller = lambda impls=impls: _calling_plugin(impls)  # type: ignore[misc]
            registry.order = order
            registry.describe = self.describe
            try:
                getattr(self.pm.hook, hookname)(registry=registry)
            except PluginError:
                raise
            except Exception as e:
                plugin = self.plugin_of_error(hookname, e.__traceback__) or "?"
                raise PluginError(f"plugin {plugin!r} raised in {hookname}: {type(e).__name__}: {e}") from e
            finally:
                registry.caller = lambda: None
        # Two plugins declaring one ``callbacks`` field fail here, at load, not at the first resolve.
        from engine.config import callbacks_class

        callbacks_class(self.options)
        for name, info in self.info.items():
            plugin = self.pm.get_plugin(name)
            info.hooks = sorted(h.name for h in (self.pm.get_hookcallers(plugin) or []))
        self._registered = True
        return self

    # -- calling -----------------------------------------------------------

    def plugin_of_error(self, hookname: str, tb: TracebackType | None) -> str | None:
        """Name the plugin whose implementation of ``hookname`` raised, from the traceback."""
        codes = {impl.function.__code__: impl.plugin_name for impl in getattr(self.pm.hook, hookname).get_hookimpls()}
        while tb is not None:
            if tb.tb_frame.f_code in codes:
                return codes[tb.tb_frame.f_code]
            tb = tb.tb_next
        return None

    def fire(self, hookname: str, **kwargs: Any) -> Any:
        """Call a hook; an exception from a plugin is re-raised naming plugin and hook."""
        try:
            return getattr(self.pm.hook, hookname)(**kwargs)
        except Exception as e:
            plugin = self.plugin_of_error(hookname, e.__traceback__)
            if plugin is None or isinstance(e, PluginError):
                raise
            error = PluginError(f"plugin {plugin!r} raised in hook {hookname}: {type(e).__name__}: {e}")
            # A hook's own failure (disk full, a network logger) may pass; an engine error it raised will not.
            error.retryable = not isinstance(e, GentrainError) or e.retryable
            raise error from e

    def describe(self, plugin: str) -> str:
        """``'name' (distribution version)``, for messages that must say what to uninstall."""
        info = self.info.get(plugin)
        if info is None or not info.dist:
            return repr(plugin)
        return f"{plugin!r} ({info.dist} {info.version})"

    def versions(self) -> dict[str, str]:
        return {n: i.version for n, i in sorted(self.info.items())}


def load_plugins(
    *, autoload: bool | None = None, blocked: Iterable[str] = (), extra: Iterable[object] = ()
) -> PluginManager:
    """Build a plugin manager: entry points, ``GENTRAIN_PLUGINS``, ``extra``.

    :param autoload: load third-party entry points; default from ``GENTRAIN_DISABLE_PLUGIN_AUTOLOAD``.
    :param blocked: plugin names to block, on top of ``GENTRAIN_DISABLE_PLUGINS``.
    :param extra: plugin objects to register (tests, notebooks).
    """
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").lower() not in ("1", "true", "yes")
    manager = PluginManager()
    manager.block([*os.environ.get(BLOCK_ENV, "").split(","), *blocked])
    manager.load_entry_points(third_party=autoload)
    manager.load_modules(os.environ.get(EXTRA_ENV, "").split(","))
    for i, plugin in enumerate(extra):
        manager.register(plugin, getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}")
    return manager.finish()


def _calling_plugin(impls: list[Any]) -> str | None:
    """The plugin whose hook implementation is on the call stack (innermost first).

    Two instances of one class share a code object, so a method is matched by
    its ``self`` too.
    """
    by_code: dict[Any, list[Any]] = {}
    for impl in impls:
        by_code.setdefault(impl.function.__code__, []).append(impl)
    frame = sys._getframe(1)
    while frame is not None:
        for impl in by_code.get(frame.f_code, ()):
            if len(by_code[frame.f_code]) == 1 or frame.f_locals.get("self") is impl.plugin:
                return str(impl.plugin_name)
        frame = frame.f_back  # type: ignore[assignment]
    return None


_current: PluginManager | None = None


def current() -> PluginManager:
    """The process's plugin manager, loaded on first use."""
    global _current
    if _current is None:
        _current = load_plugins()
    return _current


@contextlib.contextmanager
def using(manager: PluginManager | None) -> Iterator[PluginManager]:
    """Make ``manager`` (if given) the process's plugin manager inside the block.

    What models look up while they are built (``engine.get_loss``) then comes
    from the same manager the config was validated against.
    """
    if manager is None:
        yield current()
        return
    previous = set_current(manager)
    try:
        yield manager
    finally:
        set_current(previous)


def set_current(manager: PluginManager | None) -> PluginManager | None:
    """Make ``manager`` the process's plugin manager; returns the previous one."""
    global _current
    previous, _current = _current, manager
    return previous
