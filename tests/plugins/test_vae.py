"""The ``vae`` plugin: every variant trains on real images through ``engine.fit``.

Each training test measures the untrained model (the same initial weights the
loop builds, from the same seed) on the same held-out images the run
validates on, and asserts the trained figure is a stated fraction of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import engine
from engine import checkpoint, metrics
from engine.data import split, to_float
from plugins.vae import VAE, VAEConfig

MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Two cores shared with other jobs: one thread is faster than contending for both.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_config(out: Path, model: dict[str, Any], data: dict[str, Any] | None = None, **trainer: Any) -> dict[str, Any]:
    return {
        "model": {"name": "vae", **model},
        "data": data or {"name": "shapes", "n": 2000, "size": 32},
        "trainer": {"epochs": 2, "batch_size": 32, "num_threads": 1, **trainer},
        "run": {"output_dir": str(out), "name": "run"},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
    }


def evaluate(model: VAE, images: Tensor, batch_size: int = 100) -> dict[str, float]:
    """``validation_step`` averaged over ``images`` (what the loop reports as ``val/...``)."""
    sums: dict[str, float] = {}
    model.eval()
    torch.manual_seed(0)
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
        _, val_set = split(dataset, run_config.data)
        self.val_images = val_set.images
        torch.manual_seed(run_config.trainer.seed)  # the loop's seed: the same initial weights
        self.before = evaluate(VAE(run_config.model.params, dataset.spec), self.val_images)
        result = engine.fit(config)
        self.metrics = result.metrics
        assert result.checkpoint is not None
        self.state = checkpoint.load(result.checkpoint)
        self.model = VAE(run_config.model.params, dataset.spec)
        self.model.load_state_dict(self.state["model"])
        self.model.eval()


@pytest.fixture(scope="module")
def plain_vae(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(run_config(tmp_path_factory.mktemp("vae"), {}))


# --------------------------------------------------------------------------- training on real data


def test_vae_learns(plain_vae: Trained) -> None:
    m = plain_vae.metrics
    assert m["val/elbo"] <= 0.3 * plain_vae.before["elbo"]
    assert m["val/elbo"] == pytest.approx(m["val/recon"] + m["val/kl"], rel=1e-6)
    assert m["val/kl"] > 1.0, "the posterior must carry information about the image"


def test_beta_vae_trades_kl_for_reconstruction(tmp_path: Path, plain_vae: Trained) -> None:
    run = Trained(run_config(tmp_path, {"beta": 4.0}))
    assert run.metrics["val/elbo"] <= 0.4 * run.before["elbo"]
    assert run.metrics["train/beta"] == 4.0
    # A heavier KL weight squeezes the posterior towards the prior.
    assert run.metrics["val/kl"] <= 0.7 * plain_vae.metrics["val/kl"]
    assert run.metrics["val/recon"] > plain_vae.metrics["val/recon"]


def test_conv_vae_learns(tmp_path: Path) -> None:
    run = Trained(run_config(tmp_path, {"arch": "conv", "conv_width": 16}))
    assert run.metrics["val/elbo"] <= 0.3 * run.before["elbo"]


WARMUP = 80  # of 2 epochs × 56 steps


@pytest.fixture(scope="module")
def warmup_vae(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    return Trained(run_config(tmp_path_factory.mktemp("warmup"), {"kl_warmup_steps": WARMUP}))


def test_kl_warmup_ramps_beta_and_counts_steps_in_the_checkpoint(warmup_vae: Trained) -> None:
    run = warmup_vae
    assert run.metrics["val/elbo"] <= 0.3 * run.before["elbo"]
    steps = int(run.metrics["step"])
    assert int(run.state["model"]["train_steps"]) == steps == 112
    # train/beta is the epoch's mean of min(1, t/W) over its steps t = 56..111.
    expected = sum(min(1.0, t / WARMUP) for t in range(56, 112)) / 56
    assert run.metrics["train/beta"] == pytest.approx(expected, rel=1e-6)


def test_kl_warmup_resumes_where_it_stopped(tmp_path: Path, warmup_vae: Trained) -> None:
    first = engine.fit(run_config(tmp_path, {"kl_warmup_steps": WARMUP}, epochs=1))
    assert first.checkpoint is not None
    assert int(checkpoint.load(first.checkpoint)["model"]["train_steps"]) == 56
    config = run_config(tmp_path, {"kl_warmup_steps": WARMUP})
    config["run"]["resume"] = "must"  # the same run name, continued from its checkpoint
    resumed = engine.fit(config)
    assert resumed.checkpoint is not None
    assert int(checkpoint.load(resumed.checkpoint)["model"]["train_steps"]) == 112
    assert resumed.metrics["train/beta"] == pytest.approx(warmup_vae.metrics["train/beta"], rel=1e-6)
    assert resumed.metrics["val/elbo"] == pytest.approx(warmup_vae.metrics["val/elbo"], rel=1e-4)


@pytest.mark.mnist
@pytest.mark.skipif(not MNIST.is_dir(), reason=f"the MNIST test set is not at {MNIST}")
def test_vae_learns_mnist(tmp_path: Path) -> None:
    data = {"name": "mnist", "root": str(MNIST), "split": "test", "limit": 2000}
    run = Trained(run_config(tmp_path, {}, data=data))
    assert run.metrics["val/elbo"] <= 0.5 * run.before["elbo"]


def test_iwae_bound_of_the_trained_vae_is_tighter_than_its_elbo(plain_vae: Trained) -> None:
    images = plain_vae.val_images[:100]
    neg_elbo = metrics.elbo(plain_vae.model, images, samples=8)
    iwae1 = metrics.iwae_bound(plain_vae.model, images, k=1, seed=1)
    iwae50 = metrics.iwae_bound(plain_vae.model, images, k=50)
    assert all(math.isfinite(v) for v in (neg_elbo, iwae1, iwae50))
    assert iwae1 == pytest.approx(neg_elbo, rel=0.03)
    assert iwae50 <= neg_elbo + 0.5
    blank_error = float(to_float(images).pow(2).sum((1, 2, 3)).mean())  # reconstructing all-black
    assert metrics.reconstruction_error(plain_vae.model, images) < 0.5 * blank_error


# --------------------------------------------------------------------------- the parts


def tiny_vae(**over: Any) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(hidden=(8,), latent_dim=3, **over), engine.DataSpec((1, 2, 3)))


def test_kl_weight_ramps_linearly_and_is_state() -> None:
    model = tiny_vae(beta=2.0, kl_warmup_steps=10)
    weights = []
    for t in (0, 5, 10, 20):
        model.train_steps.fill_(t)
        weights.append(model.kl_weight().item())
    assert weights == pytest.approx([0.0, 1.0, 2.0, 2.0])
    model.train_steps.zero_()
    batch = (torch.rand(4, 1, 2, 3), torch.zeros(4, dtype=torch.long))
    assert [model.training_step(batch, "train")["beta"].item() for _ in range(3)] == pytest.approx([0.0, 0.2, 0.4])
    assert int(model.state_dict()["train_steps"]) == 3
    assert tiny_vae(beta=3.0).kl_weight().item() == 3.0


def test_training_loss_is_nll_plus_beta_kl() -> None:
    model = tiny_vae(beta=0.5)
    batch = (torch.rand(5, 1, 2, 3), torch.zeros(5, dtype=torch.long))
    out = {k: v.item() for k, v in model.training_step(batch, "train").items()}
    assert out["loss"] == pytest.approx(out["recon"] + 0.5 * out["kl"], rel=1e-6)


def test_log_likelihood_is_the_normalised_density() -> None:
    logits = torch.randn(4, 1, 2, 3)
    x_bin = torch.randint(0, 2, (4, 1, 2, 3)).float()
    x = torch.rand(4, 1, 2, 3)
    mean = torch.sigmoid(logits)
    cases = [
        ("bce", x_bin, torch.distributions.Bernoulli(logits=logits).log_prob(x_bin)),
        ("mse", x, torch.distributions.Normal(mean, 1.0).log_prob(x)),
        ("l1", x, torch.distributions.Laplace(mean, 1.0).log_prob(x)),
    ]
    for loss, target, expected in cases:
        got = tiny_vae(recon_loss=loss).log_likelihood(target, logits)
        assert torch.allclose(got, expected.flatten(1).sum(1), atol=1e-5), loss


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_shapes_and_ranges(arch: str) -> None:
    spec = engine.DataSpec((3, 32, 32))
    model = VAE(VAEConfig(arch=arch, latent_dim=5, hidden=(16,), conv_width=4), spec)  # type: ignore[arg-type]
    x = torch.rand(3, 3, 32, 32)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 5)
    assert model.decode(mu).shape == (3, 3, 32, 32)
    assert model.log_likelihood(x, model.decode(mu)).shape == (3,)
    for images in (model.reconstruct(x), model.sample(4)):
        assert images.shape[1:] == (3, 32, 32)
        assert images.min() >= 0
        assert images.max() <= 1
    assert set(model.validation_step((x, torch.zeros(3, dtype=torch.long)))) == {"elbo", "recon", "kl"}


def test_default_is_the_papers_784_400_20_mlp() -> None:
    model = VAE(VAEConfig(), engine.DataSpec((1, 28, 28)))
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 400), (400, 40)]


# --------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("field", "value"), [("latent_dim", 0), ("beta", -1.0), ("kl_warmup_steps", -5), ("hidden", [400, 0])]
)
def test_bad_values_are_refused_by_name(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(engine.ConfigError, match=rf"model\.{field}"):
        engine.fit(run_config(tmp_path, {field: value}))


def test_unknown_recon_loss_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.recon_loss") as info:
        engine.fit(run_config(tmp_path, {"recon_loss": "bec"}))
    assert "did you mean 'bce'" in str(info.value)


def test_conv_arch_refuses_non_square_images() -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.arch.*28×20"):
        VAEConfig(arch="conv").check(engine.DataSpec((1, 28, 20)))
