"""The GAN plugin: every loss trains on real data, DCGAN sizing, labels, config errors.

Quality is measured without a trained classifier: the Fréchet distance between
Gaussians fitted to 8×8 average-pooled pixels of 1000 samples and of 1000
held-out shapes (rendered with a seed the training set does not use). Each
training test asserts that distance fell to at most half that of the
untrained generator (seen on this machine, trainer seed 0: ×0.15 (WGAN-GP) to
×0.31 (R1) after 5 epochs; ×0.24 for the small DCGAN after 3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F

import engine
from engine.metrics import FeatureClassifier, class_accuracy, frechet_distance
from engine.testing import ModelContract
from plugins.datasets.io import make_shapes
from plugins.gan import GAN, GANConfig
from plugins.gan.augment import cutout, diff_augment, translation
from plugins.gan.model import latent_code

MNIST_ROOT = Path("/work/shared/data/mnist")
SHAPES = {"name": "shapes", "n": 2000, "size": 32}
MNIST = {"name": "mnist", "root": str(MNIST_ROOT), "split": "test", "limit": 3000}
GAN_OPTIM = {"lr": 2e-4, "betas": [0.5, 0.999]}


def config(
    tmp_path: Path, model: dict[str, Any], *, epochs: int, optim: dict[str, Any], data: dict[str, Any] = SHAPES
) -> dict[str, Any]:
    return {
        "model": {"name": "gan", **model},
        "data": data,
        "optim": optim,
        # One thread: the machine is shared, and small nets gain nothing from two.
        "trainer": {"epochs": epochs, "batch_size": 64, "num_threads": 1},
        "run": {"output_dir": str(tmp_path), "name": "x"},
        "callbacks": {"progress": False, "tensorboard": False, "sample_every": 0},
    }


def fit(cfg: dict[str, Any]) -> tuple[GAN, GAN, engine.FitResult]:
    """``(untrained model, trained model, fit result)``; models in eval mode."""
    run_config, dataset = engine.prepare(cfg)
    torch.manual_seed(run_config.trainer.seed)
    untrained = GAN(run_config.model.params, dataset.spec).eval()
    result = engine.fit(cfg)
    assert result.checkpoint is not None
    model = GAN(run_config.model.params, dataset.spec)
    model.load_state_dict(torch.load(result.checkpoint, weights_only=True)["model"])
    return untrained, model.eval(), result


def pooled(x: torch.Tensor) -> torch.Tensor:
    """8×8 average-pooled pixels of 32×32 images, flattened: cheap features for a Fréchet distance."""
    return F.avg_pool2d(x.float(), 4).flatten(1)


@pytest.fixture(scope="module")
def held_out() -> torch.Tensor:
    images, _, _ = make_shapes(1000, 32, seed=99)  # the training set is seed 0
    return images.float() / 255


def sample_distance(model: GAN, held_out: torch.Tensor) -> float:
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        samples = model.sample(len(held_out))
    return frechet_distance(pooled(samples), pooled(held_out))


LOSSES = [
    pytest.param({"loss": "minimax"}, GAN_OPTIM, id="minimax"),
    pytest.param({"loss": "nonsaturating"}, GAN_OPTIM, id="nonsaturating"),
    pytest.param({"loss": "hinge"}, GAN_OPTIM, id="hinge"),
    pytest.param({"loss": "least_squares"}, GAN_OPTIM, id="least_squares"),
    pytest.param(
        {"loss": "wasserstein", "penalty": "gradient_penalty", "n_critic": 5},
        {"lr": 5e-4, "betas": [0.5, 0.9]},
        id="wgan-gp",
    ),
    pytest.param({"loss": "nonsaturating", "penalty": "r1"}, GAN_OPTIM, id="r1"),
]


@pytest.mark.parametrize(("model", "optim"), LOSSES)
def test_every_loss_learns_the_data(
    tmp_path: Path, held_out: torch.Tensor, model: dict[str, Any], optim: dict[str, Any]
) -> None:
    untrained, trained, result = fit(config(tmp_path, model, epochs=5, optim=optim))
    before, after = sample_distance(untrained, held_out), sample_distance(trained, held_out)
    assert after <= 0.5 * before, f"{model}: sample distance {before:.3f} -> {after:.3f}"
    for key in ("val/d_real", "val/d_fake", "val/d_loss", "val/g_loss", "train/disc/d_loss", "train/gen/g_loss"):
        assert torch.isfinite(torch.tensor(result.metrics[key])), key
    if "penalty" in model:
        assert "train/disc/penalty" in result.metrics


@pytest.mark.parametrize("augment", [[], ["translation", "cutout"]], ids=["plain", "diffaugment"])
def test_dcgan_learns_the_data(tmp_path: Path, held_out: torch.Tensor, augment: list[str]) -> None:
    model = {"arch": "dcgan", "channels": 8, "latent_dim": 32, "augment": augment}
    untrained, trained, _ = fit(config(tmp_path, model, epochs=3, optim={"lr": 1e-3, "betas": [0.5, 0.999]}))
    before, after = sample_distance(untrained, held_out), sample_distance(trained, held_out)
    assert after <= 0.5 * before, f"sample distance {before:.3f} -> {after:.3f}"  # seen: 0.19-0.27


@pytest.mark.mnist
@pytest.mark.skipif(not MNIST_ROOT.is_dir(), reason=f"MNIST files not found under {MNIST_ROOT}")
def test_conditional_samples_follow_their_labels(tmp_path: Path) -> None:
    """A classifier trained on held-out digits reads the requested label; samples of one label still vary."""
    data = {**MNIST, "limit": 7000}
    cfg = config(tmp_path, {"conditional": True}, epochs=5, optim={"lr": 1e-3, "betas": [0.5, 0.999]}, data=data)
    untrained, model, _ = fit(cfg)
    # Held-out images: MNIST's test split beyond the 7000 trained on.
    held = engine.prepare({**cfg, "data": {**MNIST, "limit": None, "val_fraction": 0.0}})[1]
    x, y = held.images[7000:].float() / 255, held.labels[7000:]
    clf = FeatureClassifier.for_dataset("mnist-heldout", x, y, 10, cache_dir=tmp_path, epochs=2)
    k, per_class = 10, 100
    labels = torch.arange(k).repeat_interleave(per_class)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        fake = model.sample(k * per_class, labels=labels)
        before = untrained.sample(k * per_class, labels=labels)
    accuracy, chance = class_accuracy(clf, fake, labels), class_accuracy(clf, before, labels)
    # Pixel std across samples of one label, averaged: what a generator that ignores z lacks.
    spread = float(fake.view(k, per_class, -1).std(1).mean())
    real_spread = float(torch.stack([x[y == c].std(0).mean() for c in range(k)]).mean())
    print(f"class accuracy {accuracy:.3f} (untrained {chance:.3f}); spread {spread:.3f} (real {real_spread:.3f})")
    # Seen: accuracy 0.56 (chance 0.10) and spread 0.093 (real 0.149) after 5 epochs; a generator that
    # turned each label into one fixed image scored spread 0.003.
    assert accuracy >= 0.35, accuracy
    assert chance <= 0.2, chance
    assert spread >= 0.4 * real_spread, (spread, real_spread)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("raise", r"non-finite loss at step \d+, epoch \d+, phase '(disc|gen)': \{'loss': (-?inf|nan)"),
        ("skip", r"training diverged: more than 100 updates skipped for non-finite losses"),
    ],
)
def test_a_diverging_gan_is_reported_not_continued(tmp_path: Path, policy: str, message: str) -> None:
    # SGD at lr 10 blows the generator up within a few steps (seen: inf or NaN within 10-20 steps).
    cfg = config(
        tmp_path,
        {"hidden": 32, "depth": 1},
        epochs=20,
        optim={"algo": "sgd", "lr": 10.0},
        data={"name": "shapes", "n": 512, "size": 16},
    )
    cfg["trainer"]["nan_policy"] = policy
    with pytest.raises(engine.TrainingError, match=message):
        engine.fit(cfg)


# -- sizing and sampling (no training) ----------------------------------------


@pytest.mark.parametrize(
    ("shape", "classes"), [((1, 28, 28), 10), ((3, 32, 32), None), ((3, 64, 64), 5), ((1, 16, 16), None)]
)
def test_dcgan_sizes_itself_from_the_data(shape: tuple[int, int, int], classes: int | None) -> None:
    spec = engine.DataSpec(shape, classes)
    gan = GAN(GANConfig(arch="dcgan", channels=4, latent_dim=8, conditional=classes is not None), spec)
    labels = torch.arange(3) % classes if classes else None
    with torch.no_grad():
        images = gan.sample(3, labels=labels)
        assert images.shape == (3, *shape)
        assert 0 <= float(images.min()) <= float(images.max()) <= 1
        assert gan.disc(images * 2 - 1, labels).shape == (3,)


@pytest.mark.parametrize("refine", [0, 1, 2])
def test_refine_adds_stride_1_convolutions_at_each_generator_resolution(refine: int) -> None:
    spec = engine.DataSpec((1, 28, 28))
    gan = GAN(GANConfig(arch="dcgan", channels=4, latent_dim=8, refine=refine), spec)
    sides = []
    x = torch.randn(2, 8)
    for m in gan.gen.net:
        x = m(x)
        if isinstance(m, torch.nn.Conv2d):
            assert m.stride == (1, 1)
            assert x.shape[1] == m.in_channels
            sides.append(x.shape[-1])
    assert sides == [7] * refine + [14] * refine  # after the 7×7 start, and after the upsampling to 14×14
    assert gan.sample(2).shape == (2, 1, 28, 28)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.stride == (1, 1) for m in gan.disc.modules())


@pytest.mark.parametrize("disc_refine", [0, 1, 2])
def test_disc_refine_adds_stride_1_convolutions_at_each_discriminator_resolution(disc_refine: int) -> None:
    spec = engine.DataSpec((1, 28, 28))
    gan = GAN(GANConfig(arch="dcgan", channels=4, latent_dim=8, disc_refine=disc_refine), spec)
    sides = []
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    for m in gan.disc.body:
        x = m(x)
        if isinstance(m, torch.nn.Conv2d) and m.stride == (1, 1):
            assert x.shape[1] == m.in_channels
            sides.append(x.shape[-1])
    assert sides == [14] * disc_refine + [7] * disc_refine
    assert gan.disc(x.new_zeros(2, 1, 28, 28)).shape == (2,)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.stride == (1, 1) for m in gan.gen.modules())


def test_mlp_takes_any_shape() -> None:
    gan = GAN(GANConfig(hidden=16), engine.DataSpec((3, 20, 12)))
    assert gan.sample(2).shape == (2, 3, 20, 12)


def test_critic_has_no_batch_norm_under_a_gradient_penalty() -> None:
    spec = engine.DataSpec((1, 32, 32))
    plain = GAN(GANConfig(arch="dcgan", channels=4), spec)
    gp = GAN(GANConfig(arch="dcgan", channels=4, loss="wasserstein", penalty="gradient_penalty"), spec)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.disc.modules())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in gp.disc.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gp.disc.modules())


def _uniform(seed: int) -> Callable[..., torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda n, *shape: torch.rand(n, *shape, generator=gen)


def test_translation_moves_each_image_by_at_most_an_eighth_of_its_side() -> None:
    x = torch.full((200, 1, 28, 28), -1.0)
    x[:, 0, 14, 14] = 1.0  # one lit pixel per image
    shifted = translation(x, _uniform(0))
    lit = (shifted[:, 0] > 0).nonzero()
    assert torch.equal(lit[:, 0], torch.arange(200)), "every image keeps its one pixel"
    offsets = lit[:, 1:] - 14
    assert int(offsets.abs().max()) == 4  # int(28 / 8 + 0.5), reached within 200 draws
    assert len({tuple(o) for o in offsets.tolist()}) > 40, "shifts vary per image"
    assert bool((shifted[shifted <= 0] == -1.0).all()), "the rest stays background"


def test_cutout_blanks_one_square_of_half_the_side() -> None:
    holes = cutout(torch.ones(200, 1, 28, 28), _uniform(1)) < 0
    sizes = holes.sum((1, 2, 3))
    assert int(sizes.max()) == 14 * 14
    assert int(sizes.min()) > 0  # clipped where the square leaves the image
    rows, cols = holes[:, 0].any(2), holes[:, 0].any(1)
    assert bool((holes[:, 0] == (rows[:, :, None] & cols[:, None, :])).all()), "the hole is a rectangle"


def test_diff_augment_is_differentiable_and_fixed_by_its_noise() -> None:
    x = torch.rand(8, 1, 28, 28, requires_grad=True)
    policy = ("translation", "cutout")
    out = diff_augment(x * 2 - 1, policy, _uniform(2))
    assert torch.equal(out, diff_augment(x.detach() * 2 - 1, policy, _uniform(2)))
    out.sum().backward()
    assert x.grad is not None
    assert 0 < float(x.grad.abs().sum()) < x.numel() * 2  # blanked pixels pass no gradient


def test_the_discriminator_sees_augmented_images_in_both_phases() -> None:
    seen: list[torch.Tensor] = []
    gan = GAN(GANConfig(hidden=16, augment=("cutout",)), engine.DataSpec((1, 8, 8)))
    gan.disc.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    batch = (torch.ones(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))  # all-white images
    gan.training_step(batch, "disc")
    gan.training_step(batch, "gen")
    real, fake, gen_fake = seen
    assert bool((real == -1).any()), "real images arrive with a blanked square"
    assert bool((real == 1).any())
    for x in (fake, gen_fake):
        assert bool((x == -1).flatten(1).any(1).all()), "generated ones too (tanh never reaches -1 itself)"
    gan.validation_step(batch)
    assert bool((seen[-2] == 1).all()), "validation shows the discriminator the images as they are"


def test_the_latent_code_is_uniform_and_chosen_by_z_alone() -> None:
    z = torch.randn(20_000, 16, generator=torch.Generator().manual_seed(0))
    share = torch.bincount(latent_code(z, 10), minlength=10).double() / len(z)
    assert float((share - 0.1).abs().max()) < 0.01  # binomial sd 0.002
    gan = GAN(GANConfig(hidden=16, latent_dim=4, codes=3), engine.DataSpec((1, 8, 8))).eval()
    z = torch.zeros(2, 4)
    z[0, 0], z[1, 1] = 1.0, 1.0  # the same latent but for which of the first 3 coordinates is largest
    a, b = gan.sample(2, z=z)
    assert not torch.equal(a, b), "the generator sees the code"
    assert torch.equal(gan.sample(2, z=z), torch.stack([a, b])), "and nothing random besides z"


class TestInfoGANContract(ModelContract):
    """The model contract (finite losses, every phase learns, DDP on 2 ranks = 1 process) with a code head."""

    model = "gan"
    overrides: ClassVar[dict[str, Any]] = {"codes": 3, "hidden": 16}


def test_the_discriminator_learns_to_read_the_code_back(tmp_path: Path, held_out: torch.Tensor) -> None:
    untrained, trained, result = fit(config(tmp_path, {"codes": 3, "latent_dim": 16}, epochs=5, optim=GAN_OPTIM))
    # ln 3 = 1.10 is the cross-entropy of a head that cannot tell the codes apart.
    assert result.metrics["val/info_loss"] < 0.2, result.metrics["val/info_loss"]
    assert result.metrics["train/gen/info_loss"] < 0.2
    before, after = sample_distance(untrained, held_out), sample_distance(trained, held_out)
    assert after <= 0.5 * before, f"sample distance {before:.3f} -> {after:.3f}"


def test_phases_and_optimizers() -> None:
    gan = GAN(GANConfig(n_critic=5), engine.DataSpec((1, 8, 8)))
    assert [(p.name, p.optimizer_name, p.repeats, p.new_batch) for p in gan.phases()] == [
        ("disc", "disc", 5, True),
        ("gen", "gen", 1, False),
    ]
    groups = {name: {id(p) for p in params} for name, params in gan.param_groups().items()}
    assert groups == {"gen": {id(p) for p in gan.gen.parameters()}, "disc": {id(p) for p in gan.disc.parameters()}}
    assert set(gan.ddp_modules()) == {"gen", "disc"}


def test_discriminator_phase_builds_no_generator_graph() -> None:
    gan = GAN(GANConfig(hidden=16), engine.DataSpec((1, 8, 8)))
    batch = (torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    gan.training_step(batch, "disc")["loss"].backward()
    assert all(p.grad is None for p in gan.gen.parameters())
    assert all(p.grad is not None for p in gan.disc.parameters())


def test_sample_noise_is_fixed_by_the_seed_or_given() -> None:
    gan = GAN(GANConfig(hidden=16, latent_dim=4, conditional=True), engine.DataSpec((1, 8, 8), 3)).eval()
    torch.manual_seed(0)
    a = gan.sample(6)
    torch.manual_seed(0)
    assert torch.equal(a, gan.sample(6))
    z = torch.randn(6, 4)
    assert torch.equal(gan.sample(6, labels=torch.arange(6) % 3, z=z), gan.sample(6, z=z))
    assert not torch.equal(gan.sample(6, labels=torch.zeros(6, dtype=torch.long), z=z), gan.sample(6, z=z))


# -- configuration errors -----------------------------------------------------


def test_n_critic_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError) as err:
        engine.fit(config(tmp_path, {"n_critic": 0}, epochs=1, optim=GAN_OPTIM))
    assert [p[0] for p in err.value.problems] == ["model.n_critic"]
    assert "greater than 0" in str(err.value)


def test_unknown_loss_suggests_the_close_name(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError) as err:
        engine.fit(config(tmp_path, {"loss": "hinje"}, epochs=1, optim=GAN_OPTIM))
    assert err.value.problems[0][0] == "model.loss"
    assert "'hinge'" in str(err.value)


def test_a_reconstruction_loss_is_not_an_adversarial_one(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.loss"):
        engine.fit(config(tmp_path, {"loss": "mse"}, epochs=1, optim=GAN_OPTIM))


@pytest.mark.parametrize("shape", [(1, 28, 30), (3, 30, 30), (1, 48, 48)])
def test_dcgan_refuses_shapes_it_cannot_take(shape: tuple[int, int, int]) -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.arch = 'dcgan'.*4·2\^k or 7·2\^k") as err:
        GANConfig(arch="dcgan").check(engine.DataSpec(shape, name="odd"))
    assert "×".join(map(str, shape)) in str(err.value)


def test_conditional_needs_labelled_data() -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.conditional = True: needs labelled data"):
        GANConfig(conditional=True).check(engine.DataSpec((1, 28, 28), num_classes=None))
    GANConfig(conditional=True).check(engine.DataSpec((1, 28, 28), num_classes=10))


def test_an_unknown_augmentation_names_the_field_and_the_choices(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError) as err:
        engine.fit(config(tmp_path, {"augment": ["translation", "flip"]}, epochs=1, optim=GAN_OPTIM))
    assert str(err.value) == "invalid config: model.augment.1 = 'flip': must be 'translation' or 'cutout'"


@pytest.mark.parametrize("codes", [1, 65])
def test_a_code_needs_two_categories_and_fits_in_z(tmp_path: Path, codes: int) -> None:
    with pytest.raises(engine.ConfigError) as err:
        engine.fit(config(tmp_path, {"codes": codes}, epochs=1, optim=GAN_OPTIM))
    assert str(err.value).startswith(
        f"invalid config: model.codes = {codes}: must be 0 (off) or 2..latent_dim (64): the code is the argmax"
    )


def test_batch_norm_critic_with_a_penalty_is_refused() -> None:
    with pytest.raises(engine.ConfigError, match=r"model\.disc_norm"):
        GANConfig(disc_norm="batch", penalty="r1").check(engine.DataSpec((1, 32, 32)))
    with pytest.raises(engine.ConfigError, match=r"model\.penalty_weight"):
        GANConfig(penalty_weight=5.0).check(engine.DataSpec((1, 32, 32)))


@pytest.mark.parametrize("field", ["refine", "disc_refine"])
def test_conv_refinement_is_refused_for_the_mlp(tmp_path: Path, field: str) -> None:
    with pytest.raises(engine.ConfigError) as err:
        engine.fit(config(tmp_path, {"arch": "mlp", field: 1}, epochs=1, optim=GAN_OPTIM))
    assert str(err.value) == f"invalid config: model.{field} = 1: adds conv layers, so it needs arch=dcgan (0 for mlp)"
