"""Typed config: YAML round trip, dotted overrides, and errors that name field, value and what is allowed."""

from __future__ import annotations

import gzip
import math
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field

import engine
from engine import config as cfg
from engine.plugins import current
from engine.testing import plugin_manager


@dataclass(frozen=True)
class ToyConfig(engine.ModelConfig):
    latent_dim: engine.PositiveInt = 8
    arch: Literal["mlp", "conv"] = "mlp"
    hidden: tuple[engine.PositiveInt, ...] = (32, 16)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    recon_loss: Annotated[str, engine.LossName("reconstruction")] = "bce"


class Toy(engine.Model):
    pass


class ToyPlugin:
    @engine.hookimpl
    def gentrain_register_models(self, registry: engine.Registry[Any]) -> None:
        registry.add("toy", Toy, ToyConfig)
        registry.add("toy_vae", Toy, ToyConfig)


@pytest.fixture(autouse=True)
def toy() -> Any:
    with plugin_manager(ToyPlugin()) as pm:
        yield pm


def problems(raw: dict[str, Any]) -> dict[str, tuple[object, str]]:
    with pytest.raises(engine.ConfigError) as info:
        cfg.resolve(raw, current())
    return {field: (value, allowed) for field, value, allowed in info.value.problems}


def test_defaults_resolve_and_round_trip_through_yaml(tmp_path: Path) -> None:
    c = cfg.resolve({"model": {"name": "toy"}}, current())
    assert c.model.params == ToyConfig()
    assert c.data.name == "shapes"
    assert c.data.params.n == 10_000
    path = tmp_path / "c.yaml"
    c.save(path)
    assert cfg.resolve(cfg.read_yaml(path), current()) == c
    assert "latent_dim: 8" in path.read_text()


def test_dotted_overrides_are_typed() -> None:
    raw = cfg.build_raw(
        {"model": {"name": "toy"}},
        ["model.latent_dim=32", "trainer.epochs=5", "optim.lr=1e-4", "model.hidden=[8,4]", "model.arch=conv"],
    )
    c = cfg.resolve(raw, current())
    assert c.model.params.latent_dim == 32
    assert c.model.params.hidden == (8, 4)
    assert c.trainer.epochs == 5
    assert c.optim.lr == pytest.approx(1e-4)
    assert c.replace({"model.latent_dim": 3}, current()).model.params.latent_dim == 3


def test_build_raw_does_not_mutate_its_input() -> None:
    base = {"model": {"name": "toy"}}
    cfg.build_raw(base, ["model.latent_dim=4"])
    assert base == {"model": {"name": "toy"}}


def test_unknown_model_suggests_close_names() -> None:
    found = problems({"model": {"name": "toyy"}})
    value, allowed = found["model.name"]
    assert value == "toyy"
    assert "did you mean 'toy'" in allowed
    assert "toy, toy_vae" in allowed.partition("known: ")[2]


def test_misspelled_choices_suggest_the_close_one() -> None:
    found = problems(
        {
            "model": {"name": "toy"},
            "optim": {"algo": "adamm"},
            "tune": {"scheduler": "ashaa"},
            "trainer": {"precision": "bf61"},
        }
    )
    assert found["optim.algo"] == (
        "adamm",
        "must be 'adam', 'adamw', 'sgd' or 'rmsprop' (did you mean 'adam' or 'adamw'?)",
    )
    assert found["tune.scheduler"] == ("ashaa", "must be 'asha', 'pbt' or 'none' (did you mean 'asha'?)")
    assert found["trainer.precision"] == ("bf61", "must be '32', 'bf16' or 'fp16' (did you mean 'bf16'?)")


def test_wrong_type_negative_size_and_unknown_key_are_each_named() -> None:
    found = problems(
        {
            "model": {"name": "toy", "latent_dim": -3, "hiden": [1]},
            "trainer": {"epochs": "many", "batch_size": 0},
            "optim": {"lr": math.nan},
        }
    )
    assert found["model.hiden"][1].startswith("unknown field (did you mean 'hidden'?)")
    assert found["trainer.epochs"] == ("many", "must be a valid integer, unable to parse string as an integer")
    assert found["trainer.batch_size"] == (0, "must be greater than 0")
    assert math.isnan(found["optim.lr"][0])  # type: ignore[arg-type]
    assert "finite" in found["optim.lr"][1]


def test_model_fields_are_checked_after_unknown_keys() -> None:
    found = problems({"model": {"name": "toy", "latent_dim": 0, "dropout": 1.5, "arch": "rnn"}})
    assert found["model.latent_dim"] == (0, "must be greater than 0")
    assert found["model.dropout"] == (1.5, "must be less than 1")
    assert found["model.arch"] == ("rnn", "must be 'mlp' or 'conv'")


def test_loss_names_are_checked_against_the_registry() -> None:
    found = problems({"model": {"name": "toy", "recon_loss": "bec"}})
    value, allowed = found["model.recon_loss"]
    assert value == "bec"
    assert "did you mean 'bce'" in allowed
    # A loss of another kind is not accepted for this field.
    assert "model.recon_loss" in problems({"model": {"name": "toy", "recon_loss": "hinge"}})


def test_unknown_sections_datasets_and_per_optimizer_fields() -> None:
    found = problems(
        {
            "model": {"name": "toy"},
            "trainr": {},
            "data": {"name": "mnits"},
            "optim": {"per_optimizer": {"disc": {"lr": -1, "betaz": [0.5, 0.9]}}},
        }
    )
    assert "did you mean 'trainer'" in found["trainr"][1]
    assert "did you mean 'mnist'" in found["data.name"][1]
    assert "optim.per_optimizer.disc.betaz" in found


