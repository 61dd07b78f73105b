"""Writing a loaded run out: image files, and weights and programs that need no gentrain.

:func:`write_images` writes samples as a PNG grid (``*.png``), a folder of PNGs
(a path ending in ``/`` or an existing directory) or one ``.npz`` / ``.pt``
file (``images`` float32 ``N×C×H×W`` in ``[0, 1]``, plus ``labels``).

:func:`export` writes into one folder:

``model.safetensors``
    the weights only, with the run config, model name, data spec and step as
    string metadata (``json`` for the structured ones); checked to reload into a
    freshly built model bit for bit.
``sampler.pt2``
    a ``torch.export`` program ``sampler(labels) -> images``: ``len(labels)``
    images in ``[0, 1]`` (``labels`` int64, ignored by unconditional models),
    noise drawn from torch's global generator exactly as ``model.sample`` draws
    it, so ``torch.manual_seed(s); sampler(labels)`` equals
    ``torch.manual_seed(s); model.sample(n, labels)``.
``decoder.pt2``
    for models with a latent (:class:`engine.load.LatentSampler`):
    ``decoder(z, labels) -> images``, equal to ``model.sample(n, labels, z=z)``.
``model.onnx``
    the decoder (else the sampler) as ONNX with a dynamic batch, when the exporter is
    installed (``pip install 'gentrain[onnx]'``: onnx, onnxscript, onnxruntime); with
    onnxruntime present the decoder is run by it and checked against ``model.sample``
    within :data:`ONNX_TOLERANCE`.
``export.json``
    what each file holds and how to call it.

The programs load with ``torch.export.load(path).module()`` in a process with
torch alone: no gentrain, no plugin. Every output is written to a temporary
name and renamed, so an interrupted command leaves nothing half written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine import checkpoint as ckpt
from engine.config import resolve
from engine.errors import CheckpointError, ConfigError
from engine.load import LoadedRun, is_conditional, latent_dim
from engine.model import Model
from engine.plugins import PluginManager, current, using

__all__ = ["ExportResult", "check_output", "export", "image_grid", "read_images", "write_images"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
WEIGHTS_FORMAT = "gentrain-weights-1"
EXPORT_TOLERANCE = 1e-6
#: ``model.onnx`` run by onnxruntime: its kernels are not torch's, so float32 rounding differs a little.
ONNX_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------
# output paths: kinds, refusal, atomic writes
# ---------------------------------------------------------------------------


def output_kind(path: str | os.PathLike[str]) -> str:
    """``"grid"`` (``*.png``), ``"folder"`` (ends in ``/`` or is a directory), ``"npz"`` or ``"pt"``."""
    text = os.fspath(path)
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.is_dir():
        return "folder"
    suffix = p.suffix.lower()
    if suffix == ".png":
        return "grid"
    if suffix in (".npz", ".pt"):
        return suffix[1:]
    raise ConfigError.one(
        "out", text, "must be a PNG grid (*.png), a folder of PNGs (a path ending in / or a directory), *.npz or *.pt"
    )


def check_output(path: str | os.PathLike[str], *, overwrite: bool, what: str = "out", folder: bool = False) -> Path:
    """Refuse an output that exists (unless ``overwrite``) or cannot be written; return it as a path.

    A folder output is refused when it holds anything. Called before any work
    is done, so a refused command spends nothing.
    """
    text = os.fspath(path)
    p = Path(text).expanduser()
    folder = folder or text.endswith(("/", os.sep)) or p.is_dir()
    if p.exists() and not overwrite and (not folder or not p.is_dir() or any(p.iterdir())):
        raise ConfigError.one(what, text, "exists; choose another path or pass --overwrite to replace it")
    if p.exists() and folder and not p.is_dir():
        raise ConfigError.one(what, text, "is a file, but a folder is asked for")
    if p.exists() and not folder and p.is_dir():
        raise ConfigError.one(what, text, "is a directory; give a file name")
    # The nearest existing ancestor must be a directory we can write in; missing
    # folders are created only when the output is written.
    probe = p if folder and p.is_dir() else p.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError.one(what, text, f"cannot be written: {probe} is not a writable directory")
    try:  # os.access says yes to root even on a read-only file system
        fd, tmp = tempfile.mkstemp(prefix=".gentrain-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ConfigError.one(what, text, f"cannot be written: {e.strerror or e}") from e
    return p


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary file next to ``path``, renamed onto it if the block succeeds, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder next to ``path`` whose files are moved into ``path`` if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        else:
            for item in sorted(tmp.iterdir()):
                target = path / item.name
                if target.is_dir() and not item.is_dir():
                    shutil.rmtree(target)
                os.replace(item, target)
            tmp.rmdir()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# images in and out
# ---------------------------------------------------------------------------


def _to_uint8(images: Tensor) -> np.ndarray:
    """``N×C×H×W`` in ``[0, 1]`` -> ``N×H×W×C`` uint8."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``N×C×H×W`` images in ``[0, 1]`` into one ``H×W×C`` uint8 array on a grey background."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    tiles = _to_uint8(images)
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = tiles[i]
    return grid


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array, mode="RGB")
    image.save(path, format="PNG")


