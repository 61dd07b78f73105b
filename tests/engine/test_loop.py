"""The training loop: hook order, exact resume, accumulation, precision, non-finite losses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

import engine
from engine import checkpoint
from engine.plugins import current
from engine.testing import plugin_manager

# ---------------------------------------------------------------------------
# test plugins
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoPhaseConfig(engine.ModelConfig):
    hidden: engine.PositiveInt = 8
    repeats: engine.PositiveInt = 2
    dropout: float = 0.1
    noise: float = 0.05
    poison_step: int = -1  # training_step returns NaN at this step (non-finite loss tests)


class TwoPhase(engine.Model):
    """Two sub-networks, two phases ("a" repeated, "b" reusing a's batch), noise and dropout."""

    def __init__(self, config: TwoPhaseConfig, data: engine.DataSpec) -> None:
        super().__init__(config, data)
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(data.numel, config.hidden), nn.Dropout(config.dropout))
        self.dec = nn.Linear(config.hidden, data.numel)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def phases(self) -> list[engine.Phase]:
        return [engine.Phase("a", repeats=self.config.repeats), engine.Phase("b", new_batch=False)]

    def param_groups(self) -> dict[str, Any]:
        return {"a": self.enc.parameters(), "b": self.dec.parameters()}

    def training_step(self, batch: engine.Batch, phase: str) -> dict[str, Tensor]:
        x, _ = batch
        self.calls += 1
        z = self.enc(x + self.config.noise * self.batch_randn(x.shape[0], *x.shape[1:]))
        loss = (self.dec(z) - x.flatten(1)).pow(2).mean()
        if int(self.calls) == self.config.poison_step:
            loss = loss * float("nan")
        return {"loss": loss, "extra": loss.detach() * 2}

    def validation_step(self, batch: engine.Batch) -> dict[str, Tensor]:
        x, _ = batch
        return {"mse": (self.dec(self.enc(x)) - x.flatten(1)).pow(2).mean()}

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.dec(self.enc(x)).view_as(x).clamp(0, 1)


class Models:
    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("twophase", TwoPhase, TwoPhaseConfig)


class Recorder:
    """Records every trainer event in the order it fires."""

    def __init__(self) -> None:
        self.events: list[str] = []

    @engine.hookimpl
    def gentrain_on_fit_start(self) -> None:
        self.events.append("fit_start")

    @engine.hookimpl
    def gentrain_on_train_epoch_start(self, epoch: int) -> None:
        self.events.append(f"epoch_start:{epoch}")

    @engine.hookimpl
    def gentrain_on_train_batch_start(self, step: int) -> None:
        self.events.append(f"batch_start:{step}")

    @engine.hookimpl
    def gentrain_on_before_optimizer_step(self, phase: str) -> None:
        self.events.append(f"before_optimizer_step:{phase}")

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, step: int, losses: dict[str, Tensor]) -> None:
        self.events.append(f"batch_end:{step}:{','.join(sorted(losses))}")

    @engine.hookimpl
    def gentrain_on_train_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.events.append(f"epoch_end:{epoch}")

    @engine.hookimpl
    def gentrain_on_validation_start(self, epoch: int) -> None:
        self.events.append(f"validation_start:{epoch}")

    @engine.hookimpl
    def gentrain_on_validation_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.events.append(f"validation_end:{epoch}")

    @engine.hookimpl
    def gentrain_on_save_checkpoint(self, state: dict[str, Any]) -> None:
        self.events.append(f"save_checkpoint:{state['step']}")

    @engine.hookimpl
    def gentrain_on_load_checkpoint(self, state: dict[str, Any]) -> None:
        self.events.append(f"load_checkpoint:{state['step']}")

    @engine.hookimpl
    def gentrain_on_fit_end(self) -> None:
        self.events.append("fit_end")

    @engine.hookimpl
    def gentrain_on_exception(self, error: BaseException) -> None:
        self.events.append(f"exception:{type(error).__name__}")


