"""The model contract, run over every model the installed plugins register."""

from __future__ import annotations

from engine.testing import ModelContract, registered_models

# One ModelContract subclass per registered model (the contract's checks are plain methods, no fixtures).
for _name in registered_models():
    globals()[f"TestContract_{_name}"] = type(f"TestContract_{_name}", (ModelContract,), {"model": _name})


def test_the_suite_sees_the_built_in_and_third_party_models() -> None:
    names = registered_models()
    assert "tiny" in names  # the third-party test plugin, installed by the README's test command
