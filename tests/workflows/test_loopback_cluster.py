"""The loopback cluster of ``ray_up_local.sh`` is ``cluster.local.yaml`` with only addresses, SSH and paths changed."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from loopback_cluster import COMMAND_KEYS, head_flags, loopback_config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARGS: dict[str, Any] = {
    "root": str(ROOT),
    "scratch": "/tmp/gtu-scratch",
    "ssh_port": 31000,
    "ray_port": 31001,
    "dashboard_port": 31002,
    "user": "someone",
    "key": "/tmp/gtu-scratch/id",
    "temp_dir": "/tmp/gtu-31001",
}


def source() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_only_addresses_ssh_and_paths_change() -> None:
    src = source()
    out = loopback_config(src, **ARGS)
    changed = {"cluster_name", "provider", "max_workers", "auth", "file_mounts", *COMMAND_KEYS}
    assert {k: v for k, v in out.items() if k not in changed} == {k: v for k, v in src.items() if k not in changed}
    assert out["provider"] == {**src["provider"], "head_ip": "127.0.0.1", "worker_ips": []}
    assert out["auth"] == {"ssh_user": "someone", "ssh_private_key": ARGS["key"], "ssh_proxy_command": "nc %h 31000"}
    assert out["file_mounts"] == {"/tmp/gtu-scratch/gentrain": str(ROOT), "~/.ray/auth_token": "~/.ray/auth_token"}
    flags = head_flags(ARGS["temp_dir"], ARGS["dashboard_port"])
    for key in COMMAND_KEYS:
        assert len(out[key]) == len(src.get(key) or []), key
        for original, command in zip(src.get(key) or [], out[key], strict=True):
            back = command.removesuffix(flags).replace("/tmp/gtu-scratch/", "~/").replace("31001", "6379")
            assert back == original, key
    head = " ".join(out["head_start_ray_commands"])
    assert "--port=31001" in head
    assert "--temp-dir=/tmp/gtu-31001" in head
    assert "6379" not in head
    setup = " ".join(out["setup_commands"])
    assert "/tmp/gtu-scratch/venv/bin/pip install" in setup
    assert "-e /tmp/gtu-scratch/gentrain" in setup
    # The login shell's files stay where the head's login shell reads them.
    assert "~/.bashrc" in setup
    assert "gentrain-venv" in setup


def test_ray_accepts_it_and_every_command_is_valid_bash() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    out = loopback_config(source(), **ARGS)
    validate_config(out)
    validate_config(prepare_config(copy.deepcopy(out)))
    for key in COMMAND_KEYS:
        for command in out[key]:
            proc = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert proc.returncode == 0, f"{key}: {command!r}: {proc.stderr}"


def test_the_script_writes_the_same_config() -> None:
    order = ("root", "scratch", "ssh_port", "ray_port", "dashboard_port", "user", "key", "temp_dir")
    argv = [str(ARGS[k]) for k in order]
    proc = subprocess.run(
        [sys.executable, str(HERE / "loopback_cluster.py"), *argv], capture_output=True, text=True, check=True
    )
    assert yaml.safe_load(proc.stdout) == loopback_config(source(), **ARGS)
