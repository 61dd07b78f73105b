"""The GAN's options: :class:`GANConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import engine

#: Sides a DCGAN can take: ``4·2^k`` or ``7·2^k`` for ``k ≥ 1`` (it upsamples from 4×4 or 7×7 by factors of 2).
DCGAN_BASES = (4, 7)
DCGAN_MAX_SIDE = 256

#: Penalty weight used when ``penalty_weight`` is not set (WGAN-GP's λ = 10; R1's γ = 10).
DEFAULT_PENALTY_WEIGHT = 10.0


def dcgan_layout(side: int) -> tuple[int, int] | None:
    """``(start side, number of ×2 up/down-samplings)`` of a DCGAN for square images of ``side``, or None."""
    for base in DCGAN_BASES:
        k = 1
        while base * 2**k <= min(side, DCGAN_MAX_SIDE):
            if base * 2**k == side:
                return base, k
            k += 1
    return None


@dataclass(frozen=True)
class GANConfig(engine.ModelConfig):
    """A GAN: generator ``gen`` and discriminator (critic) ``disc``, trained in two phases.

    Each step runs ``Phase("disc", repeats=n_critic)`` (a fresh batch per repeat)
    then ``Phase("gen")`` on the last batch. Optimizers are named ``"gen"`` and
    ``"disc"``; give them separate settings with
    ``optim.per_optimizer.disc.lr=4e-4`` (TTUR) and so on.

    WGAN-GP is ``loss=wasserstein, penalty=gradient_penalty, n_critic=5``;
    R1 is ``penalty=r1`` (the term added is ``penalty_weight / 2 · R1``).
    """

    arch: Literal["mlp", "dcgan"] = "mlp"
    """``mlp``: fully connected nets on flattened pixels, any image shape.
    ``dcgan``: (transposed) convolutions; square images of side 4·2^k or 7·2^k (28, 32, 64, ...)."""
    latent_dim: engine.PositiveInt = 64
    hidden: engine.PositiveInt | tuple[engine.PositiveInt, ...] = 256
    """``mlp``: width of the hidden layers, or one width per layer in the generator's order
    (``[256, 512]``: z -> 256 -> 512 -> image; the discriminator mirrors it: image -> 512 -> 256)."""
    depth: engine.PositiveInt = 2
    """``mlp``: number of hidden layers of each network when ``hidden`` is one int (a list sets its own)."""
    channels: engine.PositiveInt = 64
    """``dcgan``: channels of the discriminator's first layer (and the generator's last hidden one),
    doubled at each resolution halving."""
    refine: engine.NonNegativeInt = 0
    """``dcgan``: 3×3 stride-1 conv layers (with batch norm and ReLU) the generator adds at each of its
    resolutions (7×7 and 14×14 for MNIST), after the layer that reaches it. 0: the plain DCGAN."""
    disc_refine: engine.NonNegativeInt = 0
    """``dcgan``: 3×3 stride-1 conv layers the discriminator adds at each of its resolutions (14×14
    and 7×7 for MNIST), after the layer that reaches it. 0: the plain DCGAN."""
    disc_norm: Literal["auto", "batch", "layer", "none"] = "auto"
    """Normalisation in the discriminator. ``auto``: batch norm for ``dcgan`` without a penalty,
    layer norm for ``dcgan`` with one (a per-sample gradient penalty is wrong under batch norm),
    none for ``mlp``."""
    loss: Annotated[str, engine.LossName("adversarial")] = "nonsaturating"
    """Adversarial loss: minimax, nonsaturating, hinge, wasserstein, least_squares, or a plugin's."""
    penalty: Annotated[str | None, engine.LossName("penalty")] = None
    """Discriminator penalty: ``gradient_penalty`` (WGAN-GP), ``r1``, or a plugin's; None for none."""
    penalty_weight: engine.PositiveFloat | None = None
    """Weight of the penalty; default 10 (for ``r1`` this is γ and the term is γ/2 · R1)."""
    n_critic: engine.PositiveInt = 1
    """Discriminator updates per generator update (5 for WGAN-GP)."""
    augment: tuple[Literal["translation", "cutout"], ...] = ()
    """DiffAugment (Zhao et al. 2020): random differentiable transforms of every image the
    discriminator sees, real and generated, in both phases (``[translation, cutout]``: shifts of
    up to 1/8 of the side, and a square of half the side blanked); keeps a discriminator
    trained on a few thousand images from memorising them. Empty: off."""
    codes: engine.NonNegativeInt = 0
    """InfoGAN (Chen et al. 2016) without labels: the first ``codes`` coordinates of ``z`` choose a
    category ``c = argmax z[:codes]`` (uniform over the ``codes`` categories), fed to the generator
    as a one-hot, and a head on the discriminator's features learns to read ``c`` back from the
    generated image (``info_weight`` · cross-entropy, in both phases). A discrete code gives the
    generator a place to switch between the data's modes (MNIST's digits), where a Gaussian ``z``
    alone blends them at the boundaries. 0: off; else 2..latent_dim."""
    info_weight: engine.NonNegativeFloat = 1.0
    """Weight of the code-recovery (mutual information) term; ``codes > 0`` only."""
    conditional: bool = False
    """Feed class labels to both networks (one-hot into the generator, a projection
    discriminator); needs labelled data."""

    @property
    def resolved_penalty_weight(self) -> float:
        return DEFAULT_PENALTY_WEIGHT if self.penalty_weight is None else self.penalty_weight

    def disc_norm_for(self) -> str:
        """The discriminator normalisation ``disc_norm=auto`` stands for."""
        if self.disc_norm != "auto":
            return self.disc_norm
        if self.arch == "dcgan":
            return "layer" if self.penalty is not None else "batch"
        return "none"

    def check(self, data: engine.DataSpec) -> None:
        c, h, w = data.shape
        if self.arch == "dcgan" and (h != w or dcgan_layout(h) is None):
            raise self.fail(
                "arch",
                "dcgan",
                f"dcgan takes square images of side 4·2^k or 7·2^k up to {DCGAN_MAX_SIDE} "
                f"(e.g. 28, 32, 64), but {data.name or 'the data'} is {c}×{h}×{w}; use arch=mlp",
            )
        for field in ("refine", "disc_refine"):
            if self.arch == "mlp" and getattr(self, field):
                raise self.fail(field, getattr(self, field), "adds conv layers, so it needs arch=dcgan (0 for mlp)")
        if self.codes == 1 or self.codes > self.latent_dim:
            raise self.fail(
                "codes",
                self.codes,
                f"must be 0 (off) or 2..latent_dim ({self.latent_dim}): the code is the argmax of the first "
                "`codes` coordinates of z",
            )
        if self.conditional and not data.num_classes:
            raise self.fail(
                "conditional",
                True,
                f"needs labelled data (a dataset with classes), but {data.name or 'the data'} has none",
            )
        if self.penalty is not None and self.disc_norm == "batch":
            raise self.fail(
                "disc_norm",
                "batch",
                f"batch norm mixes samples, which breaks the per-sample penalty {self.penalty!r}; "
                "use layer, none or auto",
            )
        if self.penalty is None and self.penalty_weight is not None:
            raise self.fail("penalty_weight", self.penalty_weight, "is set but model.penalty is None; set both")
