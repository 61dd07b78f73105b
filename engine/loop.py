"""The per-worker training loop: plain PyTorch, read top to bottom.

:func:`train` is what every worker runs, in this process (``num_workers=0``)
or as Ray Train's ``train_loop_per_worker``. It never assumes it is alone:
rank, world size, device and reporting come from a :class:`WorkerEnv`.

The hooks fire in this order (also in the README, and checked by
``tests/engine/test_loop.py::test_hook_order``)::

    [gentrain_on_load_checkpoint]                 if resuming
    gentrain_on_fit_start
    for epoch:
        gentrain_on_train_epoch_start
        for step:
            gentrain_on_train_batch_start
            for phase in model.phases(), for repeat:
                training_step -> backward
                gentrain_on_before_optimizer_step
            gentrain_on_train_batch_end
        gentrain_on_validation_start              every val_every epochs
        gentrain_on_validation_end
        gentrain_on_train_epoch_end
        gentrain_on_save_checkpoint               every checkpoint_every epochs
    gentrain_on_fit_end
    gentrain_on_exception                         if anything raised
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from engine import checkpoint as ckpt
from engine.checkpoint import seed_everything
from engine.config import RunConfig, resolve
from engine.data import AnyData, load_dataset, make_loader, split
from engine.errors import ConfigError, GentrainError, TrainingError
from engine.model import Batch, DataSpec, Model, Phase, _BatchNoise
from engine.optim import make_ema, make_optimizer, make_schedule
from engine.plugins import PluginManager, current
from engine.state import find_resume, restore, save_checkpoint
from engine.trainer import Trainer, WorkerEnv

# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------


def train(
    config: RunConfig | Mapping[str, Any],
    env: WorkerEnv | None = None,
    plugins: PluginManager | None = None,
    data: AnyData | None = None,
    model: Model | None = None,
) -> dict[str, float]:
    """Run one training run on this worker; return the last metrics.

    :param config: the resolved run config; a plain dict (what Ray carries) is
        resolved here, once, against ``plugins``.
    :param env: rank, device and reporting; default: the single in-process worker.
    :param plugins: default: this process's plugin manager (each Ray worker loads its own).
    :param data: the dataset, when the caller already loaded it (in-process runs
        load it once, in :func:`engine.prepare.prepare`); loaded here otherwise.
    :param model: the model, freshly built by :func:`build_model` from ``t.seed``
        (in-process runs build it once, on the driver); built here otherwise.
    """
    env = env or WorkerEnv()
    plugins = plugins or current()
    if not isinstance(config, RunConfig):
        config = resolve(config, plugins)
    t = config.trainer
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    # Same seed on every rank: every replica starts from the same weights
    # (DDP would broadcast rank 0's anyway, but non-DDP state must match too).
    seed_everything(t.seed)

    # -- data ----------------------------------------------------------------
    dataset = data if data is not None else load_dataset(config.data, plugins)
    train_set, val_set = split(dataset, config.data)
    check_batch_size(train_set, t.batch_size * env.world_size * t.accumulate_grad_batches)
    loader_args = dict(
        seed=t.seed, rank=env.rank, world_size=env.world_size, device=env.device, shards=env.dataset_shard
    )
    train_loader = make_loader(train_set, config.data, t.batch_size, train=True, **loader_args)  # type: ignore[arg-type]
    val_loader = make_loader(val_set, config.data, t.batch_size, train=False, **loader_args)  # type: ignore[arg-type]

    # -- model and optimizers ------------------------------------------------
    if model is None:
        seed_everything(t.seed)
        model = build_model(config, plugins, dataset.spec.for_run(len(train_set), t.batch_size, env.world_size))
    model = model.to(env.device)
    phases, param_groups = check_model(model, env.world_size, config)
    optimizers = {
        name: make_optimizer(plugins.hook, name, params, config.optim.for_optimizer(name))
        for name, params in param_groups.items()
    }
    trainer = Trainer(config, plugins, env, model, optimizers, run_dir_of(config))
    if t.precision == "fp16":
        trainer.scalers = {name: torch.amp.GradScaler(env.device.type) for name in optimizers}
    # Each sub-network is its own DDP module, so a phase that uses D only to
    # score G's output does not leave D's reducer waiting for gradients.
    for name, module in model.ddp_modules().items():
        trainer.raw[name] = module
        trainer.ddp[name] = env.wrap_ddp(module)
        if t.compile:
            # After the DDP wrapper, so DDP's bucketing sees the compiled graph (DDPOptimizer).
            trainer.compiled[name] = torch.compile(trainer.ddp[name])  # type: ignore[assignment]
        setattr(model, name, trainer.training_module(name))
    phase_modules = modules_per_phase(trainer, phases, param_groups)
    if t.ema_decay is not None:
        # Every rank keeps its own copy: DDP keeps the weights identical, so no communication.
        for name in t.ema_modules or list(trainer.raw):
            trainer.ema[name] = make_ema(trainer.raw[name], t.ema_decay, warmup=t.ema_warmup)
    steps_per_epoch = len(train_loader) // batches_per_step(phases, t.accumulate_grad_batches)
    total_steps = min(t.max_steps or steps_per_epoch * t.epochs, steps_per_epoch * t.epochs)
    for name, optimizer in optimizers.items():
        schedule = make_schedule(
            optimizer,
            config.optim.for_optimizer(name),
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            epochs=t.epochs,
        )
        if schedule is not None:
            trainer.schedules[name] = schedule

    # -- resume --------------------------------------------------------------
    resume_from = find_resume(trainer, env)
    if resume_from is not None:
        restore(trainer, ckpt.load_resumable(resume_from, trainer))
    else:
        # Per-rank streams for dropout and other torch.rand calls.
        seed_everything(t.seed + 7919 * env.rank)
    noise = _BatchNoise(t.seed, env.rank, env.world_size)
    model._noise = noise
    if trainer.is_rank_zero:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(trainer.run_dir / "config.yaml")

    # A fixed batch of held-out images for reconstruction grids.
    trainer.fixed_batch = next(iter(val_loader if len(val_set) else train_loader))[0][:32]
    autocast = autocast_context(t.precision, env.device)
    if steps_per_epoch == 0:
        raise ConfigError.one(
            "trainer.batch_size",
            t.batch_size,
            f"one step needs {batches_per_step(phases, t.accumulate_grad_batches)} batches per worker "
            f"but an epoch has {len(train_loader)}",
        )

    try:
        trainer.fire("gentrain_on_fit_start")
        model.train()
        while trainer.epoch < t.epochs and not trainer.should_stop:
            epoch = trainer.epoch
            trainer.fire("gentrain_on_train_epoch_start", epoch=epoch)
            train_loader.set_epoch(epoch)
            batches = train_loader.iter_from(trainer.batch_in_epoch)
            sums = LossSums()
            for _ in range(
                trainer.batch_in_epoch // batches_per_step(phases, t.accumulate_grad_batches), steps_per_epoch
            ):
                if t.max_steps is not None and trainer.step >= t.max_steps:
                    trainer.should_stop = True
                    break
                noise.reseed(trainer.step)
                losses, stacked = train_step(trainer, phases, phase_modules, batches, autocast)
                sums.add(losses, stacked)
                after_step(trainer, "step")
                trainer.step += 1
                trainer.batch_in_epoch += batches_per_step(phases, t.accumulate_grad_batches)

            # -- end of epoch: validation, metrics, checkpoint, report -----
            # A stop inside the epoch (trainer.max_steps) keeps its sampler position for the checkpoint.
            if trainer.batch_in_epoch >= steps_per_epoch * batches_per_step(phases, t.accumulate_grad_batches):
                trainer.epoch, trainer.batch_in_epoch = trainer.epoch + 1, 0
            metrics = reduce_means(env, sums.as_dict(), sums.count_dict(), prefix="train/")
            # Scheduled rates as this epoch ended, before the epoch's schedules advance.
            metrics.update({f"lr/{n}": float(optimizers[n].param_groups[0]["lr"]) for n in trainer.schedules})
            last = trainer.epoch >= t.epochs or trainer.should_stop
            if (trainer.epoch % t.val_every == 0 or last) and len(val_set) > 0:
                trainer.fire("gentrain_on_validation_start", epoch=epoch)
                metrics.update(validate(trainer, val_loader, autocast))
                trainer.fire("gentrain_on_validation_end", epoch=epoch, metrics=metrics)
                after_step(trainer, "validation", metrics)
            after_step(trainer, "epoch")
            metrics.update(epoch=float(trainer.epoch), step=float(trainer.step))
            trainer.metrics = metrics
            trainer.fire("gentrain_on_train_epoch_end", epoch=epoch, metrics=metrics)
            written = None
            if trainer.epoch % t.checkpoint_every == 0 or trainer.epoch >= t.epochs or trainer.should_stop:
                written = save_checkpoint(trainer)
            env.report(metrics, written)
        trainer.fire("gentrain_on_fit_end")
    except BaseException as error:
        trainer.fire("gentrain_on_exception", error=error)
        raise
    return trainer.metrics


def train_step(
    trainer: Trainer,
    phases: list[Phase],
    phase_modules: dict[str, set[str]],
    batches: Iterator[Batch],
    autocast: contextlib.AbstractContextManager[Any] | Any,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """One step: every phase of the model, each ``repeats`` times.

    Returns the detached losses, and (for a one-phase model without accumulation)
    the same values as one stacked tensor, so :class:`LossSums` need not stack them again.
    """
    t = trainer.config.trainer
    k = t.accumulate_grad_batches
    model = trainer.model
    micro: list[Batch] = []
    out: dict[str, Tensor] = {}
    stacked: Tensor | None = None
    first = True
    for phase in phases:
        optimizer = trainer.optimizers[phase.optimizer_name]
        for _ in range(phase.repeats):
            if phase.new_batch or not micro:
                micro = [next(batches) for _ in range(k)]
            if first:
                trainer.fire("gentrain_on_train_batch_start", step=trainer.step, batch=micro[0])
                first = False
            optimizer.zero_grad(set_to_none=True)
            phase_losses: dict[str, Tensor] = {}
            for i, batch in enumerate(micro):
                # Gradients are all-reduced only on the last micro-batch, and
                # only for the sub-networks this phase updates.
                with sync_context(trainer, phase_modules[phase.name], last=i == k - 1), autocast:
                    losses, loss = trainer.training_step(model, batch, phase.name)  # the model's output is checked
                    # x / 1 == x exactly: skip the op and its backward node when not accumulating.
                    loss = loss / k if k > 1 else loss
                scaler = trainer.scalers.get(phase.optimizer_name)
                (scaler.scale(loss) if scaler else loss).backward()
                stacked = add_logged_losses(phase_losses, losses, k)
            if not check_finite(trainer, phase, phase_losses, stacked):
                optimizer.zero_grad(set_to_none=True)
                continue
            scaler = trainer.scalers.get(phase.optimizer_name)
            if scaler is not None:
                scaler.unscale_(optimizer)
            trainer.fire("gentrain_on_before_optimizer_step", phase=phase.name, optimizer=optimizer)
            if t.clip_grad_norm is not None:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, t.clip_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            prefix = f"{phase.name}/" if len(phases) > 1 else ""
            out.update({prefix + name: v for name, v in phase_losses.items()})
    trainer.fire("gentrain_on_train_batch_end", step=trainer.step, losses=out)
    # With one phase, ``out`` is that phase's last logged losses, in the stacked order.
    return out, (stacked if len(phases) == 1 and len(out) else None)


def after_step(trainer: Trainer, interval: str, metrics: dict[str, float] | None = None) -> None:
    """Advance what follows the optimizer steps: the EMA weights (per step) and the schedules of ``interval``."""
    if interval == "step":
        for name, averaged in trainer.ema.items():
            averaged.update_parameters(trainer.raw[name])
    for schedule in trainer.schedules.values():
        if schedule.interval == interval:
            schedule.step(metrics)


def validate(trainer: Trainer, loader: Any, autocast: Any) -> dict[str, float]:
    """Average ``validation_step`` over this rank's share of the validation set, then over ranks."""
    sums: dict[str, Tensor] = {}
    count = torch.zeros((), dtype=torch.float64, device=trainer.device)
    with trainer.unwrapped() as model:
        model.eval()
        with torch.no_grad(), autocast:
            for batch in loader:
                n = batch[0].shape[0]
                for k, v in model.validation_step(batch).items():
                    s = v.detach().double() * n
                    sums[k] = sums[k] + s if k in sums else s
                count += n
        model.train()
    return reduce_sums(trainer.env, sums, count, prefix="val/")


