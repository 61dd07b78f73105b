"""A model plugin that misbehaves as its config says: every way a model can break the contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

import engine

Fault = Literal[
    "none",
    "init_raises",
    "no_loss",
    "vector_loss",
    "int_loss",
    "not_a_dict",
    "float_loss",
    "detached_loss",
    "bad_logged_value",
    "step_raises",
]


@dataclass(frozen=True)
class FaultyConfig(engine.ModelConfig):
    fault: Fault = "none"


class Faulty(engine.Model):
    """A linear autoencoder whose ``training_step`` breaks the contract as ``fault`` says."""

    def __init__(self, config: FaultyConfig, data: engine.DataSpec) -> None:
        if config.fault == "init_raises":
            raise RuntimeError("weights file missing")
        super().__init__(config, data)
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(data.numel, 4))
        self.dec = nn.Linear(4, data.numel)

    def training_step(self, batch: engine.Batch, phase: str) -> Any:
        x, _ = batch
        error = (self.dec(self.enc(x)) - x.flatten(1)).pow(2)
        loss = error.mean()
        fault = self.config.fault
        if fault == "no_loss":
            return {"recon": loss}
        if fault == "vector_loss":
            return {"loss": error.mean(1)}
        if fault == "int_loss":
            return {"loss": torch.tensor(3)}
        if fault == "not_a_dict":
            return loss
        if fault == "float_loss":
            return {"loss": float(loss.detach())}
        if fault == "detached_loss":
            return {"loss": loss.detach()}
        if fault == "bad_logged_value":
            return {"loss": loss, "extra": "high"}
        if fault == "step_raises":
            raise ValueError("shape mismatch in decoder")
        return {"loss": loss}

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        x, _ = batch
        return {"mse": (self.dec(self.enc(x)) - x.flatten(1)).pow(2).mean()}


class TwoNets(Faulty):
    """Two optimizers, ``gen`` and ``disc`` (for ``optim.per_optimizer`` cases)."""

    def param_groups(self) -> dict[str, Any]:
        return {"gen": self.enc.parameters(), "disc": self.dec.parameters()}

    def phases(self) -> list[engine.Phase]:
        return [engine.Phase("gen"), engine.Phase("disc")]


class BadModels:
    __name__ = "badmodels"

    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("faulty", Faulty, FaultyConfig)
        registry.add("twonets", TwoNets, FaultyConfig)

    @engine.hookimpl
    def gentrain_make_optimizer(self, name: str, params: Any, config: Any) -> Any:
        made = _active.get("optimizer")
        if made == "a_dict":
            return {"lr": config.lr}
        if made == "a_string":
            return "adam"
        return None


#: What the optimizer hook returns ("a_dict", "a_string"; unset: it leaves the optimizer to the engine).
_active: dict[str, str] = {}
