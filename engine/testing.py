"""The contract every model plugin should pass, shipped for third parties.

In your plugin's tests::

    from engine.testing import ModelContract

    class TestMyModel(ModelContract):
        model = "mymodel"                       # the registered name
        overrides = {"hidden": 32}              # model-config fields, optional

gentrain runs the same suite over every registered model
(``tests/engine/test_contract.py``). Each check builds the model from its
default config on a small procedural ``shapes`` batch, so the suite needs no
files and runs in seconds per model.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import pytest
import torch

from engine.config import resolve
from engine.data import load_data
from engine.model import Batch, DataSpec, Model
from engine.plugins import PluginManager, current, load_plugins, set_current


@contextlib.contextmanager
def plugin_manager(*extra: object, autoload: bool = False, blocked: Iterable[str] = ()) -> Iterator[PluginManager]:
    """A fresh plugin manager with ``extra`` plugins registered, current for the ``with`` block.

    ``autoload=False`` (the default) loads only gentrain's built-ins, so
    tests do not depend on what else is installed.
    """
    manager = load_plugins(autoload=autoload, blocked=blocked, extra=extra)
    previous = set_current(manager)
    try:
        yield manager
    finally:
        set_current(previous)


def registered_models() -> list[str]:
    """Names of every model the installed plugins register."""
    return current().models.names()


def build(
    name: str, overrides: dict[str, Any] | None = None, data: dict[str, Any] | None = None, seed: int = 0
) -> tuple[Model, Batch, DataSpec]:
    """Build model ``name`` from its default config (plus ``overrides``) and a batch of ``data``."""
    raw = {"model": {"name": name, **(overrides or {})}, "data": data or {"name": "shapes", "n": 64, "size": 32}}
    config = resolve(raw, current())
    dataset = load_data(config.data, current())
    spec = dataset.spec
    if hasattr(config.model.params, "check"):
        config.model.params.check(spec)
    torch.manual_seed(seed)
    model = current().models.get(name).obj(config.model.params, spec)
    x = dataset.images[:16].float() / 255.0 if dataset.images.dtype == torch.uint8 else dataset.images[:16]
    return model, (x, dataset.labels[:16]), spec


def _losses(model: Model, batch: Batch, phase: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # same noise for every evaluation
    return model.training_step(batch, phase)


class ModelContract:
    """Checks every model should pass. Subclass and set :attr:`model`."""

    model: ClassVar[str] = ""
    overrides: ClassVar[dict[str, Any]] = {}
    data: ClassVar[dict[str, Any]] = {"name": "shapes", "n": 64, "size": 32}
    learn_steps: ClassVar[int] = 25

    @pytest.fixture
    def model_name(self) -> str:
        if not self.model:
            pytest.fail("set `model = '<registered name>'` on your ModelContract subclass")
        return self.model

    @pytest.fixture
    def built(self, model_name: str) -> tuple[Model, Batch, DataSpec]:
        return build(model_name, self.overrides, self.data)

    def test_builds_from_default_config(self, built: tuple[Model, Batch, DataSpec]) -> None:
        model, _, spec = built
        assert isinstance(model, Model)
        assert model.data == spec
        assert sum(p.numel() for p in model.parameters()) > 0

    def test_phases_match_optimizers(self, built: tuple[Model, Batch, DataSpec]) -> None:
        model, _, _ = built
        groups = {n: list(ps) for n, ps in model.param_groups().items()}
        assert groups, "param_groups() returned nothing"
        for phase in model.phases():
            assert phase.optimizer_name in groups, f"phase {phase.name!r} has no optimizer"
            assert phase.repeats >= 1
        owned = {id(p) for ps in groups.values() for p in ps}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable <= owned, "some trainable parameters are in no optimizer"

    def test_losses_are_finite_scalars(self, built: tuple[Model, Batch, DataSpec]) -> None:
        model, batch, _ = built
        for phase in model.phases():
            out = model.training_step(batch, phase.name)
            assert "loss" in out, f"training_step(phase={phase.name!r}) returned no 'loss'"
            for key, value in out.items():
                assert value.dim() == 0, f"{phase.name}/{key} is not a scalar: shape {tuple(value.shape)}"
                assert torch.isfinite(value), f"{phase.name}/{key} = {value}"
            assert out["loss"].requires_grad
        with torch.no_grad():
            for key, value in model.validation_step(batch).items():
                assert value.dim() == 0
                assert torch.isfinite(value), f"validation {key} = {value}"

    def test_output_shapes(self, built: tuple[Model, Batch, DataSpec]) -> None:
        model, (x, y), spec = built
        model.eval()
        produced = 0
        with torch.no_grad():
            try:
                labels = y[:5] if spec.num_classes else None
                s = model.sample(5, labels=labels)
            except NotImplementedError:
                pass
            else:
                assert s.shape == (5, *spec.shape)
                assert s.min() >= 0
                assert s.max() <= 1
                produced += 1
            try:
                r = model.reconstruct(x)
            except NotImplementedError:
                pass
            else:
                assert r.shape == x.shape
                assert r.min() >= 0
                assert r.max() <= 1
                produced += 1
        assert produced, "a generative model should implement sample() or reconstruct()"

    def test_each_phase_learns(self, built: tuple[Model, Batch, DataSpec]) -> None:
        """Optimising one phase alone on a fixed batch and fixed noise lowers its loss."""
        model, batch, _ = built
        for phase in model.phases():
            trial = copy.deepcopy(model)
            params = list(trial.param_groups()[phase.optimizer_name])
            opt = torch.optim.Adam(params, lr=1e-3)
            before = float(_losses(trial, batch, phase.name, seed=1)["loss"].detach())
            for _ in range(self.learn_steps):
                opt.zero_grad()
                _losses(trial, batch, phase.name, seed=1)["loss"].backward()
                opt.step()
            after = float(_losses(trial, batch, phase.name, seed=1)["loss"].detach())
            assert after < before, f"phase {phase.name!r}: loss {before:.4g} -> {after:.4g} did not fall"

    def test_state_dict_round_trips(self, built: tuple[Model, Batch, DataSpec], model_name: str) -> None:
        model, batch, _ = built
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        other, _, _ = build(model_name, self.overrides, self.data, seed=123)
        other.load_state_dict(torch.load(buffer, weights_only=True))
        for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
            assert torch.equal(a, b), name
        model.eval()
        other.eval()
        with torch.no_grad():
            for phase in model.phases()[:1]:
                a_out = _losses(model, batch, phase.name, seed=5)["loss"]
                b_out = _losses(other, batch, phase.name, seed=5)["loss"]
                assert torch.allclose(a_out, b_out), f"{a_out} != {b_out}"
