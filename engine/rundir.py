"""The run directory on the driver: can it be written, what is in it, and starting over.

``<run.output_dir>/<run.name>/`` holds ``config.yaml`` and ``checkpoints/``.
What ``run.resume`` does with one that exists:

- ``auto``: continue from its newest checkpoint (none: start);
- ``must``: continue, and refuse to start when it has no checkpoint;
- ``never``: start over; an existing run directory is moved aside first, to
  ``<name>.old-<timestamp>``, so the two runs' checkpoints never mix (one line says so).

Everything here runs once, on the driver, before training; nothing here creates
the run directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from engine import checkpoint as ckpt
from engine.config import RunConfig
from engine.errors import CheckpointError, ConfigError


def run_dir(config: RunConfig) -> Path:
    return Path(config.run.output_dir).expanduser() / str(config.run.name)


def check_writable(config: RunConfig) -> None:
    """Raise a clear error, naming the path, if the run directory could not be created or written.

    ``run.output_dir`` (or a folder above it) may be a file, a broken or looping
    symlink, or not writable; the run directory or its ``checkpoints/`` may be a file.
    """
    here = run_dir(config)
    saved = here / "config.yaml"
    if os.path.lexists(saved) and not saved.is_file():
        raise ConfigError.one(
            "run.name", config.run.name, f"{saved} is not a file; remove it or choose another run.name"
        )
    # From checkpoints/ up: the first thing that exists must be a writable folder.
    for p in (here / "checkpoints", here, *here.parents):
        field, value = (
            ("run.name", config.run.name)
            if p in (here, here / "checkpoints")
            else ("run.output_dir", config.run.output_dir)
        )
        if os.path.lexists(p) and not p.is_dir():
            what = "a broken or looping symlink" if p.is_symlink() and not p.exists() else "a file, not a directory"
            raise ConfigError.one(field, value, f"{p} is {what}; remove it or choose another {field}")
        if p.is_dir():
            try:  # os.access says yes to root even on a read-only mount: try it
                os.rmdir(tempfile.mkdtemp(prefix=".gentrain-probe-", dir=p))
            except OSError as e:
                raise ConfigError.one(field, value, f"{p} is not writable ({e.strerror or e})") from None
            return


def check_resume(config: RunConfig) -> None:
    """``run.resume=must`` with no checkpoint in the run directory is an error, before anything starts."""
    checkpoints = run_dir(config) / "checkpoints"
    if config.run.resume == "must" and ckpt.latest(checkpoints) is None:
        raise CheckpointError(
            f"run.resume=must but no checkpoint exists in {checkpoints}; "
            "check run.name and run.output_dir, or use run.resume=auto"
        )


def move_aside(config: RunConfig) -> Path | None:
    """For ``run.resume=never``: move an existing, non-empty run directory to ``<name>.old-<timestamp>``.

    Returns where it went (``None``: nothing was there). Prints one line saying so.
    """
    here = run_dir(config)
    if config.run.resume != "never" or not here.is_dir() or not any(here.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = here.with_name(f"{here.name}.old-{stamp}")
    n = 1
    while os.path.lexists(target):
        n += 1
        target = here.with_name(f"{here.name}.old-{stamp}-{n}")
    try:
        here.rename(target)
    except OSError as e:
        raise ConfigError.one(
            "run.resume", "never", f"the earlier run {here} could not be moved aside to {target}: {e.strerror or e}"
        ) from None
    print(f"gentrain: run.resume=never: moved the earlier run {here} aside to {target.name}", file=sys.stderr)
    return target


def remove_if_unstarted(path: Path, existed: bool) -> None:
    """After a failed run: remove the run directory it created if no checkpoint was written into it."""
    if existed or not path.is_dir() or ckpt.latest(path / "checkpoints") is not None:
        return
    shutil.rmtree(path, ignore_errors=True)