def write_images(
    path: str | os.PathLike[str],
    images: Tensor,
    labels: Tensor | None = None,
    *,
    nrow: int | None = None,
    names: list[str] | None = None,
    extra: dict[str, Tensor] | None = None,
    kind: str | None = None,
) -> Path:
    """Write ``images`` as :func:`output_kind` says; return the path written.

    Folder outputs are named ``000000.png`` … (or ``names``); ``.npz``/``.pt``
    files hold ``images`` (float32), ``labels`` if given, and ``extra`` tensors.
    ``kind`` overrides :func:`output_kind` (a folder path that lost its trailing ``/``).
    """
    kind = kind or output_kind(path)
    p = Path(os.fspath(path)).expanduser()
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be N×1×H×W or N×3×H×W, got {tuple(images.shape)}")
    if kind == "grid":
        with atomic_file(p) as tmp:
            _save_png(image_grid(images, nrow=nrow), tmp)
    elif kind == "folder":
        tiles = _to_uint8(images)
        with atomic_folder(p) as tmp:
            for i, tile in enumerate(tiles):
                stem = Path(names[i]).stem if names else f"{i:06d}"
                _save_png(tile, tmp / f"{stem}.png")
    else:
        payload = {"images": images.detach().float().cpu().contiguous()}
        if labels is not None:
            payload["labels"] = labels.detach().long().cpu()
        payload.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
        with atomic_file(p) as tmp:
            if kind == "npz":
                with open(tmp, "wb") as f:
                    np.savez(f, **{k: v.numpy() for k, v in payload.items()})  # type: ignore[arg-type]
            else:
                torch.save(payload, tmp)
    return p


def read_images(
    folder: str | os.PathLike[str], shape: tuple[int, int, int], what: str = "reconstruct"
) -> tuple[Tensor, list[str]]:
    """Images of a folder (sorted by name) as uint8 ``N×C×H×W`` of ``shape`` (converted and resized as needed)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(os.fspath(folder)).expanduser()
    allowed = f"must be a folder of images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
    if not p.is_dir():
        raise ConfigError.one(what, os.fspath(folder), allowed)
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError.one(what, os.fspath(folder), allowed + "; it holds none")
    c, h, w = shape
    out = []
    for f in files:
        try:
            with Image.open(f) as opened:
                im = opened.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            array = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise ConfigError.one(what, str(f), f"is not a readable image ({e})") from e
        out.append(torch.from_numpy(array.reshape(h, w, c).copy()).permute(2, 0, 1))
    return torch.stack(out), [f.name for f in files]


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------


class _Sampler(nn.Module):
    """``labels -> model.sample(len(labels), labels)``: the noise is drawn inside, from the global generator."""

    def __init__(self, model: Model, conditional: bool) -> None:
        super().__init__()
        self.model = model
        self.conditional = conditional

    def forward(self, labels: Tensor) -> Tensor:
        return self.model.sample(labels.shape[0], labels=labels if self.conditional else None)


class _Decoder(nn.Module):
    """``(z, labels) -> model.sample(len(z), labels, z=z)``."""

    def __init__(self, model: Model, conditional: bool) -> None:
        super().__init__()
        self.model = model
        self.conditional = conditional

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        return self.model.sample(z.shape[0], labels=labels if self.conditional else None, z=z)  # type: ignore[call-arg]


@dataclass
class ExportResult:
    """What :func:`export` wrote (file name -> path, in ``out``) and what it checked."""

    out: Path
    files: dict[str, Path]
    checks: dict[str, float | bool | str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def weights_metadata(run: LoadedRun) -> dict[str, str]:
    """The safetensors metadata: what rebuilds the model without the checkpoint."""
    return {
        "format": WEIGHTS_FORMAT,
        "model_name": run.config.model.name,
        "config": json.dumps(run.config.to_dict(), sort_keys=True),
        "data_spec": json.dumps(ckpt.spec_state(run.data_spec)),
        "step": str(run.step),
        "epoch": str(run.epoch),
        "weights": run.weights,
        "plugins": json.dumps(run.plugins, sort_keys=True),
    }


def model_from_safetensors(path: str | os.PathLike[str], plugins: PluginManager | None = None) -> Model:
    """Rebuild a model (CPU, eval mode) from an exported ``model.safetensors`` alone."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    pm = plugins or current()
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path} is not a gentrain weights file (metadata format {meta.get('format')!r})")
    config = resolve(json.loads(meta["config"]), pm)
    spec = ckpt.spec_from_state({"data_spec": json.loads(meta["data_spec"])})
    assert spec is not None
    with using(pm), torch.random.fork_rng(devices=[]):
        model: Model = pm.models.get(meta["model_name"]).obj(config.model.params, spec)
    model.load_state_dict(load_file(os.fspath(path)))
    return model.eval()


