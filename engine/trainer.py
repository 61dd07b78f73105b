"""What a trainer hook receives: :class:`Trainer` (the run's state) and :class:`WorkerEnv` (where it runs).

Plugins annotate hook arguments with ``engine.Trainer``; launchers (in-process,
Ray Train, a Tune trial, torchrun) subclass :class:`WorkerEnv`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from engine.config import RunConfig
from engine.model import Model

if TYPE_CHECKING:
    from engine.plugins import PluginManager


@dataclass
class WorkerEnv:
    """Where this copy of the loop runs. The base class is the single in-process worker."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def report(self, metrics: dict[str, float], checkpoint: Path | None) -> None:
        """Hand the epoch's metrics (and the checkpoint rank 0 wrote, if any) to the launcher."""

    def resume_checkpoint(self) -> Path | None:
        """A checkpoint the launcher wants this run resumed from (Ray's registered one), if any."""
        return None

    def dataset_shard(self, name: str) -> Any:
        """This worker's shard of the launcher's dataset ``name`` (Ray Data, ``data.loader=ray_data``), or None."""
        return None

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over ranks, in place."""
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def wrap_ddp(self, module: nn.Module) -> nn.Module:
        return module


class Trainer:
    """The state of a run, as the trainer hooks see it.

    Plugins read ``config``, ``model``, ``optimizers``, ``epoch``, ``step``,
    ``rank``, ``is_rank_zero``, ``run_dir``, ``data_spec`` and ``metrics``,
    and may set ``should_stop``.
    """

    def __init__(
        self,
        config: RunConfig,
        plugins: PluginManager,
        env: WorkerEnv,
        model: Model,
        optimizers: dict[str, torch.optim.Optimizer],
        run_dir: Path,
    ) -> None:
        self.config = config
        self.plugins = plugins
        self.env = env
        self.model = model
        self.optimizers = optimizers
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.run_dir = run_dir
        self.data_spec = model.data
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self.metrics: dict[str, float] = {}
        self.should_stop = False
        self.skipped_steps = 0
        # Skipping an update is decided by all ranks together (see check_finite).
        self.agree_on_skips = config.trainer.nan_policy == "skip" and env.world_size > 1
        self.ddp: dict[str, nn.Module] = {}
        self.raw: dict[str, nn.Module] = {}
        #: ``torch.compile`` of a sub-network's DDP wrapper, when ``trainer.compile`` is on.
        self.compiled: dict[str, nn.Module] = {}
        #: EMA copies of sub-networks (``trainer.ema_decay``): ``AveragedModel``s by name.
        self.ema: dict[str, Any] = {}
        #: Learning-rate schedules by optimizer name (``optim.scheduler``).
        self.schedules: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        self.fixed_batch: Tensor | None = None

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_rank_zero(self) -> bool:
        return self.env.rank == 0

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def training_step(self, model: Any, batch: Any, phase: str) -> tuple[dict[str, Tensor], Tensor]:
        """``model.training_step(batch, phase)`` and its ``"loss"``, checked against the contract."""
        losses = model.training_step(batch, phase)
        return losses, self.loss_of(losses, phase)

    def loss_of(self, losses: Any, phase: str) -> Tensor:
        """``losses["loss"]`` of a ``training_step``; a :class:`PluginError` naming model, plugin and what was wrong."""
        loss = losses.get("loss") if isinstance(losses, dict) else None
        if (
            isinstance(loss, Tensor)
            and loss.ndim == 0
            and loss.is_floating_point()
            and (loss.requires_grad or not torch.is_grad_enabled())
            and all(isinstance(v, Tensor) and v.ndim == 0 for v in losses.values())
        ):
            return loss
        if not isinstance(losses, dict):
            got = f"a {type(losses).__name__}"
        elif loss is None:
            got = f"a dict without 'loss' (keys: {', '.join(map(str, losses)) or 'none'})"
        elif not isinstance(loss, Tensor):
            got = f"'loss' as a {type(loss).__name__}"
        elif loss.ndim or not loss.is_floating_point():
            got = f"'loss' of shape {tuple(loss.shape)} and dtype {loss.dtype}"
        elif not loss.requires_grad:
            got = "a 'loss' that does not require grad (computed without the model's parameters, or detached)"
        else:
            bad = [k for k, v in losses.items() if not (isinstance(v, Tensor) and v.ndim == 0)]
            got = f"entries that are not scalar tensors: {', '.join(map(str, bad))}"
        from engine.errors import PluginError

        name = self.config.model.name
        plugin = self.plugins.models.get(name).plugin
        raise PluginError(
            f"model {name!r} (plugin {plugin!r}): training_step(batch, phase={phase!r}) must return a dict of "
            f"scalar tensors with a float 'loss' to minimise; it returned {got}"
        )

    def fire(self, hookname: str, **kwargs: Any) -> None:
        self.plugins.fire(hookname, trainer=self, **kwargs)

    @contextlib.contextmanager
    def unwrapped(self, *, ema: bool = False) -> Iterator[Model]:
        """The model with its plain sub-networks in place of DDP (and compile) wrappers.

        For evaluation and saving. With ``ema=True`` (sample grids, sample
        metrics) the sub-networks that have an EMA copy are replaced by it.
        """
        for name, module in self.raw.items():
            setattr(self.model, name, self.ema[name].module if ema and name in self.ema else module)
        try:
            yield self.model
        finally:
            for name in self.ddp:
                setattr(self.model, name, self.training_module(name))

    def training_module(self, name: str) -> nn.Module:
        """What the model calls sub-network ``name`` while training: compiled, DDP-wrapped or plain."""
        return self.compiled.get(name, self.ddp[name])
