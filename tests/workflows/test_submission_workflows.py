"""The two ways users submit recipes, end to end on this machine (loopback only).

Both scripts stop every Ray process of this user on the machine when they end
(`ray stop` / `ray down` work that way), so they run only when asked:
``GENTRAIN_E2E=1`` (``.ci/run`` sets it; run them when no other Ray cluster of
yours is alive). They run last in the session (this file sorts after the
other test folders) and shut the session's own Ray down first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        os.environ.get("GENTRAIN_E2E") != "1",
        reason="stops every Ray process on the machine; set GENTRAIN_E2E=1 to run (.ci/run does)",
    ),
]


def run_script(name: str, out: Path, ray_session: Any) -> str:
    ray_session.shutdown()  # the session's local Ray must not be alive during `ray stop`
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(HERE / name), str(out)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_ray_job_submit_on_a_two_node_cluster(tmp_path: Path, ray_session: Any) -> None:
    out = run_script("ray_job_submit.sh", tmp_path, ray_session)
    assert "ray job submit workflow passed" in out
    assert (tmp_path / "runs" / "job-smoke" / "metrics.csv").is_file()


def test_ray_up_submit_down_over_ssh(tmp_path: Path, ray_session: Any) -> None:
    out = run_script("ray_up_local.sh", tmp_path, ray_session)
    assert "ray up/submit/down workflow passed" in out
    assert (tmp_path / "runs" / "submitted" / "config.yaml").is_file()
