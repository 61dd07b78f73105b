"""The model contract, run over every model the installed plugins register."""

from __future__ import annotations

import pytest

from engine.testing import ModelContract, registered_models


class TestEveryRegisteredModel(ModelContract):
    @pytest.fixture(params=registered_models())
    def model_name(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)


def test_the_suite_sees_the_built_in_and_third_party_models() -> None:
    names = registered_models()
    assert "tiny" in names  # the third-party test plugin, installed by the README's test command