def config(tmp_path: Path, name: str = "run", **sections: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "twophase"},
        "data": {"name": "shapes", "n": 40, "size": 8, "val_fraction": 0.2},
        "trainer": {"epochs": 2, "batch_size": 8, "seed": 3},
        "run": {"output_dir": str(tmp_path), "name": name},
        "callbacks": {"progress": False, "tensorboard": False, "csv": False, "sample_every": 0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


@pytest.fixture
def recorder() -> Any:
    rec = Recorder()
    with plugin_manager(Models(), rec):
        yield rec


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------


def test_hook_order(tmp_path: Path, recorder: Recorder) -> None:
    """The order documented in the README's loop pseudocode and engine/loop.py."""
    engine.fit(config(tmp_path))
    # 32 training images, batch 8 -> 4 batches; phase "a" draws 2 per step -> 2 steps per epoch.
    step = ["before_optimizer_step:a", "before_optimizer_step:a", "before_optimizer_step:b"]
    keys = "a/extra,a/loss,b/extra,b/loss"
    expected = ["fit_start"]
    for epoch in range(2):
        expected.append(f"epoch_start:{epoch}")
        for s in (2 * epoch, 2 * epoch + 1):
            expected += [f"batch_start:{s}", *step, f"batch_end:{s}:{keys}"]
        expected += [f"validation_start:{epoch}", f"validation_end:{epoch}", f"epoch_end:{epoch}"]
        expected.append(f"save_checkpoint:{2 * epoch + 2}")
    expected.append("fit_end")
    assert recorder.events == expected


def test_hook_order_when_resuming_and_on_error(tmp_path: Path, recorder: Recorder) -> None:
    engine.fit(config(tmp_path, trainer={"epochs": 1}))
    recorder.events.clear()
    engine.fit(config(tmp_path, trainer={"epochs": 2}))
    assert recorder.events[:3] == ["load_checkpoint:2", "fit_start", "epoch_start:1"]
    recorder.events.clear()
    with pytest.raises(engine.TrainingError, match="non-finite loss at step 0"):
        engine.fit(config(tmp_path, name="bad", model={"poison_step": 1}))
    assert recorder.events[-1] == "exception:TrainingError"
    assert "fit_end" not in recorder.events


def _final_state(tmp_path: Path, name: str) -> dict[str, Any]:
    path = checkpoint.latest(tmp_path / name / "checkpoints")
    assert path is not None
    return checkpoint.load(path)


def test_resume_is_exact(tmp_path: Path, recorder: Recorder) -> None:
    """2 epochs straight == 1 epoch, stop, resume, 1 more epoch: bit for bit."""
    engine.fit(config(tmp_path, name="straight", trainer={"epochs": 2}))
    engine.fit(config(tmp_path, name="resumed", trainer={"epochs": 1}))
    engine.fit(config(tmp_path, name="resumed", trainer={"epochs": 2}))
    a, b = _final_state(tmp_path, "straight"), _final_state(tmp_path, "resumed")
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for name in ("a", "b"):
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        for idx in sa:
            assert torch.equal(sa[idx]["exp_avg"], sb[idx]["exp_avg"])
    assert a["metrics"]["val/mse"] == b["metrics"]["val/mse"]
    # The untouched run would differ: resuming is not trivially equal.
    engine.fit(config(tmp_path, name="other-seed", trainer={"epochs": 2, "seed": 4}))
    c = _final_state(tmp_path, "other-seed")
    assert not torch.equal(a["model"]["dec.weight"], c["model"]["dec.weight"])


def test_resume_never_and_must(tmp_path: Path, recorder: Recorder) -> None:
    engine.fit(config(tmp_path, trainer={"epochs": 1}))
    recorder.events.clear()
    engine.fit(config(tmp_path, trainer={"epochs": 1}, run={"resume": "never"}))
    assert recorder.events[0] == "fit_start"
    with pytest.raises(engine.CheckpointError, match="no checkpoint exists"):
        engine.fit(config(tmp_path, name="fresh", run={"resume": "must"}))


def test_gradient_accumulation_matches_a_larger_batch(tmp_path: Path, recorder: Recorder) -> None:
    """k micro-batches of B, each loss scaled by 1/k, update like one batch of k·B."""
    common = {"model": {"dropout": 0.0, "noise": 0.0, "repeats": 1}, "data": {"n": 80}}
    engine.fit(config(tmp_path, name="big", trainer={"batch_size": 16, "epochs": 1}, **common))
    engine.fit(
        config(tmp_path, name="accum", trainer={"batch_size": 8, "accumulate_grad_batches": 2, "epochs": 1}, **common)
    )
    a, b = _final_state(tmp_path, "big"), _final_state(tmp_path, "accum")
    assert a["step"] == b["step"]
    for key in a["model"]:
        if a["model"][key].is_floating_point():
            assert torch.allclose(a["model"][key], b["model"][key], atol=1e-6), key
    # ...and differently from plain batches of 8 (the test can fail).
    engine.fit(config(tmp_path, name="small", trainer={"batch_size": 8, "epochs": 1}, **common))
    c = _final_state(tmp_path, "small")
    assert not torch.allclose(a["model"]["dec.weight"], c["model"]["dec.weight"], atol=1e-6)


def test_bf16_autocast_trains(tmp_path: Path, recorder: Recorder) -> None:
    result = engine.fit(config(tmp_path, trainer={"precision": "bf16", "epochs": 1}))
    assert result.metrics["val/mse"] == pytest.approx(result.metrics["val/mse"])  # finite, not NaN
    assert result.metrics["val/mse"] < 1


def test_fp16_on_cpu_is_refused_before_training(tmp_path: Path, recorder: Recorder) -> None:
    with pytest.raises(engine.ConfigError, match=r"trainer.precision = 'fp16': needs a GPU"):
        engine.fit(config(tmp_path, trainer={"precision": "fp16"}))
    assert recorder.events == []


def test_nan_policy_skip_skips_the_update(tmp_path: Path, recorder: Recorder) -> None:
    result = engine.fit(config(tmp_path, model={"poison_step": 2}, trainer={"nan_policy": "skip", "epochs": 1}))
    assert result.metrics["step"] == 2.0
    assert torch.isfinite(torch.tensor(result.metrics["val/mse"]))


def test_nan_loss_raises_by_default_naming_step_phase_and_loss(tmp_path: Path, recorder: Recorder) -> None:
    # Calls 1-2 are step 0's phase "a" (repeated), call 3 its phase "b", call 4 step 1's first "a".
    with pytest.raises(
        engine.TrainingError,
        match=r"non-finite loss at step 1, epoch 0, phase 'a': \{'loss': nan, 'extra': nan\}; .*"
        r"trainer\.nan_policy=skip",
    ):
        engine.fit(config(tmp_path, model={"poison_step": 4}))
    assert recorder.events[-1] == "exception:TrainingError"
    # No checkpoint of NaN weights, and no run directory: the run failed before its first checkpoint.
    assert not (tmp_path / "run").exists()


class StepLosses:
    """The logged losses of every training step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    @engine.hookimpl
    def gentrain_on_train_batch_end(self, losses: dict[str, torch.Tensor]) -> None:
        self.steps.append({k: float(v) for k, v in losses.items()})


def test_skipped_phase_leaves_the_epoch_means_of_the_other_steps(tmp_path: Path) -> None:
    seen = StepLosses()
    with plugin_manager(Models(), seen):
        # 64 training images, 2 batches of 8 a step ("a" draws a new batch per repeat): 4 steps.
        # Call 3 is step 0's phase "b": that update is skipped, the other 3 steps' "b" losses count.
        cfg = config(tmp_path, model={"poison_step": 3}, data={"n": 80}, trainer={"nan_policy": "skip", "epochs": 1})
        result = engine.fit(cfg)
    assert "b/loss" not in seen.steps[0]
    b_losses = [step["b/loss"] for step in seen.steps[1:]]
    assert len(b_losses) == 3
    assert result.metrics["train/b/loss"] == pytest.approx(sum(b_losses) / 3, rel=1e-6)
    a_losses = [step["a/loss"] for step in seen.steps]
    assert result.metrics["train/a/loss"] == pytest.approx(sum(a_losses) / 4, rel=1e-6)


class ParameterDelta:
    """How far each sub-network's parameters moved between fit start and fit end."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.moved: dict[str, float] = {}

    @engine.hookimpl
    def gentrain_on_fit_start(self, trainer: Any) -> None:
        self.before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}

    @engine.hookimpl
    def gentrain_on_fit_end(self, trainer: Any) -> None:
        for part in ("enc", "dec"):
            diffs = [v.detach() - self.before[k] for k, v in trainer.model.named_parameters() if k.startswith(part)]
            self.moved[part] = float(torch.cat([d.flatten() for d in diffs]).norm())


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_clipping_bounds_every_update(tmp_path: Path, clip: float | None) -> None:
    delta = ParameterDelta()
    with plugin_manager(Models(), delta):
        engine.fit(
            config(
                tmp_path,
                model={"dropout": 0.0},
                optim={"algo": "sgd", "lr": 1.0},
                trainer={"max_steps": 1, "epochs": 1, "clip_grad_norm": clip},
            )
        )
    # One step: 2 SGD updates of "enc" (phase "a" repeats), 1 of "dec"; each moves at most lr × clip.
    if clip is None:
        assert delta.moved["enc"] > 20 * 1e-3, delta.moved  # the gradients clipping has to bound
        assert delta.moved["dec"] > 10 * 1e-3, delta.moved
    else:
        assert 0 < delta.moved["enc"] <= 2 * clip * (1 + 1e-5), delta.moved
        assert 0 < delta.moved["dec"] <= clip * (1 + 1e-5), delta.moved


