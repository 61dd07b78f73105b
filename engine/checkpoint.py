"""What a checkpoint holds and how it is written and read.

A checkpoint is one file, ``checkpoints/step=000000120.pt``, holding a dict:

======================  =====================================================
``format``              checkpoint format version (:data:`FORMAT`)
``model_name``          registered model name
``model``               the model's ``state_dict`` (DDP wrappers removed)
``optimizers``          ``{name: optimizer.state_dict()}``
``scalers``             ``{name: GradScaler.state_dict()}`` (fp16 only)
``epoch``               the epoch to run next
``step``                global steps done
``batch_in_epoch``      batches of ``epoch`` already consumed (sampler position)
``rng``                 per-rank RNG states: torch, CUDA, numpy, Python
``config``              the resolved run config as a plain dict
``plugins``             ``{plugin name: version}`` of the writing process
``metrics``             the last reported metrics
``plugin_state``        what plugins stored from ``gentrain_on_save_checkpoint``
``data_spec``           ``{shape, num_classes, name}`` of the training data, so
                        :func:`engine.load` needs no data files (older
                        checkpoints lack it)
``model_plugin``        ``{plugin, dist, version}`` that registered the model:
                        what to install where the plugin is missing
======================  =====================================================

Files are written to a temporary name, flushed to disk and renamed, so a crash
mid-write never leaves a truncated file under a checkpoint's name. They are
read with ``torch.load(weights_only=True)``: a file carrying pickled code is
refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import CheckpointError
from engine.model import DataSpec

FORMAT = 1
_NAME = re.compile(r"^step=(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step={step:09d}.pt"


def save(state: dict[str, Any], directory: str | Path) -> Path:
    """Write ``state`` atomically as ``directory/step=<step>.pt``; return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(int(state["step"]))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; any problem becomes a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a directory, not a file; remove it (or move it away)")
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write never finished; delete it")
    try:
        with warnings.catch_warnings():
            # Raised for plain pickles (not torch zip files), which are refused below anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds Python objects other than tensors and plain "
            f"containers, which could run code when loaded ({str(e).splitlines()[0]})"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {str(e).splitlines()[0]}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a gentrain checkpoint of format {FORMAT}")
    return state


#: What every checkpoint holds, and the type of each.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model_name": str,
    "model": dict,
    "optimizers": dict,
    "epoch": int,
    "step": int,
    "batch_in_epoch": int,
    "rng": list,
}


