"""A finished run back as a model: :func:`load`, then sample, reconstruct (evaluate: :mod:`engine.evaluate`).

.. code-block:: python

    import engine

    run = engine.load("runs/vae-shapes")        # newest checkpoint; model in eval mode on the CPU
    images = run.model.sample(16)               # 16×C×H×W in [0, 1]
    images = run.sample(16, seed=0)             # seeded and batched; labels checked for conditional models

:func:`load` takes a run directory, its ``checkpoints/`` folder, one checkpoint
file, or the URI of any of these (``s3://…``, ``gs://…``, ``file://…``, read
with ``pyarrow.fs``, else ``fsspec``; the file needed is copied to a temporary
directory first). The checkpoint stores the data's :class:`~engine.DataSpec`,
so loading reads no data files; only :func:`engine.evaluate.evaluate` (held-out metrics) does.
Checkpoints are read with ``torch.load(weights_only=True)`` (through
:func:`engine.checkpoint.load`): one carrying a pickle payload is refused, never run.

The latent protocol
-------------------

A model may expose its latent space by taking the codes in ``sample``::

    def sample(self, n, labels=None, z=None) -> Tensor   # z: n × latent_dim, decoded instead of fresh noise

with ``latent_dim`` an attribute of the model or a field of its config (the
built-in GAN and AE-GAN do this). Such models get seeded samples that do not
depend on the batch size, ``gentrain sample --interpolate`` and an exported
``decoder`` (:mod:`engine.export`). A model is *conditional* (``sample`` uses
``labels``) when it, or its config, has ``conditional = True``.

``engine.load`` is the function; this module's other names import as
``from engine.load import LoadedRun, parse_labels`` (``import engine.load as m``
would give the function too).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from engine import checkpoint as ckpt
from engine import locate
from engine.config import RunConfig, resolve
from engine.data import ImageData, load_data
from engine.errors import CheckpointError, ConfigError, PluginError
from engine.model import DataSpec, Model
from engine.plugins import PluginManager, current, using

__all__ = ["LatentSampler", "LoadedRun", "latent_dim", "load", "parse_labels"]

PRECISIONS = ("32", "bf16", "fp16")
LABELS_ALLOWED = "a class (3), a list (1,2,5), a range (0-9) or all"


class LatentSampler(Protocol):
    """What a model offers to expose its latent space (see the module docstring)."""

    def sample(self, n: int, labels: Tensor | None = None, z: Tensor | None = None) -> Tensor:
        """``n`` images in ``[0, 1]``; decodes ``z`` (``n × latent_dim``) when it is given."""
        ...


def latent_dim(model: Any) -> int | None:
    """The latent size of a model following :class:`LatentSampler`, else ``None``."""
    try:
        params = inspect.signature(model.sample).parameters
    except (TypeError, ValueError, AttributeError):
        return None
    if "z" not in params:
        return None
    dim = getattr(model, "latent_dim", None)
    if dim is None:
        dim = getattr(getattr(model, "config", None), "latent_dim", None)
    return int(dim) if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def is_conditional(model: Any) -> bool:
    """Whether ``model.sample`` uses labels: ``conditional = True`` on the model or its config, and labelled data."""
    flag = getattr(model, "conditional", None)
    if flag is None:
        flag = getattr(getattr(model, "config", None), "conditional", False)
    spec = getattr(model, "data", None)
    return bool(flag) and bool(getattr(spec, "num_classes", None))


def can(model: Any, method: str) -> bool:
    """Whether ``model`` overrides :class:`engine.Model`'s ``sample``/``reconstruct`` (which only raise)."""
    fn = getattr(type(model), method, None)
    return fn is not None and fn is not getattr(Model, method, None)


