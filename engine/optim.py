"""Optimizers: the default factory and how config hyperparameters reach a loaded optimizer.

``gentrain_make_optimizer`` is a firstresult hook: a plugin may build any
optimizer it likes; when none does, :func:`default_optimizer` builds the one
``optim.algo`` names.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.config import OptimConfig


def default_optimizer(params: list[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``config.algo`` names, with the config's hyperparameters."""
    if config.algo == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    if config.algo == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
        )
    if config.algo == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.RMSprop(
        params, lr=config.lr, momentum=config.momentum, eps=config.eps, weight_decay=config.weight_decay
    )


def make_optimizer(
    hook: object, name: str, params: list[torch.nn.Parameter], config: OptimConfig
) -> torch.optim.Optimizer:
    """Ask the plugins (``hook`` is the manager's ``hook`` relay) first, then fall back to the default."""
    made = hook.gentrain_make_optimizer(name=name, params=params, config=config)  # type: ignore[attr-defined]
    if made is not None and not isinstance(made, torch.optim.Optimizer):
        from engine.errors import PluginError

        owners = [i.plugin_name for i in hook.gentrain_make_optimizer.get_hookimpls()]  # type: ignore[attr-defined]
        raise PluginError(
            f"hook gentrain_make_optimizer (plugin {' or '.join(map(repr, owners))}) returned a "
            f"{type(made).__name__} for optimizer {name!r}; it must return a torch.optim.Optimizer or None"
        )
    return made if made is not None else default_optimizer(params, config)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, config: OptimConfig) -> None:
    """Write the config's hyperparameters into every param group (after loading a checkpoint).

    Hyperparameters belong to the config, not to the checkpointed state, so a
    value changed between runs (or by a PBT perturbation) takes effect on resume.
    """
    for group in optimizer.param_groups:
        group["lr"] = config.lr
        group["weight_decay"] = config.weight_decay
        if "betas" in group:
            group["betas"] = tuple(config.betas)
        if "momentum" in group:
            group["momentum"] = config.momentum
        if "eps" in group:
            group["eps"] = config.eps


# ---------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------

#: When each schedule advances unless ``optim.scheduler_interval`` says otherwise.
DEFAULT_INTERVAL = {"cosine": "step", "linear_warmup": "step", "step": "epoch", "exponential": "epoch"}


class Schedule:
    """One optimizer's learning-rate schedule and when it advances.

    ``interval`` is ``"step"`` (after every optimizer step of the run),
    ``"epoch"`` (after every epoch) or ``"validation"`` (``plateau``: after each
    validation, on ``config.plateau_metric``).
    """

    def __init__(self, scheduler: Any, interval: str, config: OptimConfig) -> None:
        self.scheduler = scheduler
        self.interval = interval
        self.config = config

    def step(self, metrics: dict[str, float] | None = None) -> None:
        if self.interval != "validation":
            self.scheduler.step()
            return
        assert metrics is not None
        metric = self.config.plateau_metric
        if metric not in metrics:
            from engine.errors import ConfigError

            raise ConfigError.one(
                "optim.plateau_metric", metric, f"is not among the validation metrics: {', '.join(sorted(metrics))}"
            )
        self.scheduler.step(metrics[metric])

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: OptimConfig, *, total_steps: int, steps_per_epoch: int, epochs: int
) -> Schedule | None:
    """The schedule ``config.scheduler`` names for ``optimizer`` (``None`` for ``"none"``).

    Built from ``torch.optim.lr_scheduler`` classes, so a run's learning rates
    are exactly the sequence those classes give.
    """
    from torch.optim import lr_scheduler as lrs

    kind = config.scheduler
    if kind == "none":
        return None
    if kind == "plateau":
        plateau = lrs.ReduceLROnPlateau(
            optimizer,
            mode=config.plateau_mode,
            factor=config.gamma,
            patience=config.plateau_patience,
            min_lr=config.min_lr,
        )
        return Schedule(plateau, "validation", config)
    interval = config.scheduler_interval or DEFAULT_INTERVAL[kind]
    length = max(total_steps if interval == "step" else epochs, 1)
    warmup = min(config.warmup_steps, length - 1) if kind in ("cosine", "linear_warmup") else 0
    main: Any
    if kind == "cosine":
        main = lrs.CosineAnnealingLR(optimizer, T_max=max(length - warmup, 1), eta_min=config.min_lr)
    elif kind == "linear_warmup":
        main = lrs.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif kind == "step":
        main = lrs.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    else:
        main = lrs.ExponentialLR(optimizer, gamma=config.gamma)
    if warmup > 0:
        ramp = lrs.LinearLR(optimizer, start_factor=config.warmup_start, end_factor=1.0, total_iters=warmup)
        main = lrs.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
    return Schedule(main, interval, config)


def rebase_schedule(schedule: Schedule, optimizer: torch.optim.Optimizer, saved_lr: float, lr: float) -> None:
    """After a resume: scale the schedule to the config's ``lr`` (PBT may have changed it).

    ``saved_lr`` is the base learning rate the checkpointed schedule ran with;
    with an unchanged ``lr`` the resumed rates are bit-identical.
    """
    if saved_lr == lr:
        return
    ratio = lr / saved_lr
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * ratio
        if "initial_lr" in group:
            group["initial_lr"] = lr
    inner = [schedule.scheduler, *getattr(schedule.scheduler, "_schedulers", [])]
    for sched in inner:
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [lr for _ in sched.base_lrs]
        if hasattr(sched, "_last_lr"):
            sched._last_lr = [g["lr"] for g in optimizer.param_groups]


# ---------------------------------------------------------------------------
# exponential moving average of weights
# ---------------------------------------------------------------------------


def make_ema(module: torch.nn.Module, decay: float, *, warmup: bool) -> torch.optim.swa_utils.AveragedModel:
    """An EMA copy of ``module`` (parameters and buffers), updated with :func:`update_ema`.

    Built on ``torch.optim.swa_utils.AveragedModel``. With ``warmup`` the decay of
    update ``n`` is ``min(decay, (1 + n) / (10 + n))``, so early averages are not
    dominated by the random initial weights.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not warmup:
        return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def ramped(
        averaged: tuple[torch.Tensor, ...] | list[torch.Tensor],
        current: tuple[torch.Tensor, ...] | list[torch.Tensor],
        num_averaged: torch.Tensor | int,
    ) -> None:
        averaged, current = list(averaged), list(current)
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            if torch.is_floating_point(averaged[0]):
                torch._foreach_lerp_(averaged, current, 1.0 - d)
            else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
                for a, c in zip(averaged, current, strict=True):
                    a.copy_(c)

    return AveragedModel(module, multi_avg_fn=ramped, use_buffers=True)
