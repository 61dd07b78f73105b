"""What a model author implements: :class:`Model`, :class:`ModelConfig`, :class:`Phase`."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from engine.errors import ConfigError

Batch = tuple[Tensor, Tensor]
"""A batch is ``(images, labels)``: float images in ``[0, 1]``, shape ``N×C×H×W``, int64 labels ``N``."""


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data to size itself.

    The run fields (``train_size``, ``batch_size``, ``world_size``) are set when
    the engine builds the model for a run and when it calls the model config's
    ``check()``; outside a run (``engine.load``, tests) they are ``None`` / 1.
    Training drops the last partial batch of every epoch on every rank, so each
    step sees exactly ``batch_size`` images per rank: an epoch is
    ``train_size // world_size // batch_size`` steps (``steps_per_epoch``).
    Validation keeps its last partial batch.
    """

    shape: tuple[int, int, int]
    """``(channels, height, width)``."""
    num_classes: int | None = None
    """Number of label classes, or ``None`` for unlabeled data."""
    name: str = ""
    train_size: int | None = None
    """Images in the training split (all ranks together), or ``None`` outside a run."""
    batch_size: int | None = None
    """Images per rank per step (``trainer.batch_size``), or ``None`` outside a run."""
    world_size: int = 1
    """Number of ranks (DDP processes) the run trains on."""

    def for_run(self, train_size: int, batch_size: int, world_size: int) -> DataSpec:
        """This spec with the run's sizes set."""
        return dataclasses.replace(self, train_size=train_size, batch_size=batch_size, world_size=world_size)

    @property
    def global_batch_size(self) -> int | None:
        """``batch_size × world_size``: the images of one step over all ranks."""
        return None if self.batch_size is None else self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps per epoch (before gradient accumulation): the last partial batch is dropped."""
        if self.train_size is None or self.batch_size is None:
            return None
        return self.train_size // self.world_size // self.batch_size

    @property
    def numel(self) -> int:
        c, h, w = self.shape
        return c * h * w


@dataclass(frozen=True)
class ModelConfig:
    """Base class for model configs (optional: any ``@dataclass`` works).

    Fields are validated by type and by ``Annotated`` constraints
    (``Annotated[int, Field(gt=0)]``) before anything is built; override
    :meth:`check` for rules that need the data (image shape, classes).
    """

    def check(self, data: DataSpec) -> None:
        """Raise :class:`~engine.errors.ConfigError` if this config cannot work on ``data``.

        Called on the driver before any worker starts; field names in errors
        are relative to the model section (``"arch"`` becomes ``model.arch``).
        """

    def fail(self, field: str, value: object, allowed: str) -> ConfigError:
        """Build the error :meth:`check` raises: ``raise self.fail("arch", "conv", "...")``."""
        return ConfigError.one(f"model.{field}", value, allowed)


@dataclass(frozen=True)
class Phase:
    """One kind of update in a training step.

    A step runs every phase of ``Model.phases()`` in order, each ``repeats``
    times (a WGAN critic: ``Phase("disc", repeats=5)``). For each repeat the
    loop zeroes the phase's optimizer, calls ``training_step(batch, phase.name)``,
    backpropagates ``"loss"``, clips and steps.
    """

    name: str
    optimizer: str | None = None
    """Optimizer this phase steps; defaults to ``name``."""
    repeats: int = 1
    new_batch: bool = True
    """Draw a fresh batch for each repeat; ``False`` reuses the previous phase's batch."""

    @property
    def optimizer_name(self) -> str:
        return self.optimizer or self.name


