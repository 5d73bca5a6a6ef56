"""Shared fixtures: paths of the example deployment and a factory for scratch deployments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a file (dedented text) under a fresh folder and return its path."""
    import textwrap

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write