def test_max_steps_and_clipping(tmp_path: Path, recorder: Recorder) -> None:
    result = engine.fit(config(tmp_path, trainer={"max_steps": 3, "epochs": 5, "clip_grad_norm": 0.5}))
    assert result.metrics["step"] == 3.0
    # Stopped after the first of epoch 1's two steps: 1 epoch done, the sampler position kept.
    assert result.metrics["epoch"] == 1.0
    state = checkpoint.load(result.checkpoint)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)


def test_run_directory_outputs(tmp_path: Path) -> None:
    with plugin_manager(Models()):
        result = engine.fit(
            config(tmp_path, callbacks={"csv": True, "tensorboard": True, "sample_every": 1}, data={"size": 16})
        )
        run = result.run_dir
        # The resolved config written to the run directory reads back to the same config.
        assert engine.resolve(yaml.safe_load((run / "config.yaml").read_text()), current()) == result.config
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == [
        "train/a/extra",
        "train/a/loss",
        "train/b/extra",
        "train/b/loss",
        "val/mse",
        "epoch",
        "step",
    ]
    assert len(lines) == 3  # header + 2 epochs
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "loss_curves.png").stat().st_size > 1000
    assert (run / "samples" / "epoch=0002-reconstructions.png").is_file()
    assert len(checkpoint.list_checkpoints(run / "checkpoints")) == 2


def test_early_stopping_stops(tmp_path: Path) -> None:
    with plugin_manager(Models()):
        result = engine.fit(
            config(
                tmp_path,
                trainer={"epochs": 30, "seed": 0},
                optim={"lr": 0.5, "algo": "sgd"},
                callbacks={
                    "early_stopping_metric": "val/mse",
                    "early_stopping_mode": "max",
                    "early_stopping_patience": 1,
                },
            )
        )
    # mode=max on a falling loss: the second epoch is already "worse", so it stops there.
    assert result.metrics["epoch"] == 2.0
