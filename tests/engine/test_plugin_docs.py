"""docs/plugins.md, the plugin author's guide: every hook and every argument of engine/hookspecs.py is in it."""

from __future__ import annotations

import inspect
from pathlib import Path

from engine import hookspecs

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"


def test_the_guide_lists_every_hook_with_every_argument() -> None:
    text = GUIDE.read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("gentrain_") and callable(getattr(hookspecs, n))]
    assert hooks
    missing = []
    for name in hooks:
        args = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        if f"### `{name}({args})`" not in text:
            missing.append(f"{name}({args})")
        for arg in inspect.signature(getattr(hookspecs, name)).parameters:
            if f"- `{arg}`:" not in text.split(f"### `{name}(", 1)[-1].split("### ", 1)[0]:
                missing.append(f"{name}: argument {arg}")
    assert not missing, f"docs/plugins.md lacks {missing}; run `python docs/gen_hooks.py`"


def test_the_readme_links_the_guide() -> None:
    assert "(docs/plugins.md)" in (ROOT / "README.md").read_text()
