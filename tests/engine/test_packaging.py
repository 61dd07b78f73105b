"""Packaging for plugin authors (issue #17): the editable install mypy can see, the CI step, the test extra."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "gentrain-tiny"
INSTALL = "-e '.[dev]' --config-settings editable_mode=compat"


def test_ci_and_readme_install_gentrain_the_same_way() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert f"pip install -q torch==2.13.0 {INSTALL}" in ci
    assert f"pip install torch==2.13.0 {INSTALL}" in readme
    assert "(cd tests/fixtures/gentrain-tiny && ../../../.venv/bin/mypy --strict gentrain_tiny)" in ci


def test_the_test_extra_brings_pytest() -> None:
    line = re.search(r"^test = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert line is not None, "pyproject.toml has no test extra"
    assert re.search(r'"pytest\b', line.group(1))


def _editable_is_a_path_entry() -> bool:
    """Whether gentrain's editable install is a plain path entry (compat mode), not an import-hook finder."""
    site = Path(sysconfig.get_paths()["purelib"])
    pth = list(site.glob("__editable__.gentrain-*.pth")) + list(site.glob("gentrain*.pth"))
    return any(not f.read_text().lstrip().startswith("import ") for f in pth)


def test_mypy_strict_on_the_fixture_plugin_finds_engine() -> None:
    """The CI step: a third-party plugin type-checks against the editable gentrain install."""
    if not _editable_is_a_path_entry():
        pytest.skip(
            "gentrain is installed with an import-hook editable finder, which mypy cannot follow; "
            "reinstall it as the README says: pip install -e . --config-settings editable_mode=compat"
        )
    mypy = Path(sys.executable).with_name("mypy")
    out = subprocess.run(
        [str(mypy), "--strict", "gentrain_tiny"], cwd=FIXTURE, capture_output=True, text=True, timeout=600
    )
    assert 'Cannot find implementation or library stub for module named "engine"' not in out.stdout
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
