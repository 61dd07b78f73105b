"""Optimizers: the default factory and how config hyperparameters reach a loaded optimizer.

``gentrain_make_optimizer`` is a firstresult hook: a plugin may build any
optimizer it likes; when none does, :func:`default_optimizer` builds the one
``optim.algo`` names.
"""

from __future__ import annotations

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
