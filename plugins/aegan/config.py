"""The AE-GAN's options: :class:`AEGANConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import engine

#: Sides the conv nets take: ``4·2^k`` or ``7·2^k`` for ``k ≥ 1`` (28, 32, 64, ...).
CONV_BASES = (4, 7)
CONV_MAX_SIDE = 256


def conv_layout(side: int) -> tuple[int, int] | None:
    """``(smallest side, number of ×2 resamplings)`` of the conv nets for square images of ``side``, or None."""
    for base in CONV_BASES:
        k = 1
        while base * 2**k <= min(side, CONV_MAX_SIDE):
            if base * 2**k == side:
                return base, k
            k += 1
    return None


@dataclass(frozen=True)
class AEGANConfig(engine.ModelConfig):
    """An autoencoder trained with an adversary: VAE-GAN, adversarial autoencoder and friends.

    The ``ae`` phase updates the encoder and decoder (optimizer ``"ae"``) on

        rec_weight · reconstruction + adv_weight · adversarial
        [+ beta · KL  (encoder=vae)] [+ contractive_weight · ||dz/dx||²]

    and the ``disc`` phase updates the discriminator (optimizer ``"disc"``).

    ``adversary=image`` (VAE-GAN, Larsen et al. 2016): the discriminator judges
    real images against reconstructions and decoded prior samples.
    ``adversary=latent`` (adversarial autoencoder, Makhzani et al. 2016): it
    judges prior samples ``N(0, I)`` against the encoder's codes, pushing the
    aggregate posterior ``q(z)`` toward the prior.

    The reconstruction term is summed over pixels and averaged over the batch
    (the ELBO's convention, so ``beta`` means what it means in a β-VAE); the
    adversarial term is a batch mean. With a fixed weight the summed term
    (≈130 nats on MNIST) dwarfed the adversarial one and the model was a VAE in
    effect (the adversary's gradient 10–16% of the reconstruction's), so the
    weight is adaptive by default (``adv_weight_mode``, ``adv_share``): see
    :mod:`plugins.aegan.model`.
    """

    arch: Literal["mlp", "conv"] = "mlp"
    """``mlp``: fully connected nets, any image shape. ``conv``: strided convolutions;
    square images of side 4·2^k or 7·2^k (28, 32, 64, ...)."""
    latent_dim: engine.PositiveInt = 16
    hidden: engine.PositiveInt | tuple[engine.PositiveInt, ...] = 256
    """``mlp``: width of hidden layers, or one width per layer in the encoder's order
    (``[512, 256]``: image -> 512 -> 256 -> z; the decoder mirrors it). The image and latent
    discriminators use the encoder's order."""
    depth: engine.PositiveInt = 2
    """``mlp``: hidden layers per network when ``hidden`` is one int (a list sets its own)."""
    channels: engine.PositiveInt = 32
    """``conv``: channels after the first convolution, doubled at each halving."""
    encoder: Literal["ae", "vae"] = "ae"
    """``ae``: a deterministic code; ``vae``: a Gaussian ``q(z|x)`` sampled with the
    reparameterisation trick and pulled toward ``N(0, I)`` by ``beta · KL``."""
    adversary: Literal["image", "latent"] = "image"
    loss: Annotated[str, engine.LossName("adversarial")] = "nonsaturating"
    penalty: Annotated[str | None, engine.LossName("penalty")] = "r1"
    """Discriminator penalty (``gradient_penalty``, ``r1`` or a plugin's); None for none.

    R1 by default: without it the latent adversary is unstable (the encoder
    chases the discriminator's linear extrapolation and the codes run off to
    |z| ~ 10-50 within a hundred steps); with it q(z) settles near N(0, I)."""
    penalty_weight: engine.PositiveFloat = 10.0
    """Weight of the penalty (for ``r1`` this is γ and the term is γ/2 · R1)."""
    recon_loss: Annotated[str, engine.LossName("reconstruction", takes="logits")] = "bce"
    """Pixel reconstruction loss. A ``logits`` loss (``bce``) receives the decoder's logits;
    a ``probabilities`` loss receives images in ``[0, 1]`` (the sigmoid of the logits)."""
    rec_weight: engine.NonNegativeFloat = 1.0
    adv_weight: engine.NonNegativeFloat = 1.0
    """``adaptive``: a multiplier of the adaptive weight (1: the adversary's share is ``adv_share``;
    0: no adversarial term). ``fixed``: the adversarial term's weight λ itself."""
    adv_weight_mode: Literal["adaptive", "fixed"] = "adaptive"
    """``adaptive`` (VQGAN, Esser et al. 2021): each step, λ_adv is set from the ratio of the
    gradient norms of the reconstruction and adversarial terms at the last layer they share, so the
    adversary carries ``adv_share`` of it; ``fixed``: λ_adv = ``adv_weight``."""
    adv_share: engine.Probability = 0.4
    """``adaptive``: the adversary's share ``‖λ∇adv‖ / (‖∇rec‖ + ‖λ∇adv‖)`` of the gradient at the
    shared last layer (the decoder's output layer; the encoder's for ``adversary=latent``)."""
    beta: engine.NonNegativeFloat = 1.0
    """Weight of KL(q(z|x) || N(0, I)); ``encoder=vae`` only."""
    feature_recon: bool = False
    """``adversary=image`` only: measure reconstruction as the squared distance of the
    discriminator's hidden features of ``x`` and of its reconstruction (Larsen et al.)
    instead of ``recon_loss`` on pixels."""
    contractive_weight: engine.NonNegativeFloat = 0.0
    """Weight of the contractive penalty ``E||dz/dx||²_F`` on the encoder (0: off)."""
    n_ae: engine.PositiveInt = 1
    """Autoencoder updates per step."""
    n_disc: engine.PositiveInt = 1
    """Discriminator updates per step."""
    disc_first: bool = True
    """Run the ``disc`` phase before the ``ae`` phase in each step (the first phase
    draws fresh batches, the second reuses the last one)."""

    def check(self, data: engine.DataSpec) -> None:
        c, h, w = data.shape
        if self.arch == "conv" and (h != w or conv_layout(h) is None):
            raise self.fail(
                "arch",
                "conv",
                f"conv takes square images of side 4·2^k or 7·2^k up to {CONV_MAX_SIDE} (e.g. 28, 32, 64), "
                f"but {data.name or 'the data'} is {c}×{h}×{w}; use arch=mlp",
            )
        if self.adv_weight_mode == "adaptive" and self.adv_share >= 1:
            raise self.fail("adv_share", self.adv_share, "must be below 1 (1 would leave no reconstruction gradient)")
        if self.feature_recon and self.adversary != "image":
            raise self.fail(
                "feature_recon",
                True,
                "uses the image discriminator's features, so it needs model.adversary=image",
            )
