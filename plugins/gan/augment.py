"""Differentiable augmentation of the discriminator's inputs (DiffAugment, Zhao et al. 2020).

A discriminator trained on a few thousand images learns them by heart; its
gradients then stop telling the generator what a digit looks like. DiffAugment
shows the discriminator every image (real and generated alike, in both phases)
through the same random, differentiable transforms, so it cannot memorise the
training set, and the generator, whose gradient flows through the transform,
is still pushed toward the un-augmented data (the transforms are applied to
both sides, so they do not leak into the samples).

The randomness comes from :meth:`engine.Model.batch_rand`, so a distributed run
augments exactly as a single process with the same global batch does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: The transforms by name, in the order they are applied.
POLICIES = ("translation", "cutout")

Uniform = Callable[..., Tensor]
"""``rand(n, *shape)``: uniform ``[0, 1)`` noise for a batch of ``n`` (``Model.batch_rand``)."""


def translation(x: Tensor, rand: Uniform, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its side in each direction, filling with the background ``-1``."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    u = rand(n, 2)
    dy = (u[:, 0] * (2 * sh + 1)).long() - sh
    dx = (u[:, 1] * (2 * sw + 1)).long() - sw
    # Index a padded copy: the padding is what an image shifted off its edge shows.
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None] + 1).clamp(0, w + 1)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return pad.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: Tensor, rand: Uniform, ratio: float = 0.5) -> Tensor:
    """Set a square of ``ratio`` of the side, at a random place in each image, to the background ``-1``."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    u = rand(n, 2)
    top = (u[:, 0] * (h + 1 - ch % 2)).long() - ch // 2
    left = (u[:, 1] * (w + 1 - cw % 2)).long() - cw // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= top[:, None]) & (ys < top[:, None] + ch)
    inside_x = (xs >= left[:, None]) & (xs < left[:, None] + cw)
    hole = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    return torch.where(hole, torch.full_like(x, -1.0), x)


_TRANSFORMS: dict[str, Callable[[Tensor, Uniform], Tensor]] = {"translation": translation, "cutout": cutout}


def diff_augment(x: Tensor, policy: tuple[str, ...], rand: Uniform) -> Tensor:
    """``x`` (images in ``[-1, 1]``) through each transform of ``policy``, in :data:`POLICIES` order."""
    for name in POLICIES:
        if name in policy:
            x = _TRANSFORMS[name](x, rand)
    return x