def test_dataset_fields_validate_with_the_engine_fields() -> None:
    found = problems({"model": {"name": "toy"}, "data": {"name": "shapes", "size": 4, "val_frac": 0.1}})
    assert found["data.size"] == (4, "must be greater than or equal to 8")
    assert "did you mean 'val_fraction'" in found["data.val_frac"][1]


def test_missing_model_name_lists_the_models() -> None:
    assert "toy, toy_vae" in problems({})["model.name"][1].partition("one of: ")[2]


def test_per_optimizer_overrides() -> None:
    c = cfg.resolve(
        {"model": {"name": "toy"}, "optim": {"lr": 1e-3, "per_optimizer": {"disc": {"lr": 4e-4}}}}, current()
    )
    assert c.optim.for_optimizer("disc").lr == pytest.approx(4e-4)
    assert c.optim.for_optimizer("gen").lr == pytest.approx(1e-3)


def test_bad_override_syntax() -> None:
    with pytest.raises(engine.ConfigError, match=r"key\.path=value"):
        cfg.parse_overrides(["trainer.epochs"])


def test_cli_rejects_a_bad_config_before_training(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "fit",
            "model.name=vea",
            "trainer.epochs=-1",
            f"run.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "model.name = 'vea': unknown model (did you mean 'vae'?)" in out.stderr
    assert "trainer.epochs = -1: must be greater than 0" in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def _write_mnist_test_split(root: Path, images: bytes) -> None:
    """MNIST's test-split file names; ``images`` the (damaged) images file, labels intact."""
    root.mkdir()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + bytes(100)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def _truncated_idx(root: Path) -> None:
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 100, 28, 28)
    _write_mnist_test_split(root, gzip.compress(header + bytes(5000)))


def _corrupted_gzip(root: Path) -> None:
    good = bytearray(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 100, 28, 28) + bytes(78400)))
    good[30:60] = b"\xff" * 30
    _write_mnist_test_split(root, bytes(good))


@pytest.mark.parametrize(
    ("case", "args", "expected"),
    [
        (
            "batch-over-dataset",
            ["data.name=shapes", "data.n=100", "trainer.batch_size=64"],
            "trainer.batch_size = 64: batch_size × num_workers × accumulate_grad_batches = 128 exceeds "
            "the 90 training images of 'shapes'",
        ),
        (
            "missing-data-dir",
            ["data.name=mnist", "data.root={tmp}/absent"],
            "data.name = 'mnist', data.root = '{tmp}/absent': data root {tmp}/absent does not exist. "
            "Create it and copy the MNIST files into it, or set data.download=true to fetch them",
        ),
        (
            "truncated-idx",
            ["data.name=mnist", "data.root={tmp}/mnist", "data.split=test"],
            "data.root = '{tmp}/mnist': {tmp}/mnist/t10k-images-idx3-ubyte.gz: IDX file truncated: "
            "dimensions [100, 28, 28] need 78400 data bytes, found 5000",
        ),
        (
            "corrupted-gzip",
            ["data.name=mnist", "data.root={tmp}/mnist", "data.split=test"],
            "{tmp}/mnist/t10k-images-idx3-ubyte.gz is a corrupted gzip file",
        ),
    ],
)
def test_bad_data_fails_before_ray_starts(tmp_path: Path, case: str, args: list[str], expected: str) -> None:
    if case == "truncated-idx":
        _truncated_idx(tmp_path / "mnist")
    elif case == "corrupted-gzip":
        _corrupted_gzip(tmp_path / "mnist")
    out_dir = tmp_path / "out"
    command = [sys.executable, "-m", "engine.cli", "fit", "model.name=vae", "scaling.num_workers=2"]
    command += [a.format(tmp=tmp_path) for a in args] + [f"run.output_dir={out_dir}"]
    # Nothing listens on this address: reaching Ray at all would fail differently (or hang).
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    t0 = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert expected.format(tmp=tmp_path) in out.stderr
    assert out.stderr.startswith("gentrain: error: ")
    assert "Traceback" not in out.stderr
    assert not out_dir.exists()  # no run directory, no checkpoint, no log
    assert time.perf_counter() - t0 < 60


# -- property-based: the validator only ever raises its own error -----------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
field_names = st.sampled_from(
    [
        "name",
        "latent_dim",
        "hidden",
        "epochs",
        "batch_size",
        "lr",
        "betas",
        "per_optimizer",
        "size",
        "n",
        "root",
        "precision",
        "num_workers",
        "resume",
        "arch",
        "bogus",
    ]
)
sections = st.dictionaries(field_names, values, max_size=4)
configs = st.dictionaries(
    st.sampled_from(["model", "data", "optim", "trainer", "scaling", "run", "callbacks", "extra"]),
    st.one_of(sections, values),
    max_size=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_validator_never_crashes_with_anything_but_config_error(raw: dict[str, Any]) -> None:
    error: engine.ConfigError | None = None
    try:
        resolved = cfg.resolve(raw, current())
    except engine.ConfigError as e:
        error = e
    if error is None:
        assert isinstance(resolved, cfg.RunConfig)
        return
    assert error.problems
    for field, _, allowed in error.problems:
        assert isinstance(field, str)
        assert allowed