# ---------------------------------------------------------------------------
# pieces of the loop
# ---------------------------------------------------------------------------


def run_dir_of(config: RunConfig) -> Path:
    if config.run.name is None:
        raise ConfigError.one("run.name", None, "must be set before training starts (engine.fit sets a default)")
    return Path(config.run.output_dir).expanduser().resolve() / config.run.name


def batches_per_step(phases: list[Phase], accumulate: int) -> int:
    draws = sum(p.repeats for p in phases if p.new_batch)
    return max(draws, 1) * accumulate


def check_batch_size(train_set: AnyData, global_batch: int) -> None:
    if global_batch > len(train_set):
        raise ConfigError.one(
            "trainer.batch_size",
            global_batch,
            f"the global batch (batch_size × workers × accumulate_grad_batches) exceeds the "
            f"{len(train_set)} training images",
        )


def build_model(config: RunConfig, plugins: PluginManager, spec: DataSpec) -> Model:
    """The model ``config.model`` names, built by its plugin from the current RNG state.

    :raises TrainingError: naming the plugin and the model, when the model's ``__init__`` raises.
    """
    entry = plugins.models.get(config.model.name)
    try:
        model = entry.obj(config.model.params, spec)
    except GentrainError:
        raise
    except Exception as e:
        raise TrainingError(
            f"model {config.model.name!r} (plugin {entry.plugin!r}) failed to build: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(model, Model):
        raise TrainingError(
            f"model {config.model.name!r} (plugin {entry.plugin!r}) built a {type(model).__name__}, "
            "not an engine.Model subclass"
        )
    return model


def check_model(
    model: Model, world_size: int, config: RunConfig | None = None
) -> tuple[list[Phase], dict[str, list[nn.Parameter]]]:
    """What can be checked of a built model without data: its phases, optimizers and DDP coverage,
    and the config fields that name its sub-networks or optimizers.

    Runs on the driver before any worker starts (``world_size`` is the run's
    worker count) and again in each worker.
    """
    if config is not None:
        subnets = list(model.ddp_modules())
        for name in config.trainer.ema_modules or ():
            if name not in subnets:
                raise ConfigError.one(
                    "trainer.ema_modules", name, f"is not a sub-network of {config.model.name!r}: {', '.join(subnets)}"
                )
    phases = model.phases()
    param_groups = {name: [p for p in params if p.requires_grad] for name, params in model.param_groups().items()}
    check_phases(phases, param_groups)
    if world_size > 1:
        covered = {id(p) for module in model.ddp_modules().values() for p in module.parameters()}
        loose = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if loose:
            raise TrainingError(
                f"parameters {loose[:5]} are in no module returned by ddp_modules(), so DDP would not "
                "synchronise them; put them in a sub-module or override ddp_modules()"
            )
    return phases, param_groups


def check_phases(phases: list[Phase], param_groups: dict[str, list[nn.Parameter]]) -> None:
    for phase in phases:
        if phase.optimizer_name not in param_groups:
            raise TrainingError(
                f"phase {phase.name!r} steps optimizer {phase.optimizer_name!r}, but param_groups() "
                f"returned only {sorted(param_groups)}"
            )
        if phase.repeats < 1:
            raise TrainingError(f"phase {phase.name!r} has repeats={phase.repeats}; it must be at least 1")
    for name, params in param_groups.items():
        if not params:
            raise TrainingError(f"optimizer {name!r} has no trainable parameters")


def modules_per_phase(
    trainer: Trainer, phases: list[Phase], param_groups: dict[str, list[nn.Parameter]]
) -> dict[str, set[str]]:
    """For each phase, the DDP sub-networks holding parameters its optimizer updates."""
    owned = {name: {id(p) for p in module.parameters()} for name, module in trainer.raw.items()}
    out = {}
    for phase in phases:
        ids = {id(p) for p in param_groups[phase.optimizer_name]}
        out[phase.name] = {name for name, params in owned.items() if params & ids}
    return out


def sync_context(trainer: Trainer, trained: set[str], *, last: bool) -> contextlib.AbstractContextManager[Any]:
    """``no_sync()`` of every DDP sub-network that must not all-reduce on this micro-batch."""
    if all(module is trainer.raw[name] for name, module in trainer.ddp.items()):
        return contextlib.nullcontext()  # nothing is wrapped (one process): skip the ExitStack per step
    return _no_sync(trainer, trained, last=last)


@contextlib.contextmanager
def _no_sync(trainer: Trainer, trained: set[str], *, last: bool) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for name, module in trainer.ddp.items():
            if module is not trainer.raw[name] and (not last or name not in trained):
                stack.enter_context(module.no_sync())  # type: ignore[operator]
        yield


def autocast_context(precision: str, device: torch.device) -> Any:
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def add_logged_losses(into: dict[str, Tensor], losses: dict[str, Tensor], k: int) -> Tensor | None:
    """Add one micro-batch's ``losses / k``, detached float32 copies, to a phase's logged losses.

    Returns the values stacked into one tensor when they were copied that way (``k == 1``, float32 scalars).
    """
    values = list(losses.values())
    if k == 1 and _float_scalars(values):
        # The usual case as one op instead of three per value (detach, float, / k):
        # a fresh float32 copy of every scalar, bit-identical since x / 1 == x.
        with torch.no_grad():
            stacked = torch.stack(values)
        into.update(zip(losses, stacked.unbind(), strict=True))
        return stacked
    for name, value in losses.items():
        v = value.detach().float() / k
        into[name] = into[name] + v if name in into else v
    return None


def check_finite(trainer: Trainer, phase: Phase, losses: dict[str, Tensor], stacked: Tensor | None = None) -> bool:
    """Apply ``trainer.nan_policy`` to a phase's losses; ``False`` means skip this update.

    ``stacked``: the same values already stacked into one tensor (see :func:`add_logged_losses`).
    """
    values = list(losses.values())
    # One host read of every value (one device sync) instead of isfinite + .item() per value.
    if stacked is not None:
        finite = all(map(math.isfinite, stacked.tolist()))
    elif values and _scalars(values):
        finite = all(map(math.isfinite, torch.stack(values).tolist()))
    else:
        finite = all(bool(torch.isfinite(v).all()) for v in values)
    if trainer.agree_on_skips:
        # Every rank must skip the same updates, or the replicas part ways
        # (a rank with a finite loss would step on the NaN gradients DDP averaged in).
        bad_ranks = trainer.env.all_reduce(torch.tensor(0.0 if finite else 1.0, device=trainer.device))
        finite = float(bad_ranks) == 0
    if finite:
        return True
    policy = trainer.config.trainer.nan_policy
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
    where = f"step {trainer.step}, epoch {trainer.epoch}, phase {phase.name!r}"
    if policy == "raise":
        raise TrainingError(
            f"non-finite loss at {where}: {bad}; lower the learning rate, set trainer.clip_grad_norm, "
            "or set trainer.nan_policy=skip to skip such updates"
        )
    trainer.skipped_steps += 1
    if trainer.skipped_steps > 100:
        raise TrainingError(
            f"training diverged: more than 100 updates skipped for non-finite losses (last at {where}"
            + (f": {bad}" if bad else ", on another rank")
            + "); lower the learning rate or set trainer.clip_grad_norm"
        )
    return False


class LossSums:
    """Running sums of each step's logged losses, per key (``sums[k] + v``), for the epoch means.

    While every step logs the same keys as float32 scalars, the sums are kept
    stacked and added in one op per step instead of one per key: element-wise
    the same float32 additions in the same order, so the sums are bit-identical.
    """

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self.packed: Tensor | None = None
        self.packed_steps = 0  # steps added to ``packed`` since it was built
        self.loose: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}  # steps per key, up to when ``packed`` was built

    def add(self, losses: dict[str, Tensor], stacked: Tensor | None = None) -> None:
        """Add one step's losses; ``stacked``, if given, holds the same values in ``losses``' order."""
        if self.packed is not None and tuple(losses) == self.keys:
            if stacked is not None:
                self.packed.add_(stacked)
                self.packed_steps += 1
                return
            values = list(losses.values())
            if _float_scalars(values):
                self.packed.add_(torch.stack(values))
                self.packed_steps += 1
                return
        # Keys changed (first step, a phase skipped for a non-finite loss, other dtypes): unpack, add, repack.
        sums, counts = self.as_dict(), self.count_dict()
        for k, v in losses.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
            counts[k] = counts.get(k, 0) + 1
        keys = tuple(losses)
        if keys and _float_scalars([sums[k] for k in keys]):
            self.keys, self.packed = keys, torch.stack([sums[k] for k in keys])
            self.loose = {k: v for k, v in sums.items() if k not in losses}
        else:
            self.keys, self.packed, self.loose = (), None, sums
        self.counts, self.packed_steps = counts, 0

    def as_dict(self) -> dict[str, Tensor]:
        out = dict(self.loose)
        if self.packed is not None:
            out.update(zip(self.keys, self.packed.unbind(), strict=True))
        return out

    def count_dict(self) -> dict[str, int]:
        """Steps that logged each key (fewer than the epoch's steps for a phase that was skipped)."""
        counts = dict(self.counts)
        for k in self.keys:
            counts[k] = counts.get(k, 0) + self.packed_steps
        return counts


