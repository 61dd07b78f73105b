"""``gentrain sample | eval | export | new-plugin | config show`` given runs and names that cannot work."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.conftest import refused


def _missing(tmp: Path) -> Path:
    return tmp / "absent"


def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile"


def _no_checkpoints(tmp: Path) -> Path:
    (tmp / "run").mkdir()
    return tmp / "run"


def _empty_checkpoint(tmp: Path) -> Path:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "step=000000001.pt").write_bytes(b"")
    return tmp / "run"


def _payload(tmp: Path) -> Path:
    class Payload:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {tmp / 'pwned'}",))

    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "step=000000001.pt").write_bytes(pickle.dumps({"format": 1, "x": Payload()}))
    return tmp / "run"


RUNS: dict[str, Callable[[Path], Path]] = {
    "missing": _missing,
    "a-file": _a_file,
    "no-checkpoints": _no_checkpoints,
    "empty-checkpoint": _empty_checkpoint,
    "pickle-payload": _payload,
}


@pytest.mark.parametrize("command", ["sample", "eval", "export"])
@pytest.mark.parametrize("make", list(RUNS), ids=list(RUNS))
def test_a_run_that_cannot_be_loaded(cli: Any, tmp_path: Path, command: str, make: str) -> None:
    run = RUNS[make](tmp_path)
    out = tmp_path / ("out.png" if command == "sample" else "out")
    extra = ["--out", str(out)] if command != "eval" else []
    refused(cli([command, str(run), *extra]), "RUN", absent=[out, tmp_path / "pwned"])


@pytest.mark.parametrize("name", ["../evil", "Upper", "class", "with-dash", ""])
def test_new_plugin_names_that_are_not_identifiers(cli: Any, tmp_path: Path, name: str) -> None:
    refused(cli(["new-plugin", name, "--dir", str(tmp_path / "np")]), "NAME", absent=[tmp_path / "np"])


def test_config_show_of_an_alias_bomb(cli: Any, tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    refused(cli(["config", "show", str(tmp_path / "bomb.yaml")]), "aliases")
