r"""What the loaded plugins offer, for ``gentrain plugins -v`` and ``gentrain config show``.

Every model, loss, dataset and option set (trainer plugins) with its doc line,
and every field of its config class with its type, default and doc.

A field's doc comes, in this order of preference, from

1. ``Annotated`` metadata with a ``documentation`` attribute (PEP 727's
   ``typing_extensions.Doc("...")``);
2. a string literal right after the field (an attribute docstring, the
   convention of gentrain's own configs)::

       latent_dim: engine.PositiveInt = 20
       '''Size of the code.'''

3. ``#:`` comment lines right above the field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import textwrap
import typing
from typing import Any

from engine.config import CALLBACKS, loss_fields


def field_docs(cls: type) -> dict[str, str]:
    """Doc of each field of the dataclass ``cls`` (and its bases), from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
        for i, node in enumerate(body):
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            name = node.target.id
            after = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[name] = " ".join(inspect.cleandoc(after.value.value).split())
                continue
            comments: list[str] = []
            j = node.lineno - 2
            while j >= 0 and lines[j].strip().startswith("#:"):
                comments.insert(0, lines[j].strip()[2:].strip())
                j -= 1
            if comments:
                docs[name] = " ".join(comments)
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        hints = {}
    for name, hint in hints.items():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(getattr(meta, "documentation", None), str):
                docs[name] = meta.documentation
    return docs


