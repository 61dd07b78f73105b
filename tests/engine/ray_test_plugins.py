"""Plugins the distributed tests load in every Ray worker (``GENTRAIN_PLUGINS=ray_test_plugins``).

Two small models, deterministic given the batch and :meth:`engine.Model.batch_randn`:

* ``ddp_ae``: encoder and decoder, one phase (two DDP modules, one optimizer);
* ``ddp_gan``: generator and discriminator, phases ``disc`` then ``gen``; the
  disc phase makes its fakes under ``torch.no_grad()``, the gen phase scores
  them with the discriminator (which the loop keeps in ``no_sync``).

And one recorder plugin, writing into the run directory (shared by all workers):

* ``replicas/rank<r>.json``: per sub-network, a hash of each rank's final weights;
* ``<run name>.epochs.log`` beside the run directory (a run that fails before
  its first checkpoint leaves no run directory): ``<epoch> <pid>`` each time
  rank 0 starts an epoch;
* fault injection, from the model config: at epoch ``crash_epoch`` (0-based),
  after the first step, rank ``crash_rank`` either calls ``os._exit(1)``
  (``crash="exit"``), writes its PID to ``pid`` and waits to be killed from
  outside (``crash="wait_for_kill"``), or raises (``crash="raise"``/``"raise_config"``:
  ``ddp_ae``'s ``training_step`` raises a ``RuntimeError``/``engine.ConfigError``
  on that rank at once;
  ``crash="raise_engine"``: the hook raises an ``engine.TrainingError``, which
  the engine reports as a ``PluginError``).
  The first two happen once per run directory (marker file ``crashed``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import engine

Crash = Literal["none", "exit", "wait_for_kill", "raise", "raise_config", "raise_engine"]


@dataclass(frozen=True)
class FaultConfig(engine.ModelConfig):
    crash: Crash = "none"
    crash_epoch: int = 1
    crash_rank: int = 0
    hidden: engine.PositiveInt = 16
    latent: engine.PositiveInt = 4
    nan_rank: int = -1  # this rank's loss is NaN at its ``nan_call``-th training_step call
    nan_call: int = 3


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class DDPAE(engine.Model):
    def __init__(self, config: FaultConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        self.enc = nn.Sequential(
            nn.Flatten(), nn.Linear(data.numel, config.hidden), nn.Tanh(), nn.Linear(config.hidden, config.latent)
        )
        self.dec = nn.Sequential(
            nn.Linear(config.latent, config.hidden), nn.Tanh(), nn.Linear(config.hidden, data.numel)
        )

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        c = self.config
        if c.crash in ("raise", "raise_config") and _rank() == c.crash_rank:
            if c.crash == "raise_config":
                raise engine.ConfigError.one("model.crash", c.crash, "injected config error in training_step")
            raise RuntimeError("injected failure in training_step")
        # Mean over the batch: DDP averages gradients over ranks, so 2 × B matches 1 × 2B.
        loss = F.mse_loss(self.dec(self.enc(x)), x.flatten(1))
        if self.training and c.nan_rank == _rank():
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == c.nan_call:
                loss = loss * float("nan")
        return {"loss": loss}

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        return self.training_step(batch, "train")

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.dec(self.enc(x))).view_as(x)


class DDPGAN(engine.Model):
    def __init__(self, config: FaultConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        self.gen = nn.Sequential(
            nn.Linear(config.latent, config.hidden), nn.ReLU(), nn.Linear(config.hidden, data.numel)
        )
        self.disc = nn.Sequential(
            nn.Flatten(), nn.Linear(data.numel, config.hidden), nn.LeakyReLU(0.2), nn.Linear(config.hidden, 1)
        )

    def phases(self) -> list[engine.Phase]:
        return [engine.Phase("disc"), engine.Phase("gen", new_batch=False)]

    def param_groups(self) -> dict[str, Any]:
        return {"disc": self.disc.parameters(), "gen": self.gen.parameters()}

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        n = x.shape[0]
        z = self.batch_randn(n, self.config.latent)
        if phase == "disc":
            with torch.no_grad():
                fake = torch.sigmoid(self.gen(z))
            # Two discriminator calls before one backward, as GAN code usually has.
            real_logits, fake_logits = self.disc(x), self.disc(fake)
            loss = F.binary_cross_entropy_with_logits(
                real_logits, torch.ones_like(real_logits)
            ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            return {"loss": loss}
        logits = self.disc(torch.sigmoid(self.gen(z)))
        return {"loss": F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))}

    def sample(self, n: int, labels: Tensor | None = None) -> Tensor:
        z = torch.randn(n, self.config.latent, device=self.device)
        return torch.sigmoid(self.gen(z)).view(n, *self.data.shape)


@engine.hookimpl
def gentrain_register_models(registry: engine.Registry[Any]) -> None:
    registry.add("ddp_ae", DDPAE, FaultConfig)
    registry.add("ddp_gan", DDPGAN, FaultConfig)


# ---------------------------------------------------------------------------
# recorder and fault injection
# ---------------------------------------------------------------------------


def state_hash(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _ours(trainer: Any) -> bool:
    return isinstance(trainer.config.model.params, FaultConfig)


@engine.hookimpl
def gentrain_on_train_epoch_start(trainer: Any, epoch: int) -> None:
    if trainer.is_rank_zero:
        run_dir = Path(trainer.run_dir)
        with run_dir.with_name(run_dir.name + ".epochs.log").open("a") as f:
            f.write(f"{epoch} {os.getpid()}\n")


@engine.hookimpl
def gentrain_on_train_batch_end(trainer: Any, step: int) -> None:
    if not _ours(trainer):
        return
    c: FaultConfig = trainer.config.model.params
    if c.crash == "none" or trainer.epoch != c.crash_epoch or trainer.rank != c.crash_rank:
        return
    run_dir = Path(trainer.run_dir)
    if c.crash in ("raise", "raise_config"):
        return  # raised by the model itself
    if c.crash == "raise_engine":
        raise engine.TrainingError(f"injected engine failure at step {step}")
    marker = run_dir / "crashed"
    if marker.exists():
        return
    marker.write_text(f"{c.crash} at step {step} epoch {trainer.epoch} pid {os.getpid()} t {time.time()}\n")
    if c.crash == "exit":
        os._exit(1)
    # wait_for_kill: the test reads the PID and sends SIGKILL.
    tmp = run_dir / "pid.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.replace(run_dir / "pid")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
    raise RuntimeError("wait_for_kill: nobody killed this worker within 120 s")


@engine.hookimpl
def gentrain_on_fit_end(trainer: Any) -> None:
    out = Path(trainer.run_dir) / "replicas"
    out.mkdir(parents=True, exist_ok=True)
    hashes = {name: state_hash(module) for name, module in sorted(trainer.raw.items())}
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
    devices = sorted({str(p.device) for p in trainer.model.parameters()})
    record = {"world_size": trainer.world_size, "hashes": hashes, "node": _node_id(), "backend": backend}
    record["devices"] = devices
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(record))


def _node_id() -> str | None:
    try:
        import ray
    except ImportError:
        return None
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
