"""Every hook is documented (a docstring and docs/plugins.md) and exercised by a test."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from transferkit import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    name
    for name, func in vars(hookspecs).items()
    if inspect.isfunction(func) and hasattr(func, "transferkit_spec")
)


def test_hooks_found() -> None:
    assert len(HOOKS) >= 15


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 20, f"hook {hook} has no docstring"
    assert f"`{hook}(" in (ROOT / "docs" / "plugins.md").read_text(), f"{hook} not in docs"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    this = Path(__file__).name
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != this]
    assert any(hook in p.read_text() for p in tests), f"no test mentions hook {hook}"
