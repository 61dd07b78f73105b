"""Encoder and decoder networks of the AE and VAE plugins, sized from the data.

The MLP is the classic one (ReLU). The conv nets are DCGAN-shaped (4×4
kernels, stride 2, LeakyReLU 0.2) with GroupNorm where DCGAN has BatchNorm:
GroupNorm normalises each image on its own, so outputs do not depend on the
rest of the batch (the contractive penalty's per-image Jacobian stays
per-image) and nothing needs synchronising under DDP. Without normalisation
the conv AE sits on the "mean image" plateau for hundreds of steps.
"""

from __future__ import annotations

import math

from torch import nn

import engine
from plugins.ae.config import ArchConfig, conv_geometry


def conv_channels(config: ArchConfig, layers: int) -> list[int]:
    """Channels after each stride-2 conv layer: ``conv_width`` doubling, at most 8×."""
    return [config.conv_width * min(2**i, 8) for i in range(layers)]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def make_encoder(config: ArchConfig, data: engine.DataSpec, out_dim: int) -> nn.Sequential:
    """Images ``N×C×H×W`` -> ``N×out_dim``."""
    if config.arch == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = data.numel
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_dim))
        return nn.Sequential(*layers)
    geometry = conv_geometry(data.shape)
    if geometry is None:  # config.check() refuses this before a model is built
        raise ValueError(f"conv arch cannot handle images of shape {data.shape}")
    n, side = geometry
    channels = conv_channels(config, n)
    layers = []
    c_in = data.shape[0]
    for i, c in enumerate(channels):
        layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1))
        if i > 0:  # as in DCGAN, the first layer sees the raw image, unnormalised
            layers.append(_norm(c))
        layers.append(nn.LeakyReLU(0.2))
        c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * side * side, out_dim)]
    return nn.Sequential(*layers)


def make_decoder(config: ArchConfig, data: engine.DataSpec) -> nn.Sequential:
    """Latents ``N×latent_dim`` -> logits ``N×C×H×W`` (no output activation)."""
    if config.arch == "mlp":
        layers: list[nn.Module] = []
        width = config.latent_dim
        for h in reversed(config.hidden):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, data.numel), nn.Unflatten(1, data.shape)]
        return nn.Sequential(*layers)
    geometry = conv_geometry(data.shape)
    if geometry is None:
        raise ValueError(f"conv arch cannot handle images of shape {data.shape}")
    n, side = geometry
    channels = conv_channels(config, n)
    layers = [nn.Linear(config.latent_dim, channels[-1] * side * side), nn.LeakyReLU(0.2)]
    layers.append(nn.Unflatten(1, (channels[-1], side, side)))
    for c_in, c_out in zip(channels[:0:-1], channels[-2::-1], strict=True):
        layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), _norm(c_out), nn.LeakyReLU(0.2)]
    layers.append(nn.ConvTranspose2d(channels[0], data.shape[0], 4, stride=2, padding=1))
    return nn.Sequential(*layers)