def check_state(state: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` naming ``path``: a missing entry, one of the wrong type, a malformed RNG state."""
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it is damaged or not written by gentrain")
    wrong = [k for k, kind in REQUIRED.items() if not isinstance(state[k], kind) or isinstance(state[k], bool)]
    if wrong:
        raise CheckpointError(f"checkpoint {path} has entries of the wrong type: {', '.join(wrong)}; it is damaged")
    size = torch.get_rng_state().numel()
    for rank, rng in enumerate(state["rng"]):
        try:
            ok = rng["torch"].dtype == torch.uint8 and rng["torch"].numel() == size
            ok = ok and len(rng["numpy"]) == 5 and rng["numpy"][1].numel() == 624 and len(rng["python"][1]) == 625
        except (KeyError, TypeError, AttributeError, IndexError):
            ok = False
        if not ok:
            raise CheckpointError(f"checkpoint {path} holds a malformed RNG state (rank {rank}); it is damaged")


_START_OVER = "resume with the config of that run, or start over with run.resume=never (it moves the old run aside)"


def check_model(state: dict[str, Any], trainer: Any, path: Path) -> None:
    """Refuse a checkpoint of another model, or of this model with other parameter shapes (a changed model config)."""
    name = trainer.config.model.name
    if state["model_name"] != name:
        raise CheckpointError(f"checkpoint {path} is of model {state['model_name']!r}, but this run trains {name!r}")
    with trainer.unwrapped() as model:
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    if ours != theirs:
        missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        shapes = [f"{k} {theirs[k]} vs {ours[k]}" for k in sorted(set(ours) & set(theirs)) if ours[k] != theirs[k]]
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(extra[:3])}" if extra else "",
                f"shapes {', '.join(shapes[:3])}" if shapes else "",
            )
            if part
        )
        raise CheckpointError(
            f"checkpoint {path} does not fit this model (was the model config changed?): {detail}; {_START_OVER}"
        )


def check_optimizers(state: dict[str, Any], optimizers: dict[str, torch.optim.Optimizer], path: Path) -> None:
    """Refuse a checkpoint whose optimizers are not those this run builds (names, classes, parameter groups)."""
    saved = state["optimizers"]
    for name, opt in optimizers.items():
        hint = _START_OVER
        if name not in saved:
            raise CheckpointError(
                f"checkpoint {path} has no state for optimizer {name!r} (it has {sorted(saved)}); {hint}"
            )
        groups = saved[name].get("param_groups") if isinstance(saved[name], dict) else None
        if not isinstance(groups, list) or len(groups) != len(opt.param_groups):
            raise CheckpointError(f"checkpoint {path}: optimizer {name!r} has other parameter groups; {hint}")
        for group, built in zip(groups, opt.param_groups, strict=True):
            # A learning-rate scheduler adds initial_lr; that says nothing of the optimizer's kind.
            theirs, ours = set(group) - {"params", "initial_lr"}, set(built) - {"params", "initial_lr"}
            if theirs != ours or len(group["params"]) != len(built["params"]):
                raise CheckpointError(
                    f"checkpoint {path}: optimizer {name!r} was of another kind (settings {sorted(theirs - ours)} "
                    f"vs {type(opt).__name__}'s {sorted(ours - theirs)}; was optim.algo changed?); {hint}"
                )


def load_resumable(newest: str | Path, trainer: Any = None) -> dict[str, Any]:
    """The state of ``newest``, or of the newest older checkpoint beside it that is readable.

    A file that is unreadable, truncated or missing entries is passed over for
    the previous one (one line says so); a checkpoint that reads but does not
    fit this run (another model, another model config, another optimizer) is an
    error, as an older one would not fit either. ``trainer``: the run's
    :class:`~engine.trainer.Trainer` (its model, optimizers, and whether this rank speaks).
    """
    newest = Path(newest)
    older = [p for p in list_checkpoints(newest.parent) if p.name < newest.name] if _NAME.match(newest.name) else []
    first: CheckpointError | None = None
    for path in [newest, *reversed(older)]:
        try:
            state = load(path)
            check_state(state, path)
        except CheckpointError as e:
            first = first or e
            continue
        if path != newest and (trainer is None or trainer.is_rank_zero):
            print(f"gentrain: {first}; resuming from the previous checkpoint, {path.name}", file=sys.stderr)
            if newest.is_dir():  # in the way of the checkpoint this run writes next under that name
                newest.rename(newest.with_name(newest.name + ".damaged"))
        if trainer is not None:
            check_model(state, trainer, path)
            check_optimizers(state, trainer.optimizers, path)
        return state
    assert first is not None
    raise first


def spec_state(spec: DataSpec) -> dict[str, Any]:
    """A :class:`DataSpec` as plain values (the checkpoint's ``data_spec``)."""
    return {"shape": [int(d) for d in spec.shape], "num_classes": spec.num_classes, "name": spec.name}


def spec_from_state(state: dict[str, Any]) -> DataSpec | None:
    """The checkpoint's :class:`DataSpec`, or ``None`` for checkpoints written before it was stored."""
    raw = state.get("data_spec")
    if not isinstance(raw, dict):
        return None
    c, h, w = (int(d) for d in raw["shape"])
    classes = raw.get("num_classes")
    return DataSpec((c, h, w), None if classes is None else int(classes), str(raw.get("name", "")))


def model_origin(plugins: Any, model_name: str) -> dict[str, str]:
    """``{plugin, dist, version}`` of the plugin that registered ``model_name`` (the checkpoint's ``model_plugin``)."""
    entry = plugins.models.get(model_name)
    info = plugins.info.get(entry.plugin)
    return {
        "plugin": str(entry.plugin),
        "dist": str(getattr(info, "dist", "") or ""),
        "version": str(getattr(info, "version", "") or ""),
    }


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest step first (temporary files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint written in ``directory``, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# RNG state as plain tensors and lists (loadable with weights_only=True)
# ---------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """This process's RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    try:
        _set_rng_state(state)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"checkpoint RNG state cannot be restored ({type(e).__name__}: {e}); it is damaged"
        ) from e


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (the streams :func:`rng_state` saves)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