def _write_weights(run: LoadedRun, path: Path) -> dict[str, Tensor]:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in run.model.state_dict().items()}
    save_file(state, os.fspath(path), metadata=weights_metadata(run))
    return state


def _check_weights(path: Path, state: dict[str, Tensor], pm: PluginManager | None) -> None:
    rebuilt = model_from_safetensors(path, pm).state_dict()
    if rebuilt.keys() != state.keys():
        raise CheckpointError(f"export round trip failed: {path} rebuilt a model with other keys")
    for key, value in state.items():
        other = rebuilt[key]
        if other.dtype != value.dtype or other.shape != value.shape or not torch.equal(other, value):
            raise CheckpointError(f"export round trip failed: {key} differs after reloading {path}")


def _export_program(module: nn.Module, args: tuple[Tensor, ...], dims: tuple[dict[int, Any], ...]) -> Any:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on specialisation are not the user's business
        return torch.export.export(module, args, dynamic_shapes=dims)


def _export_onnx(module: nn.Module, args: tuple[Tensor, ...], path: Path, n: Any) -> None:
    """``torch.onnx.export`` (the dynamo exporter) with a dynamic batch, quietly: its progress lines and
    notes on operators of packages that are not installed are not the user's business."""
    names = ("z", "labels")[-len(args) :]
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(names),
                output_names=["images"],
                dynamic_shapes=tuple({0: n} for _ in args),
                dynamo=True,
                verbose=False,
            )
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_onnx(path: Path, inputs: dict[str, Tensor], reference: Callable[[], Tensor]) -> float:
    """Max abs difference of the ONNX program run by onnxruntime from ``reference()`` (the same noise)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The exporter drops inputs the graph does not use (an unconditional model's labels).
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    (images,) = session.run(["images"], feed)
    with torch.no_grad():
        expected = reference()
    diff = _max_diff(torch.from_numpy(images), expected)
    if not diff <= ONNX_TOLERANCE:
        raise CheckpointError(
            f"export check failed: model.onnx differs from model.sample by {diff:.3g} (allowed {ONNX_TOLERANCE})"
        )
    return diff


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def export(
    run: LoadedRun,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    onnx: bool = True,
    check: bool = True,
    seed: int = 0,
    n_check: int = 8,
) -> ExportResult:
    """Write the run's weights and sampler/decoder programs into the folder ``out`` (see the module docstring).

    With ``check`` every file is verified before the folder is published:
    the weights reload bit for bit, and each program reproduces
    ``model.sample`` for the same noise within :data:`EXPORT_TOLERANCE`.
    """
    target = check_output(out, overwrite=overwrite, folder=True)
    model = run.model.cpu() if run.device.type != "cpu" else run.model
    pm = run.plugin_manager
    conditional = is_conditional(model)
    k = int(run.data_spec.num_classes or 1)
    dim = latent_dim(model)
    labels = torch.arange(n_check) % k
    n = torch.export.Dim("n", min=1, max=1 << 20)
    files: dict[str, Path] = {}
    checks: dict[str, float | bool | str] = {}
    skipped: dict[str, str] = {}
    manifest: dict[str, Any] = {
        "model": run.config.model.name,
        "step": run.step,
        "checkpoint": run.checkpoint,
        "data_spec": ckpt.spec_state(run.data_spec),
        "conditional": conditional,
        "latent_dim": dim,
        "files": {},
    }
    try:
        with atomic_folder(target) as tmp:
            state = _write_weights(run, tmp / "model.safetensors")
            files["model.safetensors"] = target / "model.safetensors"
            manifest["files"]["model.safetensors"] = (
                "weights (safetensors); metadata: format, model_name, config (json), data_spec (json), step"
            )
            if check:
                _check_weights(tmp / "model.safetensors", state, pm)
                checks["weights_bit_exact"] = True

            sampler = _export_program(_Sampler(model, conditional), (labels,), ({0: n},))
            torch.export.save(sampler, tmp / "sampler.pt2")
            files["sampler.pt2"] = target / "sampler.pt2"
            manifest["files"]["sampler.pt2"] = {
                "call": "torch.export.load(path).module()(labels)",
                "labels": f"int64 [n] in 0..{k - 1}" + ("" if conditional else " (only its length counts)"),
                "returns": "float32 [n, C, H, W] in [0, 1]; noise from torch's global generator (torch.manual_seed)",
            }
            if check:
                checks["sampler_max_abs_diff"] = _check_program(
                    tmp / "sampler.pt2",
                    lambda p: _seeded(seed, lambda: p(labels)),
                    lambda: _seeded(seed, lambda: model.sample(n_check, labels=labels if conditional else None)),
                )
            program_for_onnx: tuple[nn.Module, tuple[Tensor, ...]] = (_Sampler(model, conditional), (labels,))
            if dim is not None:
                z = torch.randn(n_check, dim, generator=torch.Generator().manual_seed(seed))
                decoder = _export_program(_Decoder(model, conditional), (z, labels), ({0: n}, {0: n}))
                torch.export.save(decoder, tmp / "decoder.pt2")
                files["decoder.pt2"] = target / "decoder.pt2"
                manifest["files"]["decoder.pt2"] = {
                    "call": "torch.export.load(path).module()(z, labels)",
                    "z": f"float32 [n, {dim}] (the prior is N(0, I))",
                    "labels": f"int64 [n] in 0..{k - 1}" + ("" if conditional else " (ignored)"),
                    "returns": "float32 [n, C, H, W] in [0, 1]",
                }
                if check:
                    checks["decoder_max_abs_diff"] = _check_program(
                        tmp / "decoder.pt2",
                        lambda p: p(z, labels),
                        lambda: model.sample(n_check, labels=labels if conditional else None, z=z),  # type: ignore[call-arg]
                    )
                program_for_onnx = (_Decoder(model, conditional), (z, labels))
            if not onnx:
                skipped["model.onnx"] = "not asked for"
            elif importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
                skipped["model.onnx"] = "the ONNX exporter is not installed (pip install 'gentrain[onnx]')"
            else:
                module, args = program_for_onnx
                _export_onnx(module, args, tmp / "model.onnx", n)
                files["model.onnx"] = target / "model.onnx"
                manifest["files"]["model.onnx"] = {
                    "call": "onnxruntime.InferenceSession(path).run(None, inputs)",
                    "inputs": "z: float32 [n, dim], labels: int64 [n]" if dim is not None else "labels: int64 [n]",
                    "returns": "float32 [n, C, H, W] in [0, 1]",
                }
                if check and dim is not None and importlib.util.find_spec("onnxruntime") is not None:
                    checks["onnx_max_abs_diff"] = _check_onnx(
                        tmp / "model.onnx",
                        {"z": z, "labels": labels},
                        lambda: model.sample(n_check, labels=labels if conditional else None, z=z),  # type: ignore[call-arg]
                    )
                elif check:
                    skipped["onnx check"] = (
                        "onnxruntime is not installed" if dim is not None else "the sampler draws its own noise"
                    )
            manifest["checks"], manifest["skipped"] = checks, skipped
            (tmp / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
            files["export.json"] = target / "export.json"
    finally:
        if run.device.type != "cpu":
            run.model.to(run.device)
    return ExportResult(target, files, checks, skipped)


def _seeded(seed: int, fn: Callable[[], Tensor]) -> Tensor:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return fn()


def _check_program(path: Path, call: Callable[[Any], Tensor], reference: Callable[[], Tensor]) -> float:
    program = torch.export.load(path).module()
    with torch.no_grad():
        got = call(program)
        want = reference()
    diff = _max_diff(got, want)
    if not diff <= EXPORT_TOLERANCE:
        raise CheckpointError(
            f"export check failed: {path.name} differs from model.sample by {diff:.3g} (allowed {EXPORT_TOLERANCE})"
        )
    return diff
