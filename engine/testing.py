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

The checks are plain methods (no fixtures), so the module works without
pytest: pytest collects them as usual (``pip install 'gentrain[test]'``
brings it), and ``TestMyModel().test_ddp_matches_one_process()`` runs one
by hand. :meth:`ModelContract.test_ddp_matches_one_process` starts 2 gloo
processes (``torch.multiprocessing``, no Ray) and compares their losses and
gradients with one process on the doubled batch.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import os
import pickle
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from engine.config import resolve
from engine.data import load_data
from engine.model import Batch, DataSpec, Model, _BatchNoise
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
    name: str,
    overrides: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    seed: int = 0,
    *,
    n: int = 16,
    world_size: int = 1,
) -> tuple[Model, Batch, DataSpec]:
    """Build model ``name`` from its default config (plus ``overrides``) and a batch of ``n`` images of ``data``.

    The model's :class:`DataSpec` says the batch is split over ``world_size`` ranks.
    """
    raw = {"model": {"name": name, **(overrides or {})}, "data": data or {"name": "shapes", "n": 64, "size": 32}}
    config = resolve(raw, current())
    dataset = load_data(config.data, current())
    spec = dataset.spec.for_run(len(dataset), n // world_size, world_size)
    if hasattr(config.model.params, "check"):
        config.model.params.check(spec)
    torch.manual_seed(seed)
    model = current().models.get(name).obj(config.model.params, spec)
    x = dataset.images[:n].float() / 255.0 if dataset.images.dtype == torch.uint8 else dataset.images[:n]
    return model, (x, dataset.labels[:n]), spec


def _losses(model: Model, batch: Batch, phase: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # same noise for every evaluation
    return model.training_step(batch, phase)


class ModelContract:
    """Checks every model should pass. Subclass and set :attr:`model`.

    A model whose losses depend on statistics of the batch each rank sees
    (batch norm in training mode, an MMD or total-correlation estimate over
    the batch, a minibatch-discrimination layer) sets the class attribute
    ``batch_statistics = True`` (or a property of the instance, when it depends on
    the config): then 2 workers × B do not train like 1 × 2B,
    and :meth:`test_ddp_matches_one_process` reports the difference instead
    of failing on it.
    """

    model: ClassVar[str] = ""
    overrides: ClassVar[dict[str, Any]] = {}
    data: ClassVar[dict[str, Any]] = {"name": "shapes", "n": 64, "size": 32}
    learn_steps: ClassVar[int] = 25
    #: Plugin objects or modules to load besides the installed ones (also in the DDP processes: picklable).
    plugins: ClassVar[Sequence[object]] = ()
    #: Per-rank batch of the DDP check; 2 ranks of it are compared with 1 process of twice as many.
    ddp_batch: ClassVar[int] = 8
    ddp_world: ClassVar[int] = 2
    ddp_rtol: ClassVar[float] = 1e-4
    ddp_atol: ClassVar[float] = 1e-6

    @property
    def model_name(self) -> str:
        if not self.model:
            raise AssertionError("set `model = '<registered name>'` on your ModelContract subclass")
        return self.model

    @contextlib.contextmanager
    def _plugins(self) -> Iterator[None]:
        if not self.plugins:
            yield
            return
        with plugin_manager(*_as_objects(self.plugins), autoload=True):
            yield

    def _build(self, seed: int = 0, n: int = 16) -> tuple[Model, Batch, DataSpec]:
        with self._plugins():
            return build(self.model_name, self.overrides, self.data, seed=seed, n=n)

    @property
    def built(self) -> tuple[Model, Batch, DataSpec]:
        if "_built" not in self.__dict__:
            self.__dict__["_built"] = self._build()
        built: tuple[Model, Batch, DataSpec] = self.__dict__["_built"]
        return built

    def test_builds_from_default_config(self) -> None:
        model, _, spec = self.built
        assert isinstance(model, Model)
        assert model.data == spec
        assert sum(p.numel() for p in model.parameters()) > 0

    def test_phases_match_optimizers(self) -> None:
        model, _, _ = self.built
        groups = {n: list(ps) for n, ps in model.param_groups().items()}
        assert groups, "param_groups() returned nothing"
        for phase in model.phases():
            assert phase.optimizer_name in groups, f"phase {phase.name!r} has no optimizer"
            assert phase.repeats >= 1
        owned = {id(p) for ps in groups.values() for p in ps}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert trainable <= owned, "some trainable parameters are in no optimizer"

    def test_losses_are_finite_scalars(self) -> None:
        model, batch, _ = self.built
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

    def test_output_shapes(self) -> None:
        model, (x, y), spec = self.built
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

    def test_each_phase_learns(self) -> None:
        """Optimising one phase alone on a fixed batch and fixed noise lowers its loss."""
        model, batch, _ = self.built
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

    def test_state_dict_round_trips(self) -> None:
        model, batch, _ = self.built
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        other, _, _ = self._build(seed=123)
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

    def test_ddp_matches_one_process(self) -> None:
        """2 gloo processes × B give the losses and gradients of 1 process × 2B (DDP rules, README).

        Each phase is run once from the same initial weights, as the loop runs
        it: every ``ddp_modules()`` sub-network wrapped in its own
        ``DistributedDataParallel``, those the phase does not update under
        ``no_sync``. Losses are averaged over the ranks; gradients are DDP's.
        """
        world, b = self.ddp_world, self.ddp_batch
        reference = _phase_results(self._build(n=world * b)[0:2], rank=0, world=1)
        ranks = run_ddp(self, world)
        differences = compare_ddp(reference, ranks, rtol=self.ddp_rtol, atol=self.ddp_atol)
        marked = bool(getattr(self._build()[0], "batch_statistics", False))  # a class attribute or a property
        report = f"model {self.model_name!r}: {world} processes × batch {b} differ from 1 process × batch {world * b}:"
        report += "\n  " + "\n  ".join(differences)
        if differences and marked:
            print(report + "\n(expected: the model sets batch_statistics = True)")  # shown with pytest -rA / -s
        elif differences:
            raise AssertionError(
                report + "\nDraw noise with self.batch_randn, return batch-mean losses, and avoid statistics "
                "over the batch; a model that needs them sets `batch_statistics = True` on its class "
                "(docs/plugins.md: DDP rules)."
            )


def _as_objects(plugins: Sequence[object]) -> list[object]:
    import importlib

    return [importlib.import_module(p) if isinstance(p, str) else p for p in plugins]


def _phase_results(built: tuple[Model, Batch], rank: int, world: int) -> dict[str, dict[str, Any]]:
    """For each phase once, from the same start: the losses and the gradients of its optimizer's parameters."""
    import torch.distributed as dist

    model, (x, y) = built
    n = len(x) // world
    batch = (x[rank * n : (rank + 1) * n], y[rank * n : (rank + 1) * n])
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {k: list(v) for k, v in model.param_groups().items()}
    raw = model.ddp_modules()
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        for name, module in raw.items():
            setattr(model, name, DistributedDataParallel(module))
    wrapped = {name: getattr(model, name) for name in raw}
    model.train()
    noise = _BatchNoise(0, rank, world)
    model._noise = noise
    out: dict[str, dict[str, Any]] = {}
    for phase in model.phases():
        params = groups[phase.optimizer_name]
        ids = {id(p) for p in params}
        trained = {name for name, m in raw.items() if any(id(p) in ids for p in m.parameters())}
        model.zero_grad(set_to_none=True)
        noise.reseed(0)
        torch.manual_seed(1234 + rank)
        with contextlib.ExitStack() as stack:
            for name, module in wrapped.items():
                if world > 1 and name not in trained:
                    stack.enter_context(module.no_sync())
            losses = model.training_step(batch, phase.name)
            losses["loss"].backward()
        values = {k: v.detach().float().reshape(()).clone() for k, v in losses.items()}
        if world > 1:
            for v in values.values():
                dist.all_reduce(v)
                v /= world
        grads = {names[id(p)]: (p.grad.detach().clone() if p.grad is not None else None) for p in params}
        out[phase.name] = {"losses": values, "grads": grads}
    model._noise = None
    return out


def run_ddp(contract: ModelContract, world: int, timeout_s: float = 180.0) -> dict[str, dict[str, Any]]:
    """Run :func:`_phase_results` on ``world`` gloo processes; rank 0's results (losses averaged, DDP gradients)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="gentrain-ddp-") as tmp:
        job = Path(tmp) / "job.pkl"
        payload = {
            "model": contract.model_name,
            "overrides": contract.overrides,
            "data": contract.data,
            "plugins": list(contract.plugins),
            "b": contract.ddp_batch,
            "init": f"file://{tmp}/rendezvous",
            "out": str(Path(tmp) / "result.pt"),
        }
        job.write_bytes(pickle.dumps(payload))
        ctx = mp.start_processes(_ddp_worker, args=(world, str(job)), nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise AssertionError(f"the {world} DDP processes did not finish within {timeout_s:.0f} s")
        result: dict[str, dict[str, Any]] = torch.load(str(payload["out"]), weights_only=True)
        return result


def _ddp_worker(rank: int, world: int, job: str) -> None:  # pragma: no cover - runs in a child process
    import torch.distributed as dist

    payload = pickle.loads(Path(job).read_bytes())
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=payload["init"], rank=rank, world_size=world)
    try:
        _ddp_job(payload, rank, world)
        # The DDP wrappers (and their reducers' gloo work) are gone before the group is:
        # destroying it under a live reducer can abort the process at exit.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _ddp_job(payload: dict[str, Any], rank: int, world: int) -> None:  # pragma: no cover - in a child process
    extra = _as_objects(payload["plugins"])
    with plugin_manager(*extra, autoload=True):
        n = payload["b"] * world
        model, batch, _ = build(payload["model"], payload["overrides"], payload["data"], n=n, world_size=world)
        result = _phase_results((model, batch), rank=rank, world=world)
    if rank == 0:
        torch.save(result, payload["out"])


def compare_ddp(
    reference: dict[str, dict[str, Any]], ranks: dict[str, dict[str, Any]], *, rtol: float, atol: float
) -> list[str]:
    """One line for each loss or gradient where ``ranks`` differ from ``reference``."""
    out: list[str] = []
    for phase, ref in reference.items():
        got = ranks[phase]
        for key, a in ref["losses"].items():
            b = got["losses"].get(key)
            if b is None or not torch.allclose(a, b, rtol=rtol, atol=atol):
                over = "missing" if b is None else f"{float(b):.6g}"
                out.append(f"phase {phase!r}: loss {key!r} = {float(a):.6g} in 1 process, {over} over the ranks")
        for name, a in ref["grads"].items():
            b = got["grads"].get(name)
            if (a is None) != (b is None):
                out.append(f"phase {phase!r}: gradient of {name} is None on one side only")
            elif a is not None and not torch.allclose(a, b, rtol=rtol * 10, atol=atol * 10):
                err, scale = float((a - b).abs().max()), float(a.abs().max())
                out.append(f"phase {phase!r}: gradient of {name} differs by up to {err:.3g} (largest {scale:.3g})")
    return out
