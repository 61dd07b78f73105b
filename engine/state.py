"""What the loop saves and restores: a checkpoint assembled from a :class:`~engine.trainer.Trainer`,
loaded back into one, and which checkpoint a run resumes from.

:mod:`engine.checkpoint` writes, reads, finds and prunes the files; this module
knows what goes in them (model, optimizers, scalers, schedules, EMA weights,
position, per-rank RNG states, config, data spec, plugin versions and state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import checkpoint as ckpt
from engine.checkpoint import seed_everything
from engine.errors import CheckpointError
from engine.optim import apply_hyperparameters, rebase_schedule
from engine.trainer import Trainer, WorkerEnv


def find_resume(trainer: Trainer, env: WorkerEnv) -> Path | None:
    """The checkpoint to resume from: the newest written in the run directory.

    Ray's registered checkpoint can lag behind what rank 0 wrote, so the run
    directory, on shared storage, is the source of truth.
    """
    mode = trainer.config.run.resume
    found = ckpt.latest(trainer.checkpoint_dir) or env.resume_checkpoint()
    if mode == "never":
        return None
    if mode == "must" and found is None:
        raise CheckpointError(
            f"run.resume=must but no checkpoint exists in {trainer.checkpoint_dir}; "
            "check run.name and run.output_dir, or use run.resume=auto"
        )
    return found


def save_checkpoint(trainer: Trainer) -> Path | None:
    """Assemble the state on every rank (RNG states are gathered); rank 0 writes it."""
    rng = trainer.env.all_gather(ckpt.rng_state())
    with trainer.unwrapped() as model:
        state: dict[str, Any] = {
            "format": ckpt.FORMAT,
            "model_name": trainer.config.model.name,
            "model": model.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in trainer.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in trainer.scalers.items()},
            "epoch": trainer.epoch,
            "step": trainer.step,
            "batch_in_epoch": trainer.batch_in_epoch,
            "rng": rng,
            "world_size": trainer.world_size,
            "config": trainer.config.to_dict(),
            "plugins": trainer.plugins.versions(),
            "metrics": dict(trainer.metrics),
            "plugin_state": {},
            "data_spec": ckpt.spec_state(trainer.data_spec),
            "model_plugin": ckpt.model_origin(trainer.plugins, trainer.config.model.name),
            # EMA weights as plain sub-network state dicts, so loading needs no AveragedModel.
            "ema": {n: a.module.state_dict() for n, a in trainer.ema.items()},
            "ema_updates": {n: int(a.n_averaged) for n, a in trainer.ema.items()},
            "schedulers": {
                n: {"state": s.state_dict(), "base_lr": trainer.config.optim.for_optimizer(n).lr}
                for n, s in trainer.schedules.items()
            },
        }
    trainer.fire("gentrain_on_save_checkpoint", state=state)
    if not trainer.is_rank_zero:
        return None
    path = ckpt.save(state, trainer.checkpoint_dir)
    ckpt.prune(trainer.checkpoint_dir, trainer.config.trainer.keep_checkpoints)
    trainer.last_checkpoint = path
    return path


def restore(trainer: Trainer, state: dict[str, Any]) -> None:
    """Load a checkpoint into the trainer; hyperparameters stay those of the current config."""
    name = state.get("model_name")
    if name != trainer.config.model.name:
        raise CheckpointError(f"checkpoint is of model {name!r}, but this run trains {trainer.config.model.name!r}")
    with trainer.unwrapped() as model:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint does not fit this model (was the model config changed?): {str(e).splitlines()[0]}"
            ) from e
    for n, opt in trainer.optimizers.items():
        opt.load_state_dict(state["optimizers"][n])
        scheduled = [g["lr"] for g in opt.param_groups]
        config = trainer.config.optim.for_optimizer(n)
        apply_hyperparameters(opt, config)
        saved = state.get("schedulers", {}).get(n)
        if n in trainer.schedules and saved is not None:
            # The schedule's position is training state; its base rate is the config's (PBT may change it).
            trainer.schedules[n].load_state_dict(saved["state"])
            for group, lr in zip(opt.param_groups, scheduled, strict=True):
                group["lr"] = lr
            rebase_schedule(trainer.schedules[n], opt, float(saved["base_lr"]), config.lr)
    for n, averaged in trainer.ema.items():
        if n in state.get("ema", {}):
            averaged.module.load_state_dict(state["ema"][n])
            averaged.n_averaged.fill_(int(state["ema_updates"][n]))
        # else: EMA was switched on for this run after the checkpoint; it starts from the current weights.
    for n, scaler in trainer.scalers.items():
        if n in state.get("scalers", {}):
            scaler.load_state_dict(state["scalers"][n])
    trainer.epoch = int(state["epoch"])
    trainer.step = int(state["step"])
    trainer.batch_in_epoch = int(state["batch_in_epoch"])
    trainer.metrics = dict(state.get("metrics", {}))
    rngs = state.get("rng", [])
    if len(rngs) == trainer.world_size:
        ckpt.set_rng_state(rngs[trainer.rank])
    else:
        # A different world size cannot continue the same random streams.
        seed_everything(trainer.config.trainer.seed + 7919 * trainer.rank + trainer.step)
    trainer.fire("gentrain_on_load_checkpoint", state=state)
