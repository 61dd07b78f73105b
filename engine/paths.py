"""Where a run's outputs go: ``run.output_dir`` made absolute, and kept out of folders Ray deletes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Where a relative ``run.output_dir`` goes when the working directory is a Ray job's temporary copy.
JOB_OUTPUT_ROOT = "~/gentrain-runs"
#: The folder of a Ray session that holds the runtime environments it unpacks
#: (``<temp dir>/session_<...>/runtime_resources/working_dir_files/_ray_pkg_<hash>``).
_RUNTIME_RESOURCES = "runtime_resources"

_announced: set[Path] = set()


def in_ray_temp_working_dir(cwd: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``cwd`` (default: the working directory) lies in a runtime environment Ray unpacked.

    ``ray job submit --working-dir D`` runs the entrypoint in a per-job copy of
    ``D`` under ``<Ray temp dir>/session_<...>/runtime_resources/``, which Ray
    deletes with the session or when the package is evicted. The check is on
    the path, not the environment: Ray 2.60 gives a job's entrypoint only
    ``RAY_ADDRESS``, ``RAY_JOB_CONFIG_JSON_ENV_VAR`` and ``PYTHONUNBUFFERED``
    (it strips ``RAY_JOB_ID``), and those say nothing about where the entrypoint
    runs: a job without ``--working-dir`` runs in a folder that lasts. The temp
    dir may be anywhere (``ray start --temp-dir``), so any ``session_*`` folder
    holding ``runtime_resources`` counts.
    """
    parts = Path(os.path.realpath(cwd if cwd is not None else os.getcwd())).parts
    return any(parts[i] == _RUNTIME_RESOURCES and parts[i - 1].startswith("session_") for i in range(1, len(parts)))


def resolve_output_dir(output_dir: str | os.PathLike[str], *, cwd: str | os.PathLike[str] | None = None) -> str:
    """``run.output_dir`` as an absolute path (``~`` expanded).

    A relative path is taken relative to ``cwd`` (default: the working
    directory), except where that is a Ray job's temporary copy of its working
    dir (:func:`in_ray_temp_working_dir`): outputs written there would vanish,
    so it goes under :data:`JOB_OUTPUT_ROOT` instead (``runs`` becomes
    ``~/gentrain-runs/runs``), the same place for every submit, so a second
    submit of the same ``run.name`` resumes the run. That is printed once per
    process and place: ``gentrain: outputs under ...``.
    """
    if "://" in str(output_dir):
        from engine.errors import ConfigError

        raise ConfigError.one(
            "run.output_dir",
            str(output_dir),
            "must be a filesystem path (on a cluster: shared storage such as NFS or EFS, mounted at the same "
            "path on every node); URIs like s3:// are not supported for writing runs",
        )
    path = Path(output_dir).expanduser()
    if path.is_absolute():
        return str(path.resolve())
    base = Path(cwd) if cwd is not None else Path.cwd()
    if not in_ray_temp_working_dir(base):
        return str((base / path).resolve())
    resolved = (Path(JOB_OUTPUT_ROOT).expanduser() / path).resolve()
    if resolved not in _announced:
        _announced.add(resolved)
        print(
            f"gentrain: outputs under {resolved} (run.output_dir={str(output_dir)!r} is relative, and this "
            f"Ray job's working directory {base} is a temporary copy)",
            file=sys.stderr,
            flush=True,
        )
    return str(resolved)
