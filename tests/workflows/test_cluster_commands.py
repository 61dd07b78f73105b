"""Every shell command of the cluster files reaches the shell as valid bash.

The cluster launcher runs each entry as one shell command line, after YAML
parsing: a ` #` inside a plain scalar starts a YAML comment and silently cuts
the command short (an unclosed quote, and `ray up` fails at setup). So the
check runs on the parsed strings, with ``bash -n``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ["cluster.yaml", "cluster.local.yaml"]
COMMAND_KEYS = [
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
]


def commands(name: str) -> list[tuple[str, str]]:
    config = yaml.safe_load((ROOT / name).read_text())
    out: list[tuple[str, str]] = []
    for key in COMMAND_KEYS:
        entries = config.get(key) or []
        assert isinstance(entries, list), f"{name}: {key} must be a list"
        for i, command in enumerate(entries):
            assert isinstance(command, str), f"{name}: {key}[{i}] = {command!r} is not a string"
            out.append((f"{key}[{i}]", command))
    # A node type may carry its own worker_setup_commands.
    for node_type, spec in (config.get("available_node_types") or {}).items():
        for i, command in enumerate(spec.get("worker_setup_commands") or []):
            out.append((f"available_node_types.{node_type}.worker_setup_commands[{i}]", command))
    return out


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", FILES)
def test_every_command_is_valid_bash(name: str) -> None:
    found = commands(name)
    assert found, f"{name} has no commands"
    bad = []
    for where, command in found:
        proc = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        if proc.returncode != 0:
            bad.append(f"{where}: {command!r}\n    {proc.stderr.strip()}")
    assert not bad, f"{name}: commands the shell rejects:\n" + "\n".join(bad)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", FILES)
def test_login_shells_get_the_venv_and_token_auth_once(name: str, tmp_path: Path) -> None:
    # `ray submit` runs a bare `python`, `ray down` a bare `ray stop`, in a login shell;
    # `ray up` reruns setup_commands on every call.
    setup = [c for _, c in commands(name) if "~/.bashrc" in c]
    assert setup
    (tmp_path / ".bashrc").write_text("# existing\n")
    for _ in range(2):
        for command in setup:
            subprocess.run(["bash", "-c", command], check=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    lines = (tmp_path / ".bashrc").read_text().splitlines()
    assert lines == ["# existing", "source ~/venv/bin/activate  # gentrain-venv", "export RAY_AUTH_MODE=token"]
