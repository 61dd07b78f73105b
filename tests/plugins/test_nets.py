"""Per-layer MLP widths of the GAN and AE-GAN (``hidden: [256, 512]``), and a plain int still working."""

from __future__ import annotations

import pytest
from torch import nn

import engine
from plugins.aegan import AEGAN, AEGANConfig
from plugins.gan import GAN, GANConfig
from plugins.nets import layer_widths

SPEC = engine.DataSpec(shape=(1, 28, 28), num_classes=10)


def linear_widths(module: nn.Module) -> list[int]:
    return [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]


def test_layer_widths_from_an_int_or_a_list() -> None:
    assert layer_widths(256, 2) == [256, 256]
    assert layer_widths((128, 512), 2) == [128, 512]
    with pytest.raises(ValueError, match="at least one"):
        layer_widths((), 2)


def test_gan_widths_per_layer_and_the_discriminator_mirrors_them() -> None:
    gan = GAN(GANConfig(hidden=(128, 256)), SPEC)
    assert linear_widths(gan.gen) == [128, 256, 784]
    assert linear_widths(gan.disc.body) == [256, 128]
    assert linear_widths(GAN(GANConfig(hidden=64, depth=3), SPEC).gen) == [64, 64, 64, 784]


def test_aegan_widths_per_layer_in_encoder_order() -> None:
    model = AEGAN(AEGANConfig(hidden=(512, 256), latent_dim=8), SPEC)
    assert linear_widths(model.encoder) == [512, 256, 8]
    assert linear_widths(model.decoder) == [256, 512, 784]


def test_widths_come_from_config_and_overrides(tmp_path: object) -> None:
    base = {"data": {"name": "shapes", "n": 640, "size": 16}, "run": {"name": "t", "output_dir": str(tmp_path)}}
    config, _ = engine.prepare({**base, "model": {"name": "gan", "hidden": [32, 64]}})
    assert config.model.params.hidden == (32, 64)
    config, _ = engine.prepare({**base, "model": {"name": "aegan"}}, ["model.hidden=[16,32,8]"])
    assert config.model.params.hidden == (16, 32, 8)
    with pytest.raises(engine.ConfigError, match=r"model\.hidden"):
        engine.prepare({**base, "model": {"name": "gan", "hidden": [0]}})