def parse_labels(text: str | int | Sequence[int] | Tensor, num_classes: int, what: str = "labels") -> list[int]:
    """``3``, ``"1,2,5"``, ``"0-9"``, ``"all"`` (or ints) -> class indices, each checked against ``num_classes``."""
    allowed = f"classes of this model are 0-{num_classes - 1}: {LABELS_ALLOWED}"
    if isinstance(text, Tensor):
        out = [int(v) for v in text.flatten().tolist()]
    elif isinstance(text, int):
        out = [text]
    elif isinstance(text, str):
        out = []
        spec = text.strip().lower()
        if spec == "all":
            return list(range(num_classes))
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if lo > hi:
                    raise ConfigError.one(what, text, f"range {part} runs backwards; {allowed}")
                out += range(lo, hi + 1)
            elif re.fullmatch(r"\d+", part):
                out.append(int(part))
            else:
                raise ConfigError.one(what, text, allowed)
    else:
        out = [int(v) for v in text]
    if not out:
        raise ConfigError.one(what, text, allowed)
    bad = [v for v in out if not 0 <= v < num_classes]
    if bad:
        raise ConfigError.one(what, text, allowed)
    return out


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision not in PRECISIONS:
        raise ConfigError.one("precision", precision, "must be '32', 'bf16' or 'fp16'")
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError.one("device", str(device), "must be a torch device: cpu, cuda, cuda:1, ...") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError.one("device", str(device), "no CUDA device is visible to this process; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError.one("device", str(device), f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError.one("device", str(device), "must be cpu or cuda[:index]")
    return dev


# ---------------------------------------------------------------------------
# the loaded run
# ---------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """What :func:`load` returns: the model (eval mode, on ``device``), its config, data spec and metrics."""

    model: Model
    config: RunConfig
    data_spec: DataSpec
    metrics: dict[str, float]
    step: int
    epoch: int
    checkpoint: str
    """The checkpoint file read (its URI for a remote run)."""
    run_dir: Path | None
    """The run directory, when the checkpoint lies in one on this machine."""
    plugins: dict[str, str] = field(default_factory=dict)
    """``{plugin: version}`` of the process that wrote the checkpoint."""
    weights: str = "raw"
    """``"ema"`` when exponential-moving-average weights were loaded, else ``"raw"``."""
    plugin_manager: PluginManager | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def conditional(self) -> bool:
        return is_conditional(self.model)

    @property
    def latent_dim(self) -> int | None:
        return latent_dim(self.model)

    def _pm(self) -> PluginManager:
        return self.plugin_manager or current()

    def labels(self, n: int, labels: str | int | Sequence[int] | Tensor | None = None) -> Tensor | None:
        """The labels of ``n`` samples: ``labels`` (see :func:`parse_labels`) repeated cyclically to ``n``.

        ``None`` for an unconditional model (which refuses labels); every class in turn
        (``arange(n) % num_classes``) when a conditional model is given none.
        """
        if not self.conditional:
            if labels is not None:
                raise ConfigError.one(
                    "labels",
                    _shown(labels),
                    f"{self.config.model.name} on {self.data_spec.name or 'this data'} "
                    "is not a conditional model; leave labels out",
                )
            return None
        k = int(self.data_spec.num_classes or 0)
        classes = list(range(k)) if labels is None else parse_labels(labels, k)
        return torch.tensor(classes, dtype=torch.long).repeat(math.ceil(n / len(classes)))[:n]

    def sample(
        self,
        n: int,
        labels: str | int | Sequence[int] | Tensor | None = None,
        *,
        seed: int | None = None,
        batch_size: int = 256,
        precision: str = "32",
    ) -> Tensor:
        """``n`` samples (float32 on the CPU, ``N×C×H×W`` in ``[0, 1]``), ``batch_size`` at a time.

        With ``seed`` the images are reproducible: for a :class:`LatentSampler`
        the codes are drawn first from a private generator (the same for any
        ``batch_size``); otherwise the global RNG is seeded inside a forked RNG
        state (the same for the same ``batch_size``). The caller's RNG is untouched.
        """
        _positive("n", n)
        _positive("batch_size", batch_size)
        y = self.labels(n, labels)
        dim = self.latent_dim
        out: Tensor | None = None  # filled batch by batch: no second copy of all n images
        with _forked_rng(self.device), torch.no_grad(), autocast(precision, self.device):
            if seed is not None:
                torch.manual_seed(seed)
            z = None
            if dim is not None:
                gen = torch.Generator().manual_seed(seed if seed is not None else _fresh_seed())
                z = torch.randn(n, dim, generator=gen)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                yb = None if y is None else y[start:stop].to(self.device)
                if z is not None:
                    images = self.model.sample(stop - start, labels=yb, z=z[start:stop].to(self.device))  # type: ignore[call-arg]
                else:
                    images = self.model.sample(stop - start, labels=yb)
                if out is None:
                    out = torch.empty((n, *images.shape[1:]), dtype=torch.float32)
                out[start:stop] = images
        assert out is not None
        return out

    def reconstruct(self, images: Tensor, *, batch_size: int = 256, precision: str = "32") -> Tensor:
        """Reconstructions (float32 on the CPU) of images ``N×C×H×W`` (uint8 or float in ``[0, 1]``)."""
        if not can(self.model, "reconstruct"):
            raise ConfigError.one(
                "reconstruct",
                self.config.model.name,
                "this model has no reconstruct(x) (autoencoders: ae, vae, aegan)",
            )
        _positive("batch_size", batch_size)
        _check_shape(images, self.data_spec, "images")
        out = []
        with torch.no_grad(), autocast(precision, self.device):
            for start in range(0, len(images), batch_size):
                x = _to_float(images[start : start + batch_size]).to(self.device)
                out.append(self.model.reconstruct(x).float().cpu())
        return torch.cat(out)

    def interpolate(
        self,
        steps: int,
        labels: str | int | Sequence[int] | Tensor | None = None,
        *,
        seed: int | None = None,
        precision: str = "32",
    ) -> Tensor:
        """``steps`` images along the great circle between two latent codes (spherical interpolation).

        Needs a :class:`LatentSampler`; a conditional model keeps the first of ``labels`` throughout.
        """
        dim = self.latent_dim
        if dim is None:
            raise ConfigError.one(
                "interpolate",
                self.config.model.name,
                "this model does not expose a latent: sample(n, labels, z=...) and latent_dim (gan, aegan)",
            )
        if steps < 2:
            raise ConfigError.one("n", steps, "interpolation needs at least 2 images")
        y = self.labels(1, labels)
        gen = torch.Generator().manual_seed(seed if seed is not None else _fresh_seed())
        a, b = torch.randn(2, dim, generator=gen, dtype=torch.float64)
        t = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None]
        omega = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
        if float(omega) < 1e-6:
            z = (1 - t) * a + t * b
        else:
            z = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
        yb = None if y is None else y.expand(steps).to(self.device)
        with torch.no_grad(), autocast(precision, self.device):
            images = self.model.sample(steps, labels=yb, z=z.float().to(self.device))  # type: ignore[call-arg]
        return images.float().cpu()

    def dataset(self, overrides: Sequence[str] | Mapping[str, Any] = ()) -> tuple[RunConfig, ImageData]:
        """The run's config with ``overrides`` applied and the dataset it names (this reads the data files)."""
        pm = self._pm()
        config = self.config.replace(overrides, pm) if overrides else self.config
        data = load_data(config.data, pm)
        if tuple(data.spec.shape) != tuple(self.data_spec.shape):
            raise ConfigError.one(
                "data",
                config.data.name,
                f"has {_shape(data.spec)} images but the model was trained on {_shape(self.data_spec)}",
            )
        return config, data


