"""cluster.yaml and its on-premises variant pass Ray's own cluster-config validation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster.local.yaml"])
def test_ray_accepts_the_cluster_config(name: str) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(name)
    validate_config(config)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    setup = " ".join(prepared["setup_commands"])
    assert "torch==2.13.0" in setup
    assert "-e ~/gentrain" in setup
    assert prepared["file_mounts"]["~/gentrain"] == "."
    # Token auth is set the same way on head and workers.
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c for c in prepared[key]), key


def test_cloud_head_does_no_training_and_workers_autoscale() -> None:
    config = load("cluster.yaml")
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0
    assert worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceType"].startswith("g")


def test_a_broken_config_is_rejected() -> None:
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import validate_config

    config = load("cluster.yaml")
    config["available_node_types"]["head"]["resources"] = "lots"
    with pytest.raises(ValidationError):
        validate_config(config)
