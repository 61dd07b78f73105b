"""Configs of the autoencoder family; :class:`ArchConfig` is shared with the VAE plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import engine

MIN_BASE, MAX_BASE = 3, 7
"""The conv encoder halves the image side until it is at most ``MAX_BASE`` pixels."""


def conv_geometry(shape: tuple[int, int, int]) -> tuple[int, int] | None:
    """``(number of stride-2 layers, final side)`` of the conv arch on ``C×H×W`` images, or ``None``.

    The side is halved while it is even and larger than 7, so 28 -> 14 -> 7
    (2 layers), 32 -> 16 -> 8 -> 4 (3 layers), 64 -> 4 (4 layers). Images that
    are not square, smaller than 8 pixels or do not halve down to 3..7 pixels
    (e.g. 36 -> 18 -> 9) are refused.
    """
    _, h, w = shape
    if h != w or h < 2 * MIN_BASE:
        return None
    side, layers = h, 0
    while side > MAX_BASE and side % 2 == 0:
        side //= 2
        layers += 1
    if layers == 0 or not MIN_BASE <= side <= MAX_BASE:
        return None
    return layers, side


@dataclass(frozen=True)
class ArchConfig(engine.ModelConfig):
    """The encoder/decoder shape and the reconstruction loss, shared by AE and VAE."""

    arch: Literal["mlp", "conv"] = "mlp"
    """``mlp``: fully connected layers of sizes ``hidden``; ``conv``: stride-2 convolutions sized from the image."""
    latent_dim: engine.PositiveInt = 20
    hidden: tuple[engine.PositiveInt, ...] = (400,)
    """MLP hidden sizes, encoder order (the decoder mirrors them); the default is the VAE paper's 784-400-20."""
    conv_width: engine.PositiveInt = 32
    """Channels of the first conv layer; each further stride-2 layer doubles them (at most 8×)."""
    recon_loss: Annotated[str, engine.LossName("reconstruction", takes="logits")] = "bce"
    """A registered reconstruction loss, by its domain: the decoder outputs logits, so a
    ``logits`` loss (``bce``) gets them as they are and a ``probabilities`` loss (``mse``,
    ``l1``) gets ``sigmoid(logits)``, images in ``[0, 1]``; ``{name: ..., <param>: ...}``
    passes the loss its own parameters."""

    def check(self, data: engine.DataSpec) -> None:
        if self.arch == "conv" and conv_geometry(data.shape) is None:
            c, h, w = data.shape
            raise self.fail(
                "arch",
                self.arch,
                f"needs square images whose side halves down to {MIN_BASE}..{MAX_BASE} pixels "
                f"(e.g. 28, 32, 64), but {data.name or 'the data'} has {c}×{h}×{w} images; use arch=mlp",
            )


@dataclass(frozen=True)
class AEConfig(ArchConfig):
    """A deterministic autoencoder, optionally denoising and/or contractive."""

    noise: Literal["none", "gaussian", "mask"] = "none"
    """Denoising: corrupt the encoder's input during training (the target stays clean).
    ``gaussian`` adds ``noise_level``·N(0, 1) and clips to ``[0, 1]``; ``mask`` zeroes each
    pixel with probability ``noise_level``."""
    noise_level: engine.NonNegativeFloat = 0.3
    contractive_weight: engine.NonNegativeFloat = 0.0
    """λ of the contractive penalty λ·E‖∂z/∂x‖²_F (0 turns it off)."""
    contractive_projections: engine.PositiveInt = 1
    """Random projections of the penalty's Hutchinson estimate per step."""

    def check(self, data: engine.DataSpec) -> None:
        super().check(data)
        if self.noise == "mask" and self.noise_level > 1:
            raise self.fail("noise_level", self.noise_level, "is a probability with noise=mask: between 0 and 1")
