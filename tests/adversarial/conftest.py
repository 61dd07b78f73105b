"""Adversarial inputs through the real CLI: every one is refused with exit status 2 and one line.

``cli`` runs ``engine.cli.main(argv)`` in this process (captured output) with
gentrain's built-in plugins and the misbehaving ones of :mod:`bad_plugins`;
nothing may reach Ray (``engine.ray.cluster.connect`` and ``ray.init`` fail the
test) and, unless a case asks for it, nothing may train (``engine.loop.train``
fails the test). ``refused`` checks what the user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.testing import plugin_manager
from tests.adversarial.bad_plugins import BadModels

#: A run small enough to train in about a second: 64 procedural images, batch 8, one epoch.
TINY = [
    "model.name=ae",
    "model.hidden=[32]",
    "model.latent_dim=4",
    "data.name=shapes",
    "data.n=64",
    "data.size=16",
    "trainer.batch_size=8",
    "trainer.epochs=1",
    "callbacks.sample_every=0",
]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def message(self) -> str:
        return self.err.strip()


class NotAllowed(AssertionError):
    pass


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching Ray at all fails the test (and nothing listens on RAY_ADDRESS)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NotAllowed("Ray was started: the error must come before Ray")

    import ray

    from engine.ray import cluster

    monkeypatch.setattr(cluster, "connect", refuse)
    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def cli(no_ray: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``cli(argv, train=False)``: run the CLI in-process; returns an :class:`Outcome`."""
    import engine.loop

    real_train = engine.loop.train

    def run(argv: Sequence[str], *, train: bool = False) -> Outcome:
        def no_training(*args: Any, **kwargs: Any) -> Any:
            raise NotAllowed("training started: the error must come before it")

        monkeypatch.setattr(engine.loop, "train", real_train if train else no_training)
        from engine.cli import main

        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    with plugin_manager(BadModels()):
        yield run


def refused(outcome: Outcome, *names: str, absent: Sequence[Path] = ()) -> None:
    """Exit status 2, one ``gentrain: error:`` line naming each of ``names``, no traceback, nothing created."""
    message = outcome.message
    assert outcome.code == 2, (outcome.code, message, outcome.out)
    assert "Traceback" not in message + outcome.out, message
    lines = [line for line in message.splitlines() if not line.startswith("gentrain: note:")]
    assert len(lines) == 1, message
    assert lines[0].startswith(("gentrain: error: ", "gentrain ")), message
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert len(lines[0]) < 2500, len(lines[0])
    for path in absent:
        assert not path.exists(), f"{path} was created"


def run_subprocess(argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Outcome:
    """The CLI as a user runs it: ``python -m engine.cli ...`` in a fresh process (no Ray reachable)."""
    full_env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9", "PYTHONPATH": str(REPO), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        cwd=cwd or REPO,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)
