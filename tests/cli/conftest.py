"""Fixtures of the command tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A copy of the example deployment, without its database."""
    folder = tmp_path / "ops"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("journeys.db*"))
    return folder