class Model(nn.Module):
    """Base class of every model.

    Subclasses implement ``__init__(config, data)``, :meth:`training_step` and
    usually :meth:`validation_step`; multi-optimizer models also override
    :meth:`phases` and :meth:`optimizers`; generative models implement
    :meth:`sample` and/or :meth:`reconstruct` so the sample-grid plugin and
    the metrics can use them.

    Under DDP the engine wraps each module of :meth:`ddp_modules` in its own
    ``DistributedDataParallel`` (replacing the attribute), so ``self.gen(z)``
    inside :meth:`training_step` synchronises gradients of ``gen`` only.
    """

    batch_statistics: ClassVar[bool] = False
    """``True`` when the losses use statistics over the batch (batch norm in training mode, an MMD or
    total-correlation estimate): each worker takes them over its own ``trainer.batch_size`` images, so
    N workers × B do not train like 1 × N·B. The contract's DDP check then reports the difference
    instead of failing (``docs/plugins.md``: DDP rules)."""

    def __init__(self, config: Any, data: DataSpec) -> None:
        super().__init__()
        self.config = config
        self.data = data
        self._noise: _BatchNoise | None = None

    # -- what the loop asks ---------------------------------------------

    def phases(self) -> list[Phase]:
        """The phases of one training step, in order. Default: one phase ``"train"``."""
        return [Phase("train")]

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """Parameters per optimizer name: the engine builds one optimizer per entry.

        Called once per run on every rank, after the model is built and before
        any checkpoint is loaded. Default: all parameters under ``"train"``.
        """
        if type(self).optimizers is not Model.optimizers:
            # A model written against gentrain < 0.2 overrides optimizers().
            warnings.warn(
                f"{type(self).__name__}.optimizers() is deprecated (it returns parameter groups, not optimizers); "
                "rename it to param_groups(); optimizers() stops being called in gentrain 1.0",
                DeprecationWarning,
                stacklevel=2,
            )
            return type(self).optimizers(self)
        return {"train": self.parameters()}

    def optimizers(self) -> dict[str, Iterable[nn.Parameter]]:
        """Deprecated name of :meth:`param_groups` (it never returned optimizers)."""
        warnings.warn("Model.optimizers() is deprecated; call param_groups()", DeprecationWarning, stacklevel=2)
        return self.param_groups()

    def ddp_modules(self) -> dict[str, nn.Module]:
        """Sub-networks to wrap separately under DDP. Default: every direct child with parameters."""
        return {n: m for n, m in self.named_children() if any(p.requires_grad for p in m.parameters())}

    def training_step(self, batch: Batch, phase: str) -> dict[str, Tensor]:
        """Losses of ``phase`` on ``batch``; ``"loss"`` is backpropagated, other keys are logged.

        Called once per phase repeat on every rank, inside autocast when mixed
        precision is on. Return mean-reduced losses so gradients do not depend
        on how the global batch is split over workers.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement training_step(batch, phase)")

    def validation_step(self, batch: Batch) -> dict[str, Tensor]:
        """Per-batch metrics (batch means) on held-out data; averaged over the set. Default: none."""
        return {}

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        """``n`` images in ``[0, 1]`` from the model (optionally of classes ``labels``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot sample")

    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstructions in ``[0, 1]`` of images ``x``."""
        raise NotImplementedError(f"{type(self).__name__} cannot reconstruct")

    # -- helpers for authors ----------------------------------------------

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def batch_randn(self, n: int, *shape: int) -> Tensor:
        """Standard normal noise for ``n`` samples of this rank's batch.

        Unlike ``torch.randn`` it does not depend on how the global batch is
        split: 2 workers with batch ``n`` get the two halves of what 1 worker
        with batch ``2n`` gets, so distributed runs match single-process runs.
        Outside training (``sample()``, tests) it is plain ``torch.randn``.
        """
        if self._noise is None:
            return torch.randn(n, *shape, device=self.device)
        return self._noise.randn(n, shape, self.device)

    def batch_rand(self, n: int, *shape: int) -> Tensor:
        """Uniform ``[0, 1)`` noise with the same split-independence as :meth:`batch_randn`."""
        if self._noise is None:
            return torch.rand(n, *shape, device=self.device)
        return self._noise.rand(n, shape, self.device)


class _BatchNoise:
    """Noise drawn for the whole global batch, of which each rank keeps its slice."""

    def __init__(self, seed: int, rank: int, world: int) -> None:
        self.gen = torch.Generator()
        self.seed, self.rank, self.world = seed, rank, world

    def reseed(self, step: int) -> None:
        # One stream per (seed, step): resuming at any step reproduces the noise.
        self.gen.manual_seed((self.seed * 1_000_003 + step) % (2**63))

    def _slice(self, full: Tensor, n: int, device: torch.device) -> Tensor:
        if self.world > 1:  # one process keeps all of it: no slicing op per draw
            full = full[self.rank * n : (self.rank + 1) * n]
        return full.to(device, non_blocking=True)

    def randn(self, n: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
        return self._slice(torch.randn(n * self.world, *shape, generator=self.gen), n, device)

    def rand(self, n: int, shape: tuple[int, ...], device: torch.device) -> Tensor:
        return self._slice(torch.rand(n * self.world, *shape, generator=self.gen), n, device)
