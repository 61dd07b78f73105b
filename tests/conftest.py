"""Shared fixtures: one local Ray cluster per test session, started on first use.

Ray tests (``@pytest.mark.ray``) take the ``ray_local`` fixture. The cluster
is started once (a few seconds) and shut down at the end of the session. A
test that needs a cluster of its own (several nodes) takes ``ray_session``
and calls ``ray_session.shutdown()`` first; the next ``ray_local`` user
starts the local one again, so the two never run at the same time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: Logical CPUs of the test cluster: more than this machine's 2 cores, as Ray
#: workers in these tests are mostly idle, and the fault tests need room for a
#: restarted worker group while the old one is torn down.
RAY_TEST_CPUS = 4

# Set before any Ray process starts; Ray Train passes them on to its actors.
RAY_TEST_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_DEDUP_LOGS": "0",
}


class RaySession:
    """Owns the Ray this test session started (never one it did not start)."""

    def __init__(self) -> None:
        self.started = False

    def local(self) -> dict[str, Any]:
        """Start (or reuse) the local test cluster; returns its resources."""
        import ray

        if not ray.is_initialized():
            for key, value in RAY_TEST_ENV.items():
                os.environ.setdefault(key, value)
            # Ray warns on every start that it turned token auth on (Ray >= 2.59).
            token_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
            level = token_log.level
            token_log.setLevel(logging.ERROR)
            try:
                ray.init(
                    address="local",  # never attach to another engineer's cluster on this machine
                    num_cpus=RAY_TEST_CPUS,
                    logging_level="WARNING",
                    log_to_driver=True,
                    include_dashboard=True,  # Ray Train's placement-group cleaner uses the State API
                )
            finally:
                token_log.setLevel(level)
            self.started = True
        return dict(ray.cluster_resources())

    def shutdown(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False


@pytest.fixture(scope="session")
def ray_session() -> Iterator[RaySession]:
    session = RaySession()
    yield session
    session.shutdown()


@pytest.fixture
def ray_local(ray_session: RaySession) -> dict[str, Any]:
    """The session's local Ray cluster (started on first use); its resources."""
    return ray_session.local()


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _keep_ray_auth_mode() -> Iterator[None]:
    """Restore ``RAY_AUTH_MODE`` after each test.

    The CLI sets it for the rest of its process when it joins a token-auth
    cluster through ``RAY_ADDRESS`` (engine.recipes.use_cluster_token); a test
    that runs the CLI in-process with ``RAY_ADDRESS`` set would otherwise leave
    it to every later test, and a later local ``ray.init`` then fails to start.
    """
    before = os.environ.get("RAY_AUTH_MODE")
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before