def type_name(hint: Any) -> str:
    """A readable type: ``int > 0``, ``tuple[int > 0, ...]``, ``'mlp' | 'conv'``, ``str | None``."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(hint)
        text = type_name(base)
        for m in meta:
            for item in getattr(m, "metadata", [m]):
                for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                    value = getattr(item, attr, None)
                    if value is not None:
                        text += f" {sym} {value}"
            kind = getattr(m, "kind", None)
            if type(m).__name__ == "LossName" and kind:
                article = "an" if kind[0] in "aeiou" else "a"
                text += f" ({article} {kind} loss" + (f" taking {m.takes})" if getattr(m, "takes", None) else ")")
        return text
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join("None" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if isinstance(hint, type):
        return hint.__name__
    return re.sub(r"\btyping\.", "", str(hint))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def describe_fields(cls: type | None) -> list[dict[str, Any]]:
    """``[{name, type, default, doc}]`` for every init field of the dataclass ``cls``."""
    if cls is None or not dataclasses.is_dataclass(cls):
        return []
    docs = field_docs(cls)
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        hints = {}
    losses = loss_fields(cls) if hints else {}
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _plain(f.default_factory())
        else:
            default = "<required>"
        row = {"name": f.name, "type": type_name(hints.get(f.name, f.type)), "default": default}
        row["doc"] = docs.get(f.name, "")
        if f.name in losses:
            row["loss_kind"] = losses[f.name].kind
        out.append(row)
    return out


def _entry(e: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": e.name, "plugin": e.plugin, "doc": e.doc}
    if e.kind is not None:
        d["kind"] = e.kind
    if getattr(e, "domain", None) is not None:
        d["domain"] = e.domain
    d["fields"] = describe_fields(e.config_cls)
    return d


def describe(pm: Any) -> dict[str, Any]:
    """Everything the loaded plugins register, as plain data (``gentrain plugins -v --json``)."""
    plugins = []
    for name, info in sorted(pm.info.items(), key=lambda kv: (not kv[1].builtin, kv[0])):
        plugins.append(
            {
                "name": name,
                "version": info.version,
                "builtin": info.builtin,
                "distribution": info.dist,
                "module": info.module,
                "hooks": sorted(info.hooks),
            }
        )
    options = []
    for e in pm.options:
        d = _entry(e)
        d["section"] = CALLBACKS if e.kind == CALLBACKS else e.name
        options.append(d)
    from engine.config import _SECTIONS, DataConfig

    engine_sections = {name: describe_fields(cls) for name, cls in _SECTIONS.items()}
    engine_sections["data"] = [f for f in describe_fields(DataConfig) if f["name"] != "params"]
    return {
        "plugins": plugins,
        "sections": engine_sections,
        "models": [_entry(e) for e in pm.models],
        "losses": [_entry(e) for e in pm.losses],
        "datasets": [_entry(e) for e in pm.datasets],
        "options": options,
    }


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def _fields_text(fields: list[dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for f in fields:
        default = json.dumps(f["default"]) if not isinstance(f["default"], str) else repr(f["default"])
        line = f"{indent}{f['name']}: {f['type']} = {default}"
        lines.append(line + (f"  -- {f['doc']}" if f["doc"] else ""))
    return lines


def to_text(data: dict[str, Any]) -> str:
    """The human form of :func:`describe`: a block per kind, fields indented under their entry."""
    lines: list[str] = []
    lines.append("plugins:")
    for p in data["plugins"]:
        origin = "built-in" if p["builtin"] else (p["distribution"] or "GENTRAIN_PLUGINS")
        lines.append(f"  {p['name']} {p['version']} ({origin}: {p['module']})")
        events = [h for h in p["hooks"] if h.startswith("gentrain_on_") or h == "gentrain_make_optimizer"]
        if events:
            lines.append("      trainer hooks: " + ", ".join(events))
    lines.append("engine sections (every run config has them; model.* and data.* add the entry's fields):")
    for name, fields in data.get("sections", {}).items():
        lines.append(f"  {name}")
        lines += _fields_text(fields, "      ")
    for label, key in (("models", "models"), ("losses", "losses"), ("datasets", "datasets"), ("options", "options")):
        lines.append(f"{label}:")
        for e in data[key]:
            tags = [e["kind"]] if e.get("kind") else []
            if e.get("domain"):
                tags.append(f"takes {e['domain']}")
            if key == "options":
                tags.append(f"section {e['section']}")
            tag = f" [{', '.join(tags)}]" if tags else ""
            lines.append(f"  {e['name']}{tag} (plugin {e['plugin']})" + (f": {e['doc']}" if e["doc"] else ""))
            lines += _fields_text(e["fields"], "      ")
    return "\n".join(lines)


def config_show(raw: dict[str, Any], overrides: list[str], pm: Any) -> Any:
    """The :class:`~engine.config.RunConfig` that ``raw`` with ``overrides`` resolves to (before the run is named)."""
    from engine import config as cfg

    return cfg.resolve(cfg.build_raw(raw, overrides), pm)


def hook_reference() -> str:
    """The hook reference of ``docs/plugins.md``, generated from :mod:`engine.hookspecs` (in source order)."""
    from engine import hookspecs

    specs = []
    for name in dir(hookspecs):
        fn = getattr(hookspecs, name)
        if name.startswith("gentrain_") and callable(fn):
            specs.append((inspect.getsourcelines(fn)[1], name, fn))
    out: list[str] = []
    for _, name, fn in sorted(specs):
        opts = getattr(fn, f"{hookspecs.PROJECT}_spec", {}) or {}
        kind = (
            "factory, first result wins"
            if opts.get("firstresult")
            else ("event, every rank" if name.startswith("gentrain_on_") else "registration, once per process")
        )
        sig = inspect.signature(fn)
        args = ", ".join(sig.parameters)
        out.append(f"### `{name}({args})`\n")
        out.append(f"*{kind}*; returns `{sig.return_annotation}`.\n")
        body, params = [], []
        for line in inspect.cleandoc(fn.__doc__ or "").splitlines():
            m = re.match(r":param (\w+):\s*(.*)", line)
            r = re.match(r":returns?:\s*(.*)", line)
            if m:
                params.append([f"- `{m.group(1)}`", m.group(2)])
            elif r:
                params.append(["- returns", r.group(1)])
            elif params and line.startswith(" "):
                params[-1][1] += " " + line.strip()
            else:
                body.append(line)
        text = "\n".join(body).strip()
        text = re.sub(r":(?:class|func|meth|mod|data):`~?([^`]+)`", r"`\1`", text).replace("``", "`")
        out.append(text + "\n")
        if params:
            for label, doc in params:
                doc = re.sub(r":(?:class|func|meth|mod|data):`~?([^`]+)`", r"`\1`", doc).replace("``", "`")
                out.append(f"{label}: {doc}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
