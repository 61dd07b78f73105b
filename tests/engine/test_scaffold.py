"""``gentrain new-plugin``: the package it writes installs, is listed, passes its own tests and trains (issue #17).

The package is pip-installed with ``--target`` into a temporary folder put on
``PYTHONPATH`` of the subprocesses, so the shared test virtualenv is never
changed for other tests running at the same time; entry points are found there
exactly as in site-packages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine import cli
from engine.scaffold import new_plugin

BIN = Path(sys.executable).parent


def test_new_plugin_installs_lists_passes_its_contract_and_trains(tmp_path: Path) -> None:
    assert cli.main(["new-plugin", "blobby", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "gentrain-blobby"
    for rel in ("pyproject.toml", "README.md", "gentrain_blobby/model/model.py", "tests/test_blobby.py"):
        assert (root / rel).is_file(), rel
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(root),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }

    listed = subprocess.run(
        [str(BIN / "gentrain"), "plugins", "--json"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    data = json.loads(listed.stdout)
    assert any(p["name"] == "blobby" and p["distribution"] == "gentrain-blobby" for p in data["plugins"])
    model = next(m for m in data["models"] if m["name"] == "blobby")
    assert [f["name"] for f in model["fields"]] == ["latent_dim", "hidden", "recon_loss"]
    assert model["fields"][0]["doc"] == "Size of the code."

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(root / "tests")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "test_ddp_matches_one_process PASSED" in tests.stdout
    assert re.search(r"\b7 passed", tests.stdout), tests.stdout[-1000:]

    fit = subprocess.run(
        [
            str(BIN / "gentrain"),
            "fit",
            "model.name=blobby",
            "data.name=shapes",
            "data.n=256",
            "data.size=16",
            "trainer.epochs=1",
            "trainer.batch_size=32",
            f"run.output_dir={tmp_path / 'runs'}",
            "run.name=blob",
            "callbacks.tensorboard=false",
            "callbacks.sample_every=0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert list((tmp_path / "runs" / "blob" / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("name", ["Blob", "1blob", "class", "my-model"])
def test_new_plugin_refuses_a_name_that_is_no_lowercase_identifier(name: str, tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError, match="lowercase Python identifier"):
        new_plugin(name, tmp_path)


def test_new_plugin_never_writes_into_a_folder_that_holds_files(tmp_path: Path) -> None:
    (tmp_path / "gentrain-blob").mkdir()
    (tmp_path / "gentrain-blob" / "keep.txt").write_text("mine")
    assert cli.main(["new-plugin", "blob", "--dir", str(tmp_path)]) == 2
    assert (tmp_path / "gentrain-blob" / "keep.txt").read_text() == "mine"
