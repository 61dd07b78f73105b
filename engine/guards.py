"""Bounds on untrusted input, below the config layer.

What a YAML document may make the parser build (size, depth, what aliases
expand to), what pydantic's lax mode would let through (a boolean for a number,
an integer past int64), and names and paths that must stay one safe component.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml

from engine.errors import ConfigError

#: Bounds on what a config file, search space file or override may make the parser build.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses deep nesting and documents that expand (aliases) past a node count."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlBoundError(f"nests deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class YamlBoundError(Exception):
    pass


def _expanded_size(node: yaml.Node) -> int:
    """Nodes the document has once every alias is expanded (each node counted once per place it appears)."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node, seen: tuple[int, ...]) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in seen:  # a recursive alias
            raise YamlBoundError("refers to itself (a recursive alias)")
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c, (*seen, key)) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k, (*seen, key)) + size(v, (*seen, key)) for k, v in n.value)
        if total > MAX_YAML_NODES:
            raise YamlBoundError(f"expands to more than {MAX_YAML_NODES} values (aliases)")
        sizes[key] = total
        return total

    return size(node, ())


def safe_load(text: str, what: str | None = None) -> Any:
    """``yaml.safe_load`` with bounds on depth and on what aliases expand to.

    Past them: :class:`YamlBoundError`, or with ``what`` (``"<override>"``) a :class:`ConfigError` naming it.
    """
    try:
        return _safe_load(text)
    except YamlBoundError as e:
        if what is None:
            raise
        raise ConfigError.one(what, text, f"refused: the value {e}") from None


def _safe_load(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except RecursionError:
        raise YamlBoundError(f"nests deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, what: str = "<config file>") -> Any:
    """The YAML document in ``path``: at most :data:`MAX_YAML_BYTES` bytes of UTF-8, bounded as :func:`safe_load`.

    :raises ConfigError: naming the file, for a missing or unreadable file, bytes that are not UTF-8,
        invalid YAML, or a document past the bounds. Tags that build Python objects are refused unrun.
    """
    p = Path(path)
    try:
        if not p.is_file():
            raise ConfigError.one(what, str(path), "is a directory, not a file" if p.is_dir() else "no such file")
        size = p.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError.one(what, str(path), f"is {size} bytes; at most {MAX_YAML_BYTES} are read")
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError.one(what, str(path), f"cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError.one(
            what, str(path), f"is not UTF-8 text (byte {e.start} is {data[e.start : e.start + 1]!r})"
        ) from None
    try:
        return safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError.one(what, str(path), f"is not valid YAML: {e}") from None
    except YamlBoundError as e:
        raise ConfigError.one(what, str(path), f"refused: the document {e}") from None


INT64_MAX = 2**63 - 1
_hints_cache: dict[type, dict[str, Any]] = {}


def strict_problems(cls: type, known: Mapping[str, Any], prefix: str) -> list[tuple[str, object, str]]:
    """What pydantic's lax mode lets through: a boolean for a number (``true`` -> 1), an integer past int64."""
    hints = _hints_cache.get(cls)
    if hints is None:
        try:
            hints = _hints_cache[cls] = typing.get_type_hints(cls, include_extras=True)
        except Exception:  # a plugin's config class whose hints do not resolve: pydantic reports it
            hints = _hints_cache[cls] = {}
    out: list[tuple[str, object, str]] = []
    for name, value in known.items():
        if name in hints:
            _strict_value(hints[name], value, f"{prefix}{name}", out)
    return out


def _strict_value(hint: Any, value: Any, path: str, out: list[tuple[str, object, str]]) -> None:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        members = [a for a in args if a is not type(None)]
        if value is not None and len(members) == 1:
            _strict_value(members[0], value, path, out)
        return
    if hint is int or hint is float:
        if isinstance(value, bool):
            kind = "an integer" if hint is int else "a number"
            out.append((path, value, f"must be {kind}, not a boolean"))
        elif isinstance(value, int) and abs(value) > INT64_MAX:
            out.append((path, value, "must fit in 64 bits (between -2**63 and 2**63 - 1)"))
        return
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            members = list(args)
        else:
            members = [args[0]] * len(value) if args else []
        for i, (h, v) in enumerate(zip(members, value, strict=False)):
            _strict_value(h, v, f"{path}.{i}", out)
    elif origin is dict and isinstance(value, Mapping) and len(args) == 2:
        for k, v in value.items():
            _strict_value(args[1], v, f"{path}.{k}", out)


#: Longest ``run.name`` (bytes): room is left for the ``.old-<timestamp>`` suffix of a run moved aside.
MAX_NAME_BYTES = 200
_SAFE_NAME = re.compile(r"^\w[\w.+=@,-]*$")


def split_strict(cls: type, known: dict[str, Any], prefix: str) -> tuple[dict[str, Any], list[tuple[str, object, str]]]:
    """``known`` without the fields :func:`strict_problems` refuses, and those problems."""
    found = strict_problems(cls, known, prefix)
    bad = {fieldname[len(prefix) :].split(".")[0] for fieldname, _, _ in found}
    return {k: v for k, v in known.items() if k not in bad}, found


def run_problems(run: Any) -> list[tuple[str, object, str]]:
    """``run.name`` must be one safe directory name, ``run.output_dir`` a path a filesystem call can take."""
    if run is None:
        return []
    return name_problems("run.name", run.name) + path_problems("run.output_dir", run.output_dir)


def name_problems(field: str, name: object) -> list[tuple[str, object, str]]:
    """Problems of a name that becomes one directory (a run, an experiment): none if it is one safe component."""
    if not isinstance(name, str):
        return []  # the field's type check reports it
    if name in ("", ".", ".."):
        return [(field, name, "must name one directory: not empty, '.' or '..'")]
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return [(field, name, f"is {len(name)} characters long; a name may have at most {MAX_NAME_BYTES} bytes")]
    if not _SAFE_NAME.match(name):
        return [
            (
                field,
                name,
                "must be one directory name: letters, digits and . _ - + = @ , (no '/', '\\', spaces or "
                "control characters), starting with a letter, digit or '_'",
            )
        ]
    return []


def path_problems(field: str, value: object) -> list[tuple[str, object, str]]:
    """A path field that no filesystem call could take (a NUL byte, a lone surrogate)."""
    if not isinstance(value, str):
        return []
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return [(field, value, "is not a valid path (it holds characters that are not UTF-8)")]
    if "\x00" in value:
        return [(field, value, "is not a valid path (it holds a NUL byte)")]
    return []
