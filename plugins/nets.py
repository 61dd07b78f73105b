"""Network pieces shared by the built-in model plugins: MLP widths and stacks.

``hidden`` fields of the GAN and AE-GAN take a plain int (that width for each
of ``depth`` layers) or a list with one width per layer (``hidden: [256, 512]``,
which then sets the depth too): :func:`layer_widths` turns either into a list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def layer_widths(hidden: int | Sequence[int], depth: int) -> list[int]:
    """The widths of the hidden layers: ``[hidden] * depth`` for an int, the list itself otherwise."""
    if isinstance(hidden, int):
        return [hidden] * depth
    widths = [int(h) for h in hidden]
    if not widths:
        raise ValueError("hidden must name at least one layer width")
    return widths


def mlp_layers(
    d_in: int,
    widths: Sequence[int],
    act: Callable[[], nn.Module],
    norm: Callable[[int], nn.Module] | None = None,
) -> tuple[list[nn.Module], int]:
    """``Linear -> [norm] -> act`` for each width; returns the layers and the last width."""
    layers: list[nn.Module] = []
    d = d_in
    for w in widths:
        layers.append(nn.Linear(d, w))
        if norm is not None:
            layers.append(norm(w))
        layers.append(act())
        d = w
    return layers, d
