"""Losses declare their input domain; models ask for the domain they have (issue #17)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import engine
from engine.testing import plugin_manager


def half_squared(x_hat: Tensor, x: Tensor, scale: float = 0.5) -> Tensor:
    """``scale`` × squared error on images in [0, 1], summed over pixels (a third party's loss)."""
    return scale * (x_hat - x).pow(2).flatten(1).sum(1)


@dataclass(frozen=True)
class HalfSquaredConfig:
    scale: engine.PositiveFloat = 0.5
    """The factor in front of the squared error."""


def code_l2(z: Tensor, target: Tensor) -> Tensor:
    """A loss on latent features: no image model can feed it pixels."""
    return (z - target).pow(2).flatten(1).sum(1)


class ThirdPartyLosses:
    @engine.hookimpl
    def gentrain_register_losses(self, registry: engine.Registry[Any]) -> None:
        registry.add("half_squared", half_squared, HalfSquaredConfig, kind="reconstruction", domain="probabilities")
        registry.add("code_l2", code_l2, kind="reconstruction", domain="features")


def run_config(out: Path, loss: Any) -> dict[str, Any]:
    return {
        "model": {"name": "ae", "hidden": [128], "latent_dim": 16, "recon_loss": loss},
        "data": {"name": "shapes", "n": 1200, "size": 16},
        "trainer": {"epochs": 2, "batch_size": 32, "num_threads": 1},
        "run": {"output_dir": str(out), "name": "run"},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
    }


def test_third_party_loss_trains_a_built_in_model_as_well_as_the_built_in_loss(tmp_path: Path) -> None:
    # half_squared = mse / 2: under Adam (scale-invariant) the two runs should reach the same error.
    with plugin_manager(ThirdPartyLosses()):
        builtin = engine.fit(run_config(tmp_path / "mse", "mse")).metrics["val/mse"]
        third = engine.fit(run_config(tmp_path / "third", {"name": "half_squared", "scale": 0.5})).metrics["val/mse"]
    assert abs(third - builtin) <= 0.05 * builtin, (third, builtin)


def test_a_loss_of_the_wrong_domain_is_refused_naming_the_field(tmp_path: Path) -> None:
    with plugin_manager(ThirdPartyLosses()), pytest.raises(engine.ConfigError) as e:
        engine.prepare(run_config(tmp_path, "code_l2"))
    msg = str(e.value)
    assert "model.recon_loss = 'code_l2'" in msg
    assert "takes features, but this model gives logits" in msg


def test_get_loss_adapts_probabilities_to_logits_and_refuses_what_it_cannot() -> None:
    logits, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    with plugin_manager(ThirdPartyLosses()):
        adapted = engine.get_loss("half_squared", "reconstruction", takes="logits")
        assert torch.allclose(adapted(logits, x), half_squared(torch.sigmoid(logits), x))
        bce = engine.get_loss("bce", "reconstruction", takes="logits")
        assert torch.allclose(bce(logits, x), engine.get_loss("bce", "reconstruction")(logits, x))
        with pytest.raises(engine.ConfigError, match=r"model\.recon_loss = 'bce': loss 'bce' takes logits"):
            engine.get_loss("bce", "reconstruction", takes="probabilities", field="model.recon_loss")


def test_loss_parameters_come_from_config_and_are_validated(tmp_path: Path) -> None:
    with plugin_manager(ThirdPartyLosses()) as pm:
        config = engine.resolve(run_config(tmp_path, {"name": "half_squared", "scale": 2.0}), pm)
        ref = config.model.params.recon_loss
        assert ref == "half_squared"
        assert config.to_dict()["model"]["recon_loss"] == {"name": "half_squared", "scale": 2.0}
        fn = engine.get_loss(ref, "reconstruction", takes="probabilities")
        x = torch.rand(2, 1, 3, 3)
        assert torch.allclose(fn(x + 1, x), torch.full((2,), 18.0))
        with pytest.raises(engine.ConfigError) as e:
            engine.resolve(run_config(tmp_path, {"name": "half_squared", "scal": -1}), pm)
        assert "model.recon_loss.scal = -1: unknown field (did you mean 'scale'?)" in str(e.value)
        with pytest.raises(engine.ConfigError, match="loss 'mse' takes no parameters"):
            engine.resolve(run_config(tmp_path, {"name": "mse", "scale": 1}), pm)


def test_every_problem_is_reported_at_once_and_a_wrong_kind_says_so(tmp_path: Path) -> None:
    raw = run_config(tmp_path, "hinge")
    raw["model"]["latent_dim"] = 0
    raw["data"]["n"] = -5
    with plugin_manager() as pm, pytest.raises(engine.ConfigError) as e:
        engine.resolve(raw, pm)
    msg = str(e.value)
    assert "model.latent_dim = 0" in msg
    assert "model.recon_loss = 'hinge': 'hinge' is an adversarial loss, not a reconstruction loss" in msg
    assert "data.n = -5" in msg


def test_a_single_value_for_a_tuple_field_says_how_to_write_it(tmp_path: Path) -> None:
    raw = run_config(tmp_path, "mse")
    raw["model"]["hidden"] = 300
    with plugin_manager() as pm, pytest.raises(engine.ConfigError, match=r"write \[300\]"):
        engine.resolve(raw, pm)


def test_built_in_losses_declare_their_domains() -> None:
    with plugin_manager() as pm:
        domains = {e.name: e.domain for e in pm.losses}
    assert domains["bce"] == "logits"
    assert domains["mse"] == domains["l1"] == "probabilities"
    assert all(d is not None for d in domains.values()), domains


def test_the_fixture_plugins_huber_gets_one_sigmoid_in_a_built_in_model() -> None:
    """The README's `model.name=ae model.recon_loss=huber`: the sigmoid is applied once, by get_loss."""
    import torch.nn.functional as F

    with plugin_manager(autoload=True) as pm:
        if "huber" not in pm.losses:
            pytest.skip("the fixture plugin is not installed (pip install ./tests/fixtures/gentrain-tiny)")
        config = engine.resolve({"model": {"name": "ae", "recon_loss": {"name": "huber", "delta": 0.25}}}, pm)
        from plugins.ae import AE

        model = AE(config.model.params, engine.DataSpec((1, 4, 4)))
    logits, x = torch.randn(3, 1, 4, 4) * 3, torch.rand(3, 1, 4, 4)
    once = F.huber_loss(torch.sigmoid(logits), x, reduction="none", delta=0.25).flatten(1).sum(1)
    assert torch.allclose(model.recon_loss(logits, x), once)
