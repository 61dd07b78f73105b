"""A recipe joining ``RAY_ADDRESS`` uses Ray's token when one is at hand (the cluster files turn token auth on).

Ray enables token auth in a client by itself only for a cluster it finds on
this machine; with an explicit ``RAY_ADDRESS`` and ``RAY_AUTH_MODE`` unset,
``ray.init()`` fails to connect to a token-auth cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import recipes
from engine.errors import GentrainError

CONFIG = {"model": {"name": "vae"}, "data": {"name": "shapes", "n": 64, "size": 8}}


class Captured(GentrainError):
    pass


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    return home


def mode_at_fit(monkeypatch: pytest.MonkeyPatch, argv: list[str] | None = None) -> str | None:
    import os

    import engine.api

    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen["mode"] = os.environ.get("RAY_AUTH_MODE")
        raise Captured("captured")

    monkeypatch.setattr(engine.api, "fit", fake)
    assert recipes.main(CONFIG, argv=argv or []) == 2  # the captured call
    return seen["mode"]


def write_token(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("0123456789abcdef")


def test_the_token_file_turns_token_auth_on(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_token(env / ".ray" / "auth_token")
    assert mode_at_fit(monkeypatch) == "token"


def test_ray_token_variables_count(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0123456789abcdef")
    assert mode_at_fit(monkeypatch) == "token"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_MODE")
    write_token(tmp_path / "elsewhere")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert mode_at_fit(monkeypatch) == "token"


def test_left_alone_without_a_token_an_address_or_when_set(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert mode_at_fit(monkeypatch) is None  # no token anywhere
    write_token(env / ".ray" / "auth_token")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert mode_at_fit(monkeypatch) == "disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    for address in ("local", "auto"):  # a local start, or Ray's own discovery (which enables it itself)
        monkeypatch.setenv("RAY_ADDRESS", address)
        assert mode_at_fit(monkeypatch) is None
    monkeypatch.delenv("RAY_ADDRESS")
    assert mode_at_fit(monkeypatch) is None


def test_a_tuning_recipe_too(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import engine.ray

    write_token(env / ".ray" / "auth_token")
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen["mode"] = os.environ.get("RAY_AUTH_MODE")
        raise Captured("captured")

    monkeypatch.setattr(engine.ray, "tune", fake)
    assert recipes.tune_main(CONFIG, {}, argv=[]) == 2
    assert seen["mode"] == "token"


def test_gentrain_fit_too(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import engine.api
    from engine import cli

    write_token(env / ".ray" / "auth_token")
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen["mode"] = os.environ.get("RAY_AUTH_MODE")
        raise Captured("captured")

    monkeypatch.setattr(engine.api, "fit", fake)
    assert cli.main(["fit", "model.name=vae"]) == 2
    assert seen["mode"] == "token"