def _fresh_seed() -> int:
    """A seed from the OS (the caller gave none): leaves torch's global generator alone."""
    return int.from_bytes(os.urandom(8), "little") % 2**63


def _shown(value: Any) -> Any:
    return value.tolist() if isinstance(value, Tensor) else value


def _shape(spec: DataSpec) -> str:
    return "×".join(str(d) for d in spec.shape)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError.one(name, value, "must be a positive whole number")


def _to_float(images: Tensor) -> Tensor:
    return images.float().div(255.0) if images.dtype == torch.uint8 else images.float()


def _check_shape(images: Tensor, spec: DataSpec, what: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != tuple(spec.shape):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError.one(what, got, f"must be N×{_shape(spec)} images, as the model was trained on")


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


# ---------------------------------------------------------------------------
# building the model
# ---------------------------------------------------------------------------


def _missing_plugin(state: dict[str, Any], where: str, pm: PluginManager) -> PluginError:
    """The error for a checkpoint whose model no loaded plugin registers: what to install (or unblock)."""
    name = state.get("model_name")
    origin = state.get("model_plugin") or {}
    plugin, dist, version = origin.get("plugin"), origin.get("dist"), origin.get("version")
    blocked = [b.strip() for b in os.environ.get("GENTRAIN_DISABLE_PLUGINS", "").split(",")]
    if plugin and plugin in blocked:
        return PluginError(
            f"{where} is a {name!r} model from plugin {plugin!r}"
            + (f" of {dist} {version}" if dist else "")
            + f", which GENTRAIN_DISABLE_PLUGINS blocks here: remove {plugin!r} from it"
        )
    off = os.environ.get("GENTRAIN_DISABLE_PLUGIN_AUTOLOAD", "").lower() in ("1", "true", "yes")
    note = " (third-party plugins are off here: GENTRAIN_DISABLE_PLUGIN_AUTOLOAD is set)" if off else ""
    if dist and version and version != "unknown":
        return PluginError(
            f"{where} is a {name!r} model from plugin {plugin!r} of {dist} {version}, which is not installed "
            f"here{note}: pip install '{dist}=={version}'"
        )
    written = state.get("plugins") or {}
    missing = {p: v for p, v in written.items() if p not in pm.info}
    listed = ", ".join(f"{p} {v}" for p, v in sorted(missing.items())) or "none recorded"
    return PluginError(
        f"{where} is a {name!r} model, which no installed plugin registers{note}; plugins of the writing "
        f"process that are missing here: {listed}"
    )


def _ema_weights(state: dict[str, Any], model: Model) -> dict[str, Tensor] | None:
    """The EMA weights a checkpoint carries, as keys of ``model.state_dict()``; ``None`` if it has none.

    Looked for under ``state["ema"]`` (then ``state["plugin_state"]["ema"]``), as a
    flat state dict, as ``{"model": state dict}``, or per sub-network as
    ``{name: state dict}`` (an ``AveragedModel``'s: ``module.`` prefixes and
    ``n_averaged`` are dropped).
    """
    own = model.state_dict()
    for raw in (state.get("ema"), (state.get("plugin_state") or {}).get("ema")):
        if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
            raw = raw["model"]
        if not isinstance(raw, dict):
            continue
        flat: dict[str, Tensor] = {}
        for key, value in raw.items():
            if isinstance(value, Tensor):
                flat[key] = value
            elif isinstance(value, dict):
                for sub, tensor in value.items():
                    if isinstance(tensor, Tensor) and sub != "n_averaged":
                        flat[f"{key}.{sub.removeprefix('module.')}"] = tensor
        flat = {k: v for k, v in flat.items() if k in own}
        if flat:
            return flat
    return None


def build_model(
    state: dict[str, Any], where: str, pm: PluginManager, *, ema: bool = True
) -> tuple[Model, RunConfig, DataSpec, str]:
    """Model (CPU, eval mode, weights loaded), config, data spec and ``"ema"``/``"raw"`` from a checkpoint's state."""
    name = state.get("model_name")
    if (
        not isinstance(name, str)
        or not isinstance(state.get("config"), dict)
        or not isinstance(state.get("model"), dict)
    ):
        raise CheckpointError(f"{where} lacks the model name, config or weights of a gentrain checkpoint")
    if name not in pm.models:
        raise _missing_plugin(state, where, pm)
    try:
        config = resolve(state["config"], pm)
    except ConfigError as e:
        problems = "; ".join(f"{f} = {v!r}: {a}" for f, v, a in e.problems)
        raise CheckpointError(f"{where}: its config no longer validates here ({problems})") from e
    spec = ckpt.spec_from_state(state)
    if spec is None:
        warnings.warn(
            f"{where} predates stored data specs: reading the {config.data.name!r} data to size the model",
            stacklevel=3,
        )
        spec = load_data(config.data, pm).spec
    with using(pm), torch.random.fork_rng(devices=[]):
        model: Model = pm.models.get(name).obj(config.model.params, spec)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{where} does not fit the {name!r} model: {str(e).splitlines()[0]}") from e
    weights = "raw"
    averaged = _ema_weights(state, model) if ema else None
    if averaged is not None:
        try:
            model.load_state_dict(averaged, strict=False)
        except RuntimeError as e:
            raise CheckpointError(f"{where}: its EMA weights do not fit the model: {str(e).splitlines()[0]}") from e
        weights = "ema"
    return model.eval(), config, spec, weights


def load(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    which: str | int = "last",
    metric: str | None = None,
    mode: str = "min",
    ema: bool = True,
    plugins: PluginManager | None = None,
) -> LoadedRun:
    """Load a finished (or running) run's model.

    :param path: a run directory, its ``checkpoints/`` folder, a checkpoint file, or a URI of one
        (``s3://bucket/runs/x``; needs ``pyarrow`` or ``fsspec``).
    :param device: where the model goes (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    :param which: ``"last"`` (newest checkpoint), ``"best"`` (by ``metric``) or a step number.
    :param metric: the metric ``"best"`` ranks by, as stored in each checkpoint (``"val/elbo"``);
        default the first of :data:`engine.locate.DEFAULT_METRICS` every checkpoint holds.
    :param mode: ``"min"`` or ``"max"``: whether lower or higher ``metric`` is better.
    :param ema: load exponential-moving-average weights when the checkpoint carries them.
    :raises CheckpointError: the path holds no readable checkpoint (or one with a pickle payload).
    :raises PluginError: the model's plugin is not installed; the message says what to install.
    :raises ConfigError: a bad ``which``, ``metric``, ``mode`` or ``device``.
    """
    dev = resolve_device(device)
    pm = plugins or current()
    text = os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="gentrain-load-") as tmp:
        if locate.is_uri(text):
            copies = locate.fetch_remote(text, Path(tmp), which)
            candidates, run_dir = sorted(copies), None
        else:
            candidates, run_dir = locate.local_candidates(Path(text).expanduser())
            copies = {p: str(p) for p in candidates}
        chosen, state = locate.select(candidates, which, metric, mode, text)
        source = copies[chosen]
        model, config, spec, weights = build_model(state, source, pm, ema=ema)
    return LoadedRun(
        model=model.to(dev),
        config=config,
        data_spec=spec,
        metrics={k: float(v) for k, v in (state.get("metrics") or {}).items()},
        step=int(state.get("step", 0)),
        epoch=int(state.get("epoch", 0)),
        checkpoint=source,
        run_dir=run_dir,
        plugins=dict(state.get("plugins") or {}),
        weights=weights,
        plugin_manager=plugins,
    )
