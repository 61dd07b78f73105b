"""Where a run's checkpoints are, and which one to read.

A run is named by a run directory, its ``checkpoints/`` folder, one checkpoint
file, or a URI of any of these (``s3://…``, ``gs://…``, ``file://…``): read with
``pyarrow.fs`` (it comes with Ray), else ``fsspec``, copying only the files
needed into a temporary directory. :func:`select` picks the newest, the best
by a metric stored in each checkpoint, or the one of a given step.
"""

from __future__ import annotations

import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from engine import checkpoint as ckpt
from engine.errors import CheckpointError, ConfigError

__all__ = ["DEFAULT_METRICS", "fetch_remote", "is_uri", "local_candidates", "select"]

#: Validation metrics ``which="best"`` ranks by when no ``metric`` is given: the first every checkpoint holds.
DEFAULT_METRICS = ("val/loss", "val/elbo", "val/recon", "val/mse")


def _looks_like_checkpoint(path: Path) -> bool:
    """A torch zip file, or a raw pickle (refused, loudly, by :func:`engine.checkpoint.load`)."""
    if zipfile.is_zipfile(path):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _not_a_run(path: Any, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} {why}: give a run directory (holding checkpoints/step=*.pt), its checkpoints/ folder "
        "or a checkpoint file"
    )


def local_candidates(path: Path) -> tuple[list[Path], Path | None]:
    """Checkpoint files found at ``path``, oldest first, and the run directory they belong to."""
    if path.is_file():
        if not _looks_like_checkpoint(path):
            raise _not_a_run(path, "is neither a run directory nor a checkpoint file")
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
        return [path], run_dir
    if path.is_dir():
        found = ckpt.list_checkpoints(path / "checkpoints")
        if found:
            return found, path
        found = ckpt.list_checkpoints(path)
        if found:
            return found, (path.parent if path.name == "checkpoints" else None)
        raise _not_a_run(path, "is a directory without checkpoints, so neither a run directory nor a checkpoint")
    raise _not_a_run(path, "does not exist")


_CKPT = re.compile(r"step=\d+\.pt")


def is_uri(path: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", path))


def fetch_remote(uri: str, tmp: Path, which: str | int) -> dict[Path, str]:
    """Copy the checkpoint files ``which`` needs from ``uri`` into ``tmp/checkpoints``.

    Returns ``{local copy: its URI}``.
    """
    try:
        import pyarrow.fs as pafs
    except ImportError:  # pragma: no cover - pyarrow comes with ray
        return _fetch_fsspec(uri, tmp, which)
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            files = [root]
        elif info.type == pafs.FileType.Directory:
            files = []
            for sub in (root.rstrip("/") + "/checkpoints", root):
                if fs.get_file_info(sub).type == pafs.FileType.Directory:
                    entries = fs.get_file_info(pafs.FileSelector(sub))
                    files = [e.path for e in entries if _CKPT.fullmatch(e.base_name)]
                    if files:
                        break
        else:
            raise _not_a_run(uri, "does not exist")
    except CheckpointError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for bad URIs and credentials
        raise CheckpointError(f"{uri} could not be read: {_first_line(e)}") from e

    def copy(src: str, dst: Path) -> None:
        with fs.open_input_stream(src) as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    return _copy_needed(uri, root, files, tmp, which, copy)


def _fetch_fsspec(uri: str, tmp: Path, which: str | int) -> dict[Path, str]:
    try:
        import fsspec
    except ImportError as e:
        raise CheckpointError(f"{uri} is remote: reading it needs pyarrow or fsspec (pip install pyarrow)") from e
    try:
        ffs, root = fsspec.core.url_to_fs(uri)
        if ffs.isfile(root):
            files = [root]
        elif ffs.isdir(root):
            files = []
            for sub in (root.rstrip("/") + "/checkpoints", root):
                if ffs.isdir(sub):
                    files = [p for p in ffs.ls(sub, detail=False) if _CKPT.fullmatch(p.rsplit("/", 1)[-1])]
                    if files:
                        break
        else:
            raise _not_a_run(uri, "does not exist")
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{uri} could not be read: {_first_line(e)}") from e
    return _copy_needed(uri, root, files, tmp, which, lambda src, dst: ffs.get(src, str(dst)))


def _copy_needed(uri: str, root: str, files: list[str], tmp: Path, which: str | int, copy: Any) -> dict[Path, str]:
    if not files:
        raise _not_a_run(uri, "is a directory without checkpoints, so neither a run directory nor a checkpoint")
    files = sorted(files, key=lambda p: p.rsplit("/", 1)[-1])
    if which == "last":
        files = files[-1:]
    elif isinstance(which, int) and not isinstance(which, bool):
        files = [p for p in files if p.rsplit("/", 1)[-1] == ckpt.checkpoint_name(which)] or files
    dest = tmp / "checkpoints"
    dest.mkdir()
    copies: dict[Path, str] = {}
    for src in files:
        name = src.rsplit("/", 1)[-1]
        local = dest / (name if _CKPT.fullmatch(name) else "checkpoint.pt")
        try:
            copy(src, local)
        except Exception as e:
            raise CheckpointError(f"{uri}: copying {src} failed: {_first_line(e)}") from e
        if src == root:
            copies[local] = uri
        else:
            copies[local] = uri.rstrip("/") + "/" + src[len(root.rstrip("/")) :].lstrip("/")
        if not _looks_like_checkpoint(local):
            raise _not_a_run(copies[local], "is neither a run directory nor a checkpoint file")
    return copies


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _step_of(path: Path) -> int | None:
    m = re.fullmatch(r"step=(\d+)\.pt", path.name)
    return int(m.group(1)) if m else None


def select(
    candidates: list[Path], which: str | int, metric: str | None, mode: str, where: str
) -> tuple[Path, dict[str, Any]]:
    if isinstance(which, bool) or not (isinstance(which, int) or which in ("last", "best")):
        raise ConfigError.one("which", which, "must be 'last', 'best' or a step number")
    if mode not in ("min", "max"):
        raise ConfigError.one("mode", mode, "must be 'min' or 'max'")
    if isinstance(which, int):
        if len(candidates) == 1 and _step_of(candidates[0]) is None:
            state = ckpt.load(candidates[0])
            if int(state.get("step", -1)) != which:
                raise ConfigError.one("which", which, f"{where} holds step {state.get('step')} only")
            return candidates[0], state
        for path in candidates:
            if _step_of(path) == which:
                return path, ckpt.load(path)
        steps = ", ".join(str(_step_of(p)) for p in candidates)
        raise ConfigError.one("which", which, f"no checkpoint of that step in {where}; steps kept: {steps}")
    if which == "last":
        return candidates[-1], ckpt.load(candidates[-1])
    states = [(p, ckpt.load(p)) for p in candidates]
    seen = sorted({k for _, s in states for k in s.get("metrics", {})})
    key = metric
    if key is None:
        key = next((k for k in DEFAULT_METRICS if all(k in s.get("metrics", {}) for _, s in states)), None)
        if key is None:
            raise ConfigError.one(
                "metric", None, f"name the metric to rank checkpoints by; they hold: {', '.join(seen)}"
            )
    ranked = [(float(s["metrics"][key]), p, s) for p, s in states if key in s.get("metrics", {})]
    ranked = [r for r in ranked if math.isfinite(r[0])]
    if not ranked:
        raise ConfigError.one("metric", key, f"no checkpoint in {where} holds it; they hold: {', '.join(seen)}")
    best = min(ranked, key=lambda r: r[0]) if mode == "min" else max(ranked, key=lambda r: r[0])
    return best[1], best[2]
