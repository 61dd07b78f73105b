"""The engine's exception types.

Every error a user can cause by input (a config, a data directory, a checkpoint,
a plugin) is one of these, raised before any Ray worker starts where possible,
with a message that names what was wrong and what is allowed.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from difflib import get_close_matches

#: How much of a value a :class:`ConfigError` message shows: a value built by a
#: YAML alias bomb, or a megabyte string, must not hang or flood the terminal.
_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxlevel = 4
_VALUE_REPR.maxdict = _VALUE_REPR.maxlist = _VALUE_REPR.maxtuple = _VALUE_REPR.maxset = 8
_VALUE_REPR.maxstring = _VALUE_REPR.maxother = 240
MAX_VALUE_CHARS = 300


def short_repr(value: object) -> str:
    """``repr(value)``, bounded in depth, items and length (at most :data:`MAX_VALUE_CHARS` characters)."""
    try:
        text = _VALUE_REPR.repr(value)
    except Exception:  # a value whose __repr__ raises still gets a message
        text = f"<{type(value).__name__}>"
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return text


def _cut(text: object, limit: int = 200) -> str:
    text = " ".join(str(text).split())  # one line, whatever a parser's message held
    return text if len(text) <= limit else text[: limit - 1] + "…"


class GentrainError(Exception):
    """Base class of every error the engine raises on purpose.

    ``retryable``: whether running the same thing again could succeed. Most of
    the engine's errors come from the input (a config, a file, a plugin) or from
    deterministic training (a NaN recurs when resumed from the same checkpoint),
    so Ray Train does not restart workers for them; an error wrapping some other
    exception (a hook that raised, an error that could not be sent) is retryable.
    """

    retryable: bool = False


class ConfigError(GentrainError, ValueError):
    """A config field holds a value that is not allowed.

    ``problems`` lists ``(field, value, allowed)`` triples, one per bad field,
    so a caller (or a test) can inspect them without parsing the message.
    """

    def __init__(self, problems: list[tuple[str, object, str]]) -> None:
        self.problems = problems
        lines = [f"{_cut(field)} = {short_repr(value)}: {_cut(allowed, 2000)}" for field, value, allowed in problems]
        if len(lines) == 1:  # one problem, one line
            super().__init__(f"invalid config: {lines[0]}")
        else:
            super().__init__(f"invalid config ({len(lines)} problems):\n  " + "\n  ".join(lines))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[tuple[str, object, str]]]]:
        # Rebuilt from its problems, so it crosses process boundaries (Ray workers) intact.
        return (type(self), (self.problems,))

    @classmethod
    def one(cls, field: str, value: object, allowed: str) -> ConfigError:
        return cls([(field, value, allowed)])


class DataError(GentrainError, ValueError):
    """A dataset could not be read: missing directory, truncated or corrupt file."""


class PluginError(GentrainError):
    """A plugin failed to load, registered something invalid, or raised in a hook."""


class CheckpointError(GentrainError):
    """A checkpoint could not be read or does not belong to this run."""


class TrainingError(GentrainError):
    """Training cannot go on (a non-finite loss under ``nan_policy=raise``, ...)."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest of ``choices``, or ``''``."""
    close = get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
