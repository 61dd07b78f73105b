"""Looking up named losses, and the signature each kind of loss has.

Losses are registered by plugins (``gentrain_register_losses``) and selected
by name in model configs (fields annotated ``LossName(kind)``). The kinds:

``reconstruction``  ``fn(x_hat, x, **params) -> Tensor``: per-sample loss summed over
                    pixels, shape ``N``. ``x_hat`` is what the loss's *domain* says.
``divergence``      ``fn(mu, logvar) -> Tensor``: per-sample divergence, shape ``N``.
``adversarial``     an object with ``d_loss(real, fake) -> Tensor`` and
                    ``g_loss(fake) -> Tensor`` on discriminator outputs
                    (scalars, batch means).
``penalty``         ``fn(**kwargs) -> Tensor``: a scalar; the arguments depend on
                    the penalty (``gradient_penalty(critic, real, fake)``, ...).

Every loss declares its input *domain* when registered
(``registry.add("huber", fn, HuberConfig, kind="reconstruction", domain="probabilities")``):

``logits``          raw decoder outputs (``bce`` applies the sigmoid itself);
``probabilities``   images in ``[0, 1]`` (``mse``, ``l1``; the default of a reconstruction loss);
``features``        anything else (codes, discriminator outputs, feature maps).

A model asks for the domain it has (``engine.get_loss(name, "reconstruction",
takes="logits")``): a ``probabilities`` loss is wrapped with a sigmoid for a
model that has logits; a loss the model cannot feed is refused with a
:class:`~engine.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from engine.errors import ConfigError
from engine.plugins import current
from engine.registry import ADAPTABLE, DOMAINS, LossRef, domain_problem

KINDS = ("reconstruction", "divergence", "adversarial", "penalty")

#: (domain the model has, domain the loss takes) -> how to adapt the model's output.
_ADAPT: dict[tuple[str, str], Callable[[Any], Any]] = {pair: torch.sigmoid for pair in ADAPTABLE}


def get_loss(name: str, kind: str | None = None, *, takes: str | None = None, field: str | None = None) -> Any:
    """The loss registered as ``name`` (of ``kind``), from this process's plugins.

    :param name: a loss name, or the :class:`~engine.registry.LossRef` a config
        field holds (its parameters are passed to the loss as keywords).
    :param takes: the domain the calling model gives the loss (one of
        ``logits``, ``probabilities``, ``features``). A ``probabilities`` loss
        asked for with ``takes="logits"`` comes back wrapped:
        ``fn(sigmoid(x_hat), x)``. ``None`` returns the loss as registered.
    :param field: the config field that named the loss, for the error message
        (``"model.recon_loss"``).
    :raises ConfigError: an unknown name, a loss of another kind, or one of a
        domain the model cannot feed.
    """
    if takes is not None and takes not in DOMAINS:
        raise ValueError(f"takes={takes!r}: must be one of {', '.join(DOMAINS)}")
    registry = current().losses
    try:
        entry = registry.get(str(name), kind=kind)
    except ConfigError as e:
        if field is None:
            raise
        raise ConfigError([(field, v, a) for _, v, a in e.problems]) from None
    fn = entry.obj
    kwargs = name.kwargs() if isinstance(name, LossRef) else {}
    if kwargs:
        fn = functools.partial(fn, **kwargs)
    if takes is None or entry.domain is None or takes == entry.domain:
        return fn
    adapt = _ADAPT.get((takes, entry.domain))
    if adapt is None:
        raise ConfigError.one(field or f"<{kind or 'any'} loss>", str(name), domain_problem(name, entry.domain, takes))
    return _Adapted(fn, adapt, entry.domain)


class _Adapted:
    """A loss of another domain behind the conversion the model's output needs."""

    def __init__(self, fn: Callable[..., Any], adapt: Callable[[Any], Any], domain: str) -> None:
        self.fn, self.adapt, self.domain = fn, adapt, domain
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, x_hat: Any, *args: Any, **kwargs: Any) -> Any:
        return self.fn(self.adapt(x_hat), *args, **kwargs)

    def __repr__(self) -> str:
        return f"<{getattr(self.fn, '__name__', self.fn)!r} on {self.adapt.__name__}(x_hat)>"
