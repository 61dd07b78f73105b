"""A representative subset as a user runs it: ``python -m engine.cli`` in a fresh process, nothing reachable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adversarial.conftest import TINY, refused, run_subprocess


def _bomb() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


FILES = {
    "bomb.yaml": _bomb(),
    "payload.yaml": "model: !!python/object/apply:os.system ['touch {tmp}/pwned']\n",
    "latin1.yaml": "model:\n  name: caf\xe9\n",
    "reversed.yaml": "optim.lr: {loguniform: [1e-2, 1e-4]}\n",
    "deep.yaml": "a: " + "[" * 3000 + "]" * 3000 + "\n",
}

CASES = [
    ("alias-bomb", ["fit", "{tmp}/bomb.yaml"], "aliases"),
    ("python-payload", ["fit", "{tmp}/payload.yaml"], "payload.yaml"),
    ("not-utf8", ["fit", "{tmp}/latin1.yaml"], "not UTF-8"),
    ("deep", ["fit", "{tmp}/deep.yaml"], "deeper than"),
    ("run-name-escapes", ["fit", *TINY, "run.name=../../x"], "run.name"),
    ("bool-for-int", ["fit", *TINY, "trainer.epochs=true"], "trainer.epochs"),
    ("past-int64", ["fit", *TINY, f"trainer.seed={2**64}"], "trainer.seed"),
    ("reversed-space-readme-form", ["tune", *TINY, "--space", "{tmp}/reversed.yaml", "tune.scheduler=pbt"], "reversed"),
    ("resume-must", ["fit", *TINY, "run.resume=must", "run.name=none"], "run.resume=must"),
    ("output-dir-a-file", ["fit", *TINY, "run.output_dir={tmp}/bomb.yaml"], "run.output_dir"),
]


@pytest.mark.parametrize(("argv", "name"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_a_fresh_process(tmp_path: Path, argv: list[str], name: str) -> None:
    for file, text in FILES.items():
        (tmp_path / file).write_text(text.format(tmp=tmp_path) if file == "payload.yaml" else text, encoding="latin-1")
    out = tmp_path / "out"
    full = [a.format(tmp=tmp_path) for a in argv]
    if not any(a.startswith("run.output_dir=") for a in full):
        full.append(f"run.output_dir={out}")
    outcome = run_subprocess(full, cwd=tmp_path)
    refused(outcome, name, absent=[out, tmp_path / "pwned"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # nothing else was written
