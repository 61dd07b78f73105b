"""The ``ae`` plugin: every variant trains on real (procedural) images through ``engine.fit``.

Each training test measures the untrained model (the same initial weights the
loop builds, from the same seed) on the same held-out images the run
validates on, and asserts the trained figure is a stated fraction of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import engine
from engine import checkpoint
from engine.data import ImageData, split, to_float
from plugins.ae import AE, AEConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Two cores shared with other jobs: one thread is faster than contending for both.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_config(out: Path, model: dict[str, Any], **trainer: Any) -> dict[str, Any]:
    return {
        "model": {"name": "ae", "hidden": [256], "latent_dim": 16, **model},
        "data": {"name": "shapes", "n": 2000, "size": 32},
        "trainer": {"epochs": 2, "batch_size": 32, "num_threads": 1, **trainer},
        "run": {"output_dir": str(out), "name": "run"},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
    }


def evaluate(model: AE, images: Tensor, batch_size: int = 100) -> dict[str, float]:
    """``validation_step`` averaged over ``images`` (what the loop reports as ``val/...``)."""
    sums: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_float(images[start : start + batch_size])
            for k, v in model.validation_step((x, torch.zeros(len(x), dtype=torch.long))).items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(x)
    return {k: v / len(images) for k, v in sums.items()}


class Trained:
    """A finished run: its metrics, the held-out images, the untrained and the trained model."""

    def __init__(self, config: dict[str, Any]) -> None:
        run_config, dataset = engine.prepare(config)
        train_set, val_set = split(dataset, run_config.data)
        self.train_set: ImageData = train_set
        self.val_images = val_set.images
        torch.manual_seed(run_config.trainer.seed)  # the loop's seed: the same initial weights
        untrained = AE(run_config.model.params, dataset.spec)
        self.before = evaluate(untrained, self.val_images)
        result = engine.fit(config)
        self.metrics = result.metrics
        assert result.checkpoint is not None
        self.model = AE(run_config.model.params, dataset.spec)
        self.model.load_state_dict(checkpoint.load(result.checkpoint)["model"])
        self.model.eval()

    def mean_image_mse(self) -> float:
        """Squared error of always answering the training set's mean image: what a useless AE gets."""
        mean = to_float(self.train_set.images).mean(0)
        return float((to_float(self.val_images) - mean).pow(2).flatten(1).sum(1).mean())


@pytest.fixture(scope="module")
def plain_ae(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(run_config(tmp_path_factory.mktemp("ae"), {}))


def jacobian_norm(model: AE, images: Tensor, projections: int = 64) -> float:
    """E‖∂z/∂x‖²_F on ``images``, by the registered Hutchinson estimator with many projections."""
    torch.manual_seed(0)
    penalty = engine.get_loss("contractive", "penalty")
    return float(penalty(model.encoder, to_float(images), n_projections=projections).detach())


# --------------------------------------------------------------------------- training on real data


def test_plain_ae_learns_to_reconstruct(plain_ae: Trained) -> None:
    m = plain_ae.metrics
    assert m["val/recon"] <= 0.2 * plain_ae.before["recon"]
    # Better than the mean image by far: the codes carry each image's content.
    assert m["val/mse"] <= 0.5 * plain_ae.mean_image_mse()
    assert m["val/mse"] <= 0.5 * plain_ae.before["mse"]


def test_conv_ae_learns_to_reconstruct(tmp_path: Path) -> None:
    run = Trained(run_config(tmp_path, {"arch": "conv", "conv_width": 16}))
    assert run.metrics["val/recon"] <= 0.2 * run.before["recon"]
    assert run.metrics["val/mse"] <= 0.5 * run.mean_image_mse()


@pytest.mark.parametrize(("noise", "level"), [("gaussian", 0.2), ("mask", 0.3)])
def test_denoising_ae_learns_to_remove_its_noise(tmp_path: Path, noise: str, level: float) -> None:
    run = Trained(run_config(tmp_path, {"noise": noise, "noise_level": level}))
    # Validation encodes clean images.
    assert run.metrics["val/recon"] <= 0.25 * run.before["recon"]
    assert run.metrics["val/mse"] <= 0.75 * run.mean_image_mse()
    # From corrupted held-out images it recovers the clean originals' content:
    # far closer to them than the best content-free answer, the mean image.
    x = to_float(run.val_images)
    torch.manual_seed(1)
    with torch.no_grad():
        restored = run.model.reconstruct(run.model.corrupt(x))
    assert float((restored - x).pow(2).flatten(1).sum(1).mean()) <= 0.75 * run.mean_image_mse()


def test_contractive_ae_learns_and_contracts(tmp_path: Path, plain_ae: Trained) -> None:
    run = Trained(run_config(tmp_path, {"contractive_weight": 1.0}))
    assert run.metrics["val/recon"] <= 0.25 * run.before["recon"]
    assert "train/contractive" in run.metrics
    # The penalty makes the encoder flatter around the data than the plain AE's.
    assert jacobian_norm(run.model, run.val_images) <= 0.5 * jacobian_norm(plain_ae.model, plain_ae.val_images)


# --------------------------------------------------------------------------- the parts


def tiny_ae(**over: Any) -> AE:
    config = AEConfig(hidden=(5,), latent_dim=3, **over)
    torch.manual_seed(0)
    return AE(config, engine.DataSpec((1, 2, 3)))


def test_contractive_penalty_is_the_jacobian_frobenius_norm_in_expectation() -> None:
    model = tiny_ae(contractive_weight=0.5, contractive_projections=4000)
    x = torch.rand(4, 1, 2, 3)
    exact = torch.stack([torch.autograd.functional.jacobian(model.encoder, xi[None]).pow(2).sum() for xi in x]).mean()
    torch.manual_seed(1)
    out = model.training_step((x, torch.zeros(4, dtype=torch.long)), "train")
    got = {k: v.item() for k, v in out.items()}
    assert got["contractive"] == pytest.approx(float(exact), rel=0.05)
    assert got["loss"] == pytest.approx(got["recon"] + 0.5 * got["contractive"], rel=1e-6)
    # The penalty is differentiable in the weights (double backward through the VJP).
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.encoder.parameters())