def _scalars(values: list[Tensor], dtype: torch.dtype | None = None) -> bool:
    """All 0-dim (and of ``dtype``, if given)."""
    # A plain loop, not all(<genexpr>): this runs several times per step, and a
    # generator costs a Python call per value.
    for v in values:  # noqa: SIM110
        if v.ndim or (dtype is not None and v.dtype != dtype):
            return False
    return True


def _float_scalars(values: list[Tensor]) -> bool:
    return _scalars(values, torch.float32)


def reduce_means(env: WorkerEnv, sums: dict[str, Tensor], counts: dict[str, int], prefix: str) -> dict[str, float]:
    """Per-key means over ranks: ``sum over ranks of sums[k] / sum over ranks of counts[k]``, one all-reduce."""
    keys = sorted(sums)
    if not keys:  # every update of the epoch skipped (on every rank: skips agree)
        return {}
    # Every rank must reduce the same keys in the same order.
    packed = torch.stack([sums[k].to(env.device, torch.float64) for k in keys])
    packed = torch.cat([packed, torch.tensor([float(counts[k]) for k in keys], dtype=torch.float64, device=env.device)])
    env.all_reduce(packed)
    values = packed.tolist()
    n = len(keys)
    return {prefix + k: values[i] / values[n + i] for i, k in enumerate(keys)}


def reduce_sums(env: WorkerEnv, sums: dict[str, Tensor], count: Tensor, prefix: str) -> dict[str, float]:
    keys = sorted(sums)
    # Every rank must reduce the same keys in the same order.
    packed = torch.stack([sums[k].to(env.device, torch.float64) for k in keys] + [count.to(env.device)])
    env.all_reduce(packed)
    total = float(packed[-1])
    if total == 0:
        return {}
    return {prefix + k: float(v) / total for k, v in zip(keys, packed[:-1].tolist(), strict=True)}
