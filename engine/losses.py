"""Looking up named losses, and the signature each kind of loss has.

Losses are registered by plugins (``gentrain_register_losses``) and selected
by name in model configs (fields annotated ``LossName(kind)``). The kinds:

``reconstruction``  ``fn(x_hat, x) -> Tensor``: per-sample loss summed over
                    pixels, shape ``N`` (``x_hat`` are logits for ``bce``).
``divergence``      ``fn(mu, logvar) -> Tensor``: per-sample divergence, shape ``N``.
``adversarial``     an object with ``d_loss(real, fake) -> Tensor`` and
                    ``g_loss(fake) -> Tensor`` on discriminator outputs
                    (scalars, batch means).
``penalty``         ``fn(**kwargs) -> Tensor``: a scalar; the arguments depend on
                    the penalty (``gradient_penalty(critic, real, fake)``, ...).
"""

from __future__ import annotations

from typing import Any

from engine.plugins import current

KINDS = ("reconstruction", "divergence", "adversarial", "penalty")


def get_loss(name: str, kind: str | None = None) -> Any:
    """The loss registered as ``name`` (of ``kind``), from this process's plugins."""
    return current().losses.get(name, kind=kind).obj
