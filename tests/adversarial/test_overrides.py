"""Dotted overrides a user can type: each refused by name, exit 2, one line, nothing written, nothing trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.conftest import TINY, refused


def _bomb(levels: int = 7) -> str:
    parts = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        parts.append(f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "[" + ", ".join(parts) + "]"


# (override, what the message must name)
RUN_NAMES = [
    ("run.name=..", "run.name"),
    ("run.name=.", "run.name"),
    ("run.name=../escape", "run.name"),
    ("run.name=a/b", "run.name"),
    ("run.name=/tmp/absolute", "run.name"),
    ("run.name=a\\b", "run.name"),
    ("run.name=a\x00b", "run.name"),
    ("run.name=" + "x" * 300, "run.name"),
    ("run.name=with space", "run.name"),
    ("run.name=tab\tname", "run.name"),
    ("run.name=.hidden", "run.name"),
    ("run.name=-dash", "run.name"),
    ("run.name=~user", "run.name"),
    ("run.name='名前/x'", "run.name"),
    ("run.name=''", "run.name"),
    ("run.name=[a, b]", "run.name"),
]

BOOLEANS = [
    ("trainer.epochs=true", "trainer.epochs"),
    ("trainer.batch_size=false", "trainer.batch_size"),
    ("trainer.seed=true", "trainer.seed"),
    ("trainer.max_steps=true", "trainer.max_steps"),
    ("trainer.clip_grad_norm=true", "trainer.clip_grad_norm"),
    ("trainer.accumulate_grad_batches=true", "trainer.accumulate_grad_batches"),
    ("optim.lr=true", "optim.lr"),
    ("optim.weight_decay=false", "optim.weight_decay"),
    ("optim.betas=[true, 0.9]", "optim.betas.0"),
    ("scaling.num_workers=true", "scaling.num_workers"),
    ("scaling.cpus_per_worker=true", "scaling.cpus_per_worker"),
    ("data.val_fraction=true", "data.val_fraction"),
    ("data.n=true", "data.n"),
    ("data.limit=true", "data.limit"),
    ("model.latent_dim=true", "model.latent_dim"),
    ("model.hidden=[true, 8]", "model.hidden.0"),
]

HUGE_INTS = [
    (f"trainer.seed={2**63}", "trainer.seed"),
    (f"trainer.epochs={10**30}", "trainer.epochs"),
    (f"data.split_seed={-(2**64)}", "data.split_seed"),
    (f"model.latent_dim={10**20}", "model.latent_dim"),
    (f"trainer.max_steps={2**64}", "trainer.max_steps"),
    (f"data.seed={10**40}", "data.seed"),
]

OUT_OF_RANGE = [
    ("model.name=vea", "model.name"),
    ("data.name=shapez", "data.name"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("optim.algo=adamm", "optim.algo"),
    ("run.resume=sometimes", "run.resume"),
    ("trainer.epochs=-1", "trainer.epochs"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.lr=inf", "optim.lr"),
    ("optim.lr=1e400", "optim.lr"),
    ("data.val_fraction=1", "data.val_fraction"),
    ("data.val_fraction=-0.1", "data.val_fraction"),
    ("trainer.batch_size=100000", "trainer.batch_size"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.betas=0.9", "optim.betas"),
    ("model.hidden=abc", "model.hidden"),
    ("data.size=4", "data.size"),
    ("trainer.precision=fp16", "trainer.precision"),
    ("trainer.epochs=[1, 2]", "trainer.epochs"),
    ("trainer.epochs={a: 1}", "trainer.epochs"),
]

SYNTAX = [
    ("trainer.epochs", "trainer.epochs"),
    ("=5", "=5"),
    ("nosection.x=1", "nosection"),
    ("trainer.epochs.deeper=1", "trainer.epochs"),
    ("trainer.bogus=1", "trainer.bogus"),
    ("model.hiden=[8]", "model.hiden"),
    ("optim.per_optimizer.disc.lr=0.1", "optim.per_optimizer.disc"),
    ("optim.per_optimizer.train.lrr=0.1", "optim.per_optimizer.train"),
    ("optim.per_optimizer=5", "optim.per_optimizer"),
    ("model.hidden=" + _bomb(), "<override>"),
    ("model.hidden=" + "[" * 200 + "]" * 200, "<override>"),
    ("model.hidden=&a [*a]", "<override>"),
    ("model.hidden=" + "x" * 200_000, "model.hidden"),
]

CROSS_SECTION = [
    (["data.val_fraction=0", "callbacks.early_stopping_metric=val/mse"], "callbacks.early_stopping_metric"),
    (["data.val_fraction=0", "optim.scheduler=plateau", "optim.plateau_metric=val/loss"], "optim.plateau_metric"),
]

CASES = RUN_NAMES + BOOLEANS + HUGE_INTS + OUT_OF_RANGE + SYNTAX


@pytest.mark.parametrize(("override", "name"), CASES, ids=[f"{i:03d}" for i in range(len(CASES))])
def test_override_is_refused(cli: Any, tmp_path: Path, override: str, name: str) -> None:
    out = tmp_path / "out"
    outcome = cli(["fit", *TINY, f"run.output_dir={out}", override])
    refused(outcome, name, absent=[out])


@pytest.mark.parametrize(("overrides", "name"), CROSS_SECTION, ids=["early-stopping", "plateau"])
def test_cross_section_rules(cli: Any, tmp_path: Path, overrides: list[str], name: str) -> None:
    out = tmp_path / "out"
    refused(cli(["fit", *TINY, f"run.output_dir={out}", *overrides]), name, "data.val_fraction=0", absent=[out])


def test_per_optimizer_names_an_optimizer_the_model_has(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    tiny = [a for a in TINY if not a.startswith("model.")]
    args = ["fit", *tiny, "model.name=twonets", f"run.output_dir={out}"]
    refused(
        cli([*args, "optim.per_optimizer.dics.lr=0.1"]), "optim.per_optimizer.dics", "did you mean 'disc'", absent=[out]
    )
    ok = cli([*args, "optim.per_optimizer.disc.lr=0.1", "--check"])
    assert ok.code == 0, ok.err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "--bogus"],
        ["fit", "a.yaml", "b.yaml"],
        ["fit", "--check", "x=1", "stray"],
        ["plugins", "x=1"],
    ],
    ids=["unknown-option", "two-configs", "stray-word", "override-on-plugins"],
)
def test_arguments_the_cli_does_not_take(cli: Any, argv: list[str]) -> None:
    outcome = cli(argv)
    assert outcome.code == 2
    assert "Traceback" not in outcome.err
    assert "error" in outcome.err


def test_overrides_are_taken_in_any_position(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # After an option, between options, before the config: all one override list.
    ok = cli(["fit", "--check", *TINY, f"run.output_dir={out}"])
    assert ok.code == 0, ok.err
    ok = cli(["fit", *TINY[:2], "--check", *TINY[2:], f"run.output_dir={out}"])
    assert ok.code == 0, ok.err
    assert "ae on 64 shapes images" in ok.out
    assert not out.exists()
