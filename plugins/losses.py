"""The named losses: reconstruction, divergence, adversarial and penalties.

Model configs choose them by name (fields annotated ``engine.LossName(kind)``);
the signature of each kind is documented in :mod:`engine.losses`. A third
party adds a loss with its own ``gentrain_register_losses`` and the built-in
models use it through config alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import engine

# -- reconstruction: fn(x_hat, x) -> per-sample loss summed over pixels, shape N


def mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error summed over pixels (a Gaussian decoder with unit variance, up to constants)."""
    return (x_hat - x).pow(2).flatten(1).sum(1)


def bce(logits: Tensor, x: Tensor) -> Tensor:
    """Binary cross-entropy on decoder logits, summed over pixels (a Bernoulli decoder)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def l1(x_hat: Tensor, x: Tensor) -> Tensor:
    """Absolute error summed over pixels (a Laplace decoder, up to constants)."""
    return (x_hat - x).abs().flatten(1).sum(1)


# -- divergence: fn(mu, logvar) -> per-sample divergence, shape N


def kl_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


# -- adversarial: d_loss(real, fake), g_loss(fake) on discriminator outputs


class Adversarial:
    """A pair of discriminator and generator objectives on raw discriminator outputs."""

    def __init__(
        self, d_loss: Callable[[Tensor, Tensor], Tensor], g_loss: Callable[[Tensor], Tensor], doc: str
    ) -> None:
        self.d_loss = d_loss
        self.g_loss = g_loss
        self.__doc__ = doc


def _ones(t: Tensor) -> Tensor:
    return torch.ones_like(t)


minimax = Adversarial(
    lambda real, fake: (
        F.binary_cross_entropy_with_logits(real, _ones(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    ),
    # G minimises log(1 - D(G(z))) = -softplus(fake logit).
    lambda fake: -F.softplus(fake).mean(),
    "The original minimax GAN: G minimises log(1 - D(G(z))) (saturates early in training).",
)
nonsaturating = Adversarial(
    minimax.d_loss,
    lambda fake: F.binary_cross_entropy_with_logits(fake, _ones(fake)),
    "Non-saturating GAN: G maximises log D(G(z)).",
)
hinge = Adversarial(
    lambda real, fake: F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean(),
    lambda fake: -fake.mean(),
    "Hinge loss (SNGAN, BigGAN).",
)
wasserstein = Adversarial(
    lambda real, fake: fake.mean() - real.mean(),
    lambda fake: -fake.mean(),
    "Wasserstein critic loss (pair it with gradient_penalty: WGAN-GP).",
)
least_squares = Adversarial(
    lambda real, fake: 0.5 * ((real - 1.0).pow(2).mean() + fake.pow(2).mean()),
    lambda fake: 0.5 * (fake - 1.0).pow(2).mean(),
    "Least-squares GAN (LSGAN, a=0, b=c=1).",
)


# -- penalties


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, **_: Any) -> Tensor:
    """WGAN-GP: E[(||grad_x D(x_hat)||_2 - 1)^2] on random interpolates of real and fake."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1.0).pow(2).mean()


def r1(critic: Callable[[Tensor], Tensor], real: Tensor, **_: Any) -> Tensor:
    """R1: E[||grad_x D(x)||^2] on real data (Mescheder et al. 2018); scale by gamma/2 in the model."""
    x = real.detach().requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def contractive(encoder: Callable[[Tensor], Tensor], x: Tensor, n_projections: int = 1, **_: Any) -> Tensor:
    """Contractive penalty E||dz/dx||_F^2, estimated without a per-sample loop.

    Uses Hutchinson's identity ||J||_F^2 = E_v ||v^T J||^2 with v ~ N(0, I) in
    latent space: one vector-Jacobian product per projection for the whole
    batch (unbiased; exact in expectation), instead of one backward pass per
    latent dimension.
    """
    x = x.detach().requires_grad_(True)
    z = encoder(x)
    total = x.new_zeros(())
    for _ in range(n_projections):
        v = torch.randn_like(z)
        (vjp,) = torch.autograd.grad(z, x, grad_outputs=v, create_graph=True)
        total = total + vjp.flatten(1).pow(2).sum(1).mean()
    return total / n_projections


@engine.hookimpl
def gentrain_register_losses(registry: engine.Registry[Any]) -> None:
    registry.add("bce", bce, kind="reconstruction", domain="logits")
    for fn in (mse, l1):
        registry.add(fn.__name__, fn, kind="reconstruction", domain="probabilities")
    registry.add("kl_normal", kl_normal, kind="divergence", domain="features")
    for name, adv in (
        ("minimax", minimax),
        ("nonsaturating", nonsaturating),
        ("hinge", hinge),
        ("wasserstein", wasserstein),
        ("least_squares", least_squares),
    ):
        registry.add(name, adv, kind="adversarial", doc=adv.__doc__, domain="features")
    for fn in (gradient_penalty, r1, contractive):
        registry.add(fn.__name__, fn, kind="penalty", domain="features")
