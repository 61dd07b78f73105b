"""The DDP contract flags a model with a per-rank batch statistic (issue #17).

The built-in models pass it in ``test_contract.py``; here a tiny WAE-style
model whose penalty is an MMD estimate over the batch each rank sees: 2 ranks
× B do not give the penalty of 1 × 2B, and the contract says which loss and
which gradients differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

import engine
from engine.testing import ModelContract


@dataclass(frozen=True)
class ToyMMDConfig(engine.ModelConfig):
    latent_dim: engine.PositiveInt = 4


def mmd(z: Tensor, prior: Tensor) -> Tensor:
    """A (biased) RBF-kernel MMD² estimate between the codes and prior draws: a statistic of the whole batch."""

    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b).pow(2) / a.shape[1])

    return k(z, z).mean() + k(prior, prior).mean() - 2 * k(z, prior).mean()


class ToyMMD(engine.Model):
    """An autoencoder with an MMD penalty on its codes (a WAE-MMD in miniature)."""

    batch_statistics: ClassVar[bool] = False

    def __init__(self, config: ToyMMDConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(data.numel, config.latent_dim))
        self.decoder = nn.Linear(config.latent_dim, data.numel)

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        z = self.encoder(x)
        recon = (torch.sigmoid(self.decoder(z)) - x.flatten(1)).pow(2).sum(1).mean()
        penalty = mmd(z, self.batch_randn(len(x), z.shape[1]))
        return {"loss": recon + 10 * penalty, "recon": recon, "mmd": penalty}

    def reconstruct(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x))).view_as(x)


class ToyMMDMarked(ToyMMD):
    @property  # type: ignore[misc]  # a property may stand for the class attribute when the config decides
    def batch_statistics(self) -> bool:  # type: ignore[override]
        return self.config.latent_dim > 0


class ToyPlugin:
    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("toy_mmd", ToyMMD, ToyMMDConfig)
        registry.add("toy_mmd_marked", ToyMMDMarked, ToyMMDConfig)


class _Contract(ModelContract):
    plugins = (ToyPlugin(),)
    data: ClassVar[dict[str, Any]] = {"name": "shapes", "n": 32, "size": 8}


def test_the_ddp_contract_flags_a_per_rank_batch_statistic() -> None:
    contract = type("C", (_Contract,), {"model": "toy_mmd"})()
    with pytest.raises(AssertionError) as e:
        contract.test_ddp_matches_one_process()
    msg = str(e.value)
    assert "2 processes × batch 8 differ from 1 process × batch 16" in msg
    assert "loss 'mmd'" in msg
    assert "gradient of encoder.1.weight" in msg
    assert "loss 'recon'" not in msg  # the per-sample term is split-independent
    assert "batch_statistics = True" in msg


def test_a_model_marked_batch_statistics_is_reported_not_failed(capsys: pytest.CaptureFixture[str]) -> None:
    contract = type("C", (_Contract,), {"model": "toy_mmd_marked"})()
    contract.test_ddp_matches_one_process()
    assert "loss 'mmd'" in capsys.readouterr().out
