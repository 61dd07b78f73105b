"""The engine's exception types.

Every error a user can cause by input (a config, a data directory, a checkpoint,
a plugin) is one of these, raised before any Ray worker starts where possible,
with a message that names what was wrong and what is allowed.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches


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
        lines = [f"{field} = {value!r}: {allowed}" for field, value, allowed in problems]
        head = "invalid config" if len(lines) == 1 else f"invalid config ({len(lines)} problems)"
        super().__init__(head + ":\n  " + "\n  ".join(lines))

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
