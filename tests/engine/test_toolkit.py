"""The generative-training toolkit in the loop: EMA of weights, learning-rate schedules, torch.compile."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from test_loop import Models, config  # tests/engine is on sys.path (rootdir-relative imports)

import engine
from engine import checkpoint
from engine.testing import plugin_manager


class Crash:
    """Raises at the start of epoch ``at``: after the previous epoch's checkpoint, like a killed run."""

    def __init__(self, at: int) -> None:
        self.at = at

    @engine.hookimpl
    def gentrain_on_train_epoch_start(self, epoch: int) -> None:
        if epoch == self.at:
            raise KeyboardInterrupt("stop here")


class Watch:
    """Records the weights after every step and the learning rates every step used."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.lrs: list[dict[str, float]] = []
        self.ema: dict[str, dict[str, torch.Tensor]] = {}

    @engine.hookimpl
    def gentrain_on_train_batch_start(self, trainer: engine.Trainer) -> None:
        self.lrs.append({n: o.param_groups[0]["lr"] for n, o in trainer.optimizers.items()})

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, trainer: engine.Trainer) -> None:
        with trainer.unwrapped() as model:
            self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    @engine.hookimpl
    def gentrain_on_fit_end(self, trainer: engine.Trainer) -> None:
        self.ema = {n: {k: v.clone() for k, v in a.module.state_dict().items()} for n, a in trainer.ema.items()}


def final(tmp_path: Path, name: str) -> dict[str, Any]:
    path = checkpoint.latest(tmp_path / name / "checkpoints")
    assert path is not None
    return checkpoint.load(path)


# ---------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------


def test_ema_weights_equal_a_hand_computation(tmp_path: Path) -> None:
    watch = Watch()
    decay = 0.8
    with plugin_manager(Models(), watch):
        engine.fit(config(tmp_path, trainer={"epochs": 2, "ema_decay": decay, "ema_warmup": False}))
    steps = len(watch.weights)
    assert steps >= 3
    for module in ("enc", "dec"):
        keys = [k for k in watch.weights[0] if k.startswith(module + ".")]
        for key in keys:
            inner = key[len(module) + 1 :]
            expected = watch.weights[0][key].clone()  # the first update copies the weights
            for w in watch.weights[1:]:
                expected = decay * expected + (1 - decay) * w[key]
            torch.testing.assert_close(watch.ema[module][inner], expected, rtol=1e-6, atol=1e-7)
    # ... and differs from the raw weights it averages.
    assert not torch.equal(watch.ema["dec"]["weight"], watch.weights[-1]["dec.weight"])


def test_ema_warmup_ramps_the_decay(tmp_path: Path) -> None:
    watch = Watch()
    with plugin_manager(Models(), watch):
        engine.fit(config(tmp_path, trainer={"epochs": 2, "ema_decay": 0.999, "ema_modules": ["dec"]}))
    assert list(watch.ema) == ["dec"]
    expected = watch.weights[0]["dec.weight"].clone()
    for n, w in enumerate(watch.weights[1:], start=1):
        d = min(0.999, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w["dec.weight"]
    torch.testing.assert_close(watch.ema["dec"]["weight"], expected, rtol=1e-6, atol=1e-7)


def test_ema_survives_resume_bit_exactly(tmp_path: Path) -> None:
    trainer = {"epochs": 3, "ema_decay": 0.9}
    with plugin_manager(Models()):
        engine.fit(config(tmp_path, name="straight", trainer=trainer))
    with plugin_manager(Models(), Crash(at=1)), pytest.raises(KeyboardInterrupt):
        engine.fit(config(tmp_path, name="resumed", trainer=trainer))
    with plugin_manager(Models()):
        engine.fit(config(tmp_path, name="resumed", trainer=trainer))
    a, b = final(tmp_path, "straight"), final(tmp_path, "resumed")
    assert a["step"] == b["step"]
    assert a["ema_updates"] == b["ema_updates"] == {"enc": a["step"], "dec": a["step"]}
    for module in ("enc", "dec"):
        for key, value in a["ema"][module].items():
            assert torch.equal(value, b["ema"][module][key]), (module, key)


def test_ema_leaves_the_raw_weights_bit_identical_to_a_run_without_it(tmp_path: Path) -> None:
    """The EMA only reads the weights: a DCGAN (BatchNorm buffers, two optimizers) trained with
    ``trainer.ema_decay`` ends with the raw weights of the same run without it, so one run gives both
    sides of "GAN with EMA against the same GAN without" (``bench/quality.py``)."""
    base: dict[str, Any] = {
        "model": {"name": "gan", "arch": "dcgan", "channels": 4, "latent_dim": 8},
        "data": {"name": "shapes", "n": 192, "size": 16},
        "trainer": {"epochs": 2, "batch_size": 32, "seed": 3, "num_threads": 1},
        "callbacks": {"progress": False, "tensorboard": False, "csv": False, "sample_every": 1},
    }
    for name, extra in (("plain", {}), ("ema", {"ema_decay": 0.99})):
        run = {**base, "trainer": {**base["trainer"], **extra}, "run": {"output_dir": str(tmp_path), "name": name}}
        engine.fit(run)
    plain, ema = final(tmp_path, "plain"), final(tmp_path, "ema")
    assert ema["ema"]
    assert not plain.get("ema")
    assert plain["model"].keys() == ema["model"].keys()
    for key, value in plain["model"].items():
        assert torch.equal(value, ema["model"][key]), key
    averaged = ema["ema"]["gen"]
    assert any(not torch.equal(v, ema["model"][f"gen.{k}"]) for k, v in averaged.items() if v.is_floating_point())


def test_unknown_ema_module_is_a_config_error(tmp_path: Path) -> None:
    with plugin_manager(Models()), pytest.raises(engine.ConfigError, match=r"trainer\.ema_modules.*'gen'.*enc, dec"):
        engine.fit(config(tmp_path, trainer={"ema_decay": 0.9, "ema_modules": ["gen"]}))


# ---------------------------------------------------------------------------
# learning-rate schedules
# ---------------------------------------------------------------------------


def torch_sequence(kind: str, steps: int, **kw: Any) -> list[float]:
    """The per-step rates ``torch.optim.lr_scheduler`` gives for one optimizer at lr 1e-2."""
    from torch.optim import lr_scheduler as lrs

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    if kind == "cosine":
        warm = kw["warmup"]
        sched: Any = lrs.SequentialLR(
            opt,
            [
                lrs.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warm),
                lrs.CosineAnnealingLR(opt, T_max=steps - warm, eta_min=kw["min_lr"]),
            ],
            milestones=[warm],
        )
    else:
        sched = lrs.StepLR(opt, step_size=kw["step_size"], gamma=kw["gamma"])
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup_matches_torch_per_step(tmp_path: Path) -> None:
    watch = Watch()
    optim = {"algo": "sgd", "lr": 1e-2, "scheduler": "cosine", "warmup_steps": 3, "min_lr": 1e-4}
    with plugin_manager(Models(), watch):
        result = engine.fit(config(tmp_path, trainer={"epochs": 3}, optim=optim))
    steps = len(watch.lrs)
    assert [lr["a"] for lr in watch.lrs] == torch_sequence("cosine", steps, warmup=3, min_lr=1e-4)
    assert watch.lrs[-1]["b"] == watch.lrs[-1]["a"]  # the same schedule for both optimizers
    # Closed form at the last step, as a check on the reference itself.
    t, span = steps - 1 - 3, steps - 3
    assert watch.lrs[-1]["a"] == pytest.approx(1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * t / span)) / 2)
    assert "lr/a" in result.metrics


def test_per_optimizer_step_schedule_per_epoch(tmp_path: Path) -> None:
    watch = Watch()
    optim = {"algo": "sgd", "lr": 1e-2, "per_optimizer": {"b": {"scheduler": "step", "step_size": 1, "gamma": 0.5}}}
    with plugin_manager(Models(), watch):
        engine.fit(config(tmp_path, trainer={"epochs": 3}, optim=optim))
    per_epoch = len(watch.lrs) // 3
    assert {lr["a"] for lr in watch.lrs} == {1e-2}
    assert [watch.lrs[i * per_epoch]["b"] for i in range(3)] == [1e-2, 5e-3, 2.5e-3]


def test_schedule_resumes_exactly(tmp_path: Path) -> None:
    optim = {"algo": "sgd", "lr": 1e-2, "scheduler": "cosine", "warmup_steps": 2}
    straight, first, second = Watch(), Watch(), Watch()
    with plugin_manager(Models(), straight):
        engine.fit(config(tmp_path, name="straight", trainer={"epochs": 3}, optim=optim))
    with plugin_manager(Models(), first, Crash(at=1)), pytest.raises(KeyboardInterrupt):
        engine.fit(config(tmp_path, name="resumed", trainer={"epochs": 3}, optim=optim))
    with plugin_manager(Models(), second):
        engine.fit(config(tmp_path, name="resumed", trainer={"epochs": 3}, optim=optim))
    assert first.lrs + second.lrs == straight.lrs
    a, b = final(tmp_path, "straight"), final(tmp_path, "resumed")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_resume_with_a_changed_lr_rescales_the_schedule(tmp_path: Path) -> None:
    """PBT changes optim.lr between checkpoints: the schedule continues at the new scale."""
    optim = {"algo": "sgd", "lr": 1e-2, "scheduler": "cosine"}
    base, changed = Watch(), Watch()
    with plugin_manager(Models(), Crash(at=1)), pytest.raises(KeyboardInterrupt):
        engine.fit(config(tmp_path, name="r", trainer={"epochs": 3}, optim=optim))
    with plugin_manager(Models(), base):
        engine.fit(config(tmp_path, name="straight", trainer={"epochs": 3}, optim=optim))
    with plugin_manager(Models(), changed):
        engine.fit(config(tmp_path, name="r", trainer={"epochs": 3}, optim={**optim, "lr": 2e-2}))
    offset = len(base.lrs) - len(changed.lrs)
    for got, want in zip(changed.lrs, base.lrs[offset:], strict=True):
        assert got["a"] == pytest.approx(2 * want["a"])


def test_plateau_on_a_missing_metric_names_the_field(tmp_path: Path) -> None:
    optim = {"scheduler": "plateau", "plateau_metric": "val/nope"}
    with plugin_manager(Models()), pytest.raises(engine.ConfigError, match=r"optim\.plateau_metric.*val/nope.*val/mse"):
        engine.fit(config(tmp_path, optim=optim))


def test_plateau_reduces_when_the_metric_stalls(tmp_path: Path) -> None:
    watch = Watch()
    optim = {"algo": "sgd", "lr": 1e-2, "scheduler": "plateau", "plateau_metric": "val/mse", "plateau_mode": "max"}
    optim |= {"plateau_patience": 0, "gamma": 0.5}
    with plugin_manager(Models(), watch):
        engine.fit(config(tmp_path, trainer={"epochs": 3}, optim=optim))
    # val/mse falls, so in mode "max" the second validation is already worse than the first:
    # with patience 0 the third epoch runs at half the rate (ReduceLROnPlateau's own rule).
    per_epoch = len(watch.lrs) // 3
    assert [watch.lrs[i * per_epoch]["a"] for i in range(3)] == [1e-2, 1e-2, 5e-3]


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


# Dynamo's tracing reads .grad of its fake tensors and warns about it (torch-internal).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_compiled_losses_match_eager(tmp_path: Path) -> None:
    pytest.importorskip("torch._inductor")
    with plugin_manager(Models()):
        eager = engine.fit(config(tmp_path, name="eager", model={"dropout": 0.0}, trainer={"epochs": 1}))
        compiled = engine.fit(
            config(tmp_path, name="compiled", model={"dropout": 0.0}, trainer={"epochs": 1, "compile": True})
        )
    for key in ("train/a/loss", "train/b/loss", "val/mse"):
        assert compiled.metrics[key] == pytest.approx(eager.metrics[key], rel=1e-4, abs=1e-6), key
    # The checkpoint of a compiled run holds the plain sub-networks' keys.
    assert final(tmp_path, "compiled")["model"].keys() == final(tmp_path, "eager")["model"].keys()


def test_a_platform_that_cannot_compile_gets_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with plugin_manager(Models()), pytest.raises(engine.ConfigError, match=r"trainer\.compile.*cannot compile.*C\+\+"):
        engine.fit(config(tmp_path, trainer={"compile": True}))
    assert not (tmp_path / "run").exists()