def test_denoising_corrupts_the_input_and_keeps_the_target_clean() -> None:
    # Masking every pixel: the encoder sees zeros whatever x is ...
    model = tiny_ae(noise="mask", noise_level=1.0)
    x = torch.rand(6, 1, 2, 3)
    assert torch.equal(model.corrupt(x), torch.zeros_like(x))
    loss = model.training_step((x, torch.zeros(6, dtype=torch.long)), "train")["loss"].item()
    # ... and the loss compares the reconstruction of zeros with the clean x.
    logits = model.decode(model.encode(torch.zeros_like(x)))
    assert loss == pytest.approx(model.recon_loss(logits, x).mean().item(), rel=1e-6)


def test_noise_has_the_configured_strength() -> None:
    torch.manual_seed(0)
    x = torch.full((200, 1, 2, 3), 0.5)
    masked = tiny_ae(noise="mask", noise_level=0.3).corrupt(x)
    assert float((masked == 0).double().mean()) == pytest.approx(0.3, abs=0.05)
    gaussian = tiny_ae(noise="gaussian", noise_level=0.1).corrupt(x)
    assert float((gaussian - x).std()) == pytest.approx(0.1, rel=0.1)
    assert gaussian.min() >= 0
    assert gaussian.max() <= 1
    assert torch.equal(tiny_ae().corrupt(x), x)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 32, 32), (3, 32, 32), (1, 64, 64), (1, 20, 20)])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_shapes_and_ranges(arch: str, shape: tuple[int, int, int]) -> None:
    config = AEConfig(arch=arch, latent_dim=4, hidden=(16,), conv_width=4)  # type: ignore[arg-type]
    spec = engine.DataSpec(shape)
    config.check(spec)
    model = AE(config, spec)
    x = torch.rand(3, *shape)
    z = model.encode(x)
    assert z.shape == (3, 4)
    assert model.decode(z).shape == (3, *shape)
    for images in (model.reconstruct(x), model.sample(5)):
        assert images.shape[1:] == shape
        assert images.min() >= 0
        assert images.max() <= 1
    metrics = model.validation_step((x, torch.zeros(3, dtype=torch.long)))
    assert set(metrics) == {"recon", "mse"}


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_non_logit_losses_get_images_in_unit_range(loss: str) -> None:
    model = tiny_ae(recon_loss=loss)
    x = torch.rand(2, 1, 2, 3)
    logits = torch.randn(2, 1, 2, 3) * 5
    expected = engine.get_loss(loss, "reconstruction")(torch.sigmoid(logits), x)
    assert torch.allclose(model.recon_loss(logits, x), expected)


# --------------------------------------------------------------------------- bad configs


def test_latent_dim_zero_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.latent_dim") as info:
        engine.fit(run_config(tmp_path, {"latent_dim": 0}))
    assert info.value.problems[0][:2] == ("model.latent_dim", 0)


def test_unknown_recon_loss_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.recon_loss") as info:
        engine.fit(run_config(tmp_path, {"recon_loss": "bec"}))
    assert "did you mean 'bce'" in str(info.value)


def test_mask_noise_above_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.noise_level"):
        engine.fit(run_config(tmp_path, {"noise": "mask", "noise_level": 1.5}))


@pytest.mark.parametrize("shape", [(1, 28, 20), (1, 36, 36), (1, 6, 6)])
def test_conv_arch_refuses_images_it_cannot_handle(shape: tuple[int, int, int]) -> None:
    config = AEConfig(arch="conv")
    with pytest.raises(engine.ConfigError, match=r"model\.arch") as info:
        config.check(engine.DataSpec(shape))
    assert "×".join(map(str, shape)) in str(info.value)
    AEConfig(arch="mlp").check(engine.DataSpec(shape))  # the MLP takes any shape
