"""``cluster.local.yaml`` as a cluster of one machine: this one, over SSH to 127.0.0.1.

``ray_up_local.sh`` brings the shipped file up with ``ray up``, so what it
tests is the file users run. Only what a loopback needs changes:

- addresses: the head is 127.0.0.1 with no workers; Ray's GCS, dashboard,
  dashboard agent and client server ports are spare ones, and the head binds
  to 127.0.0.1;
- SSH: this user, the run's own key, and ``nc`` to the run's own sshd port
  (the launcher has no SSH-port option);
- paths: the head's ``~/venv`` and ``~/gentrain`` live in a scratch folder
  (the head's home is this machine's), the repository is synced from its
  absolute path, and Ray's temp dir is the run's own, so that only this
  cluster's processes are stopped; the cluster name carries the SSH port.

Every command stays as the file has it, with those paths and ports
substituted. ``~/.bashrc``, ``~/.ray/auth_token`` and
``~/ray_bootstrap_config.yaml`` keep their place: on a loopback the head's
are this machine's.

    python loopback_cluster.py ROOT SCRATCH SSH_PORT RAY_PORT DASHBOARD_PORT USER KEY TEMP_DIR > cluster.yaml
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
#: The head's paths that move into the scratch folder (``~/gentrain`` but not ``~/gentrain-runs``).
MOVED = re.compile(r"~/(venv|gentrain)(?![\w-])")
GCS_PORT = re.compile(r"(?<=[=:])6379\b")
HEAD_START = re.compile(r"\bray start --head\b")


def substitute(text: str, scratch: str, ray_port: int) -> str:
    """``text`` with the moved paths in ``scratch`` and the GCS port ``ray_port``."""
    return GCS_PORT.sub(str(ray_port), MOVED.sub(lambda m: f"{scratch}/{m.group(1)}", text))


def head_flags(temp_dir: str, dashboard_port: int) -> str:
    """What the loopback adds to ``ray start --head``: its own address, ports and temp dir.

    Other Ray clusters may run on this machine: the dashboard, its agent
    (default 52365) and the Ray client server (default 10001) get spare
    ports, ``dashboard_port`` and the next two.
    """
    return (
        f" --node-ip-address=127.0.0.1 --dashboard-port={dashboard_port}"
        f" --dashboard-agent-listen-port={dashboard_port + 1} --ray-client-server-port={dashboard_port + 2}"
        f" --temp-dir={temp_dir}"
    )


def loopback_config(
    source: dict[str, Any],
    *,
    root: str,
    scratch: str,
    ssh_port: int,
    ray_port: int,
    dashboard_port: int,
    user: str,
    key: str,
    temp_dir: str,
) -> dict[str, Any]:
    """The cluster config ``source`` (``cluster.local.yaml``) brought up on 127.0.0.1."""
    config = copy.deepcopy(source)
    config["cluster_name"] = f"{source['cluster_name']}-loopback-{ssh_port}"
    config["provider"] = {**source["provider"], "head_ip": "127.0.0.1", "worker_ips": []}
    config["max_workers"] = 0
    config["auth"] = {
        **source["auth"],
        "ssh_user": user,
        "ssh_private_key": key,
        "ssh_proxy_command": f"nc %h {ssh_port}",
    }
    config["file_mounts"] = {
        substitute(remote, scratch, ray_port): root if local == "." else local
        for remote, local in source["file_mounts"].items()
    }
    for key_name in COMMAND_KEYS:
        commands = [substitute(c, scratch, ray_port) for c in source.get(key_name) or []]
        if key_name == "head_start_ray_commands":
            commands = [c + head_flags(temp_dir, dashboard_port) if HEAD_START.search(c) else c for c in commands]
        config[key_name] = commands
    return config


def main(argv: list[str]) -> int:
    root, scratch, ssh_port, ray_port, dashboard_port, user, key, temp_dir = argv
    source = yaml.safe_load((Path(root) / "cluster.local.yaml").read_text())
    config = loopback_config(
        source,
        root=root,
        scratch=scratch,
        ssh_port=int(ssh_port),
        ray_port=int(ray_port),
        dashboard_port=int(dashboard_port),
        user=user,
        key=key,
        temp_dir=temp_dir,
    )
    sys.stdout.write(f"# Generated from {root}/cluster.local.yaml by {Path(__file__).name}\n")
    yaml.safe_dump(config, sys.stdout, sort_keys=False, width=1000)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
