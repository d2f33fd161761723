from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _run_from_repository_root(monkeypatch):
    """Bundles run from the repository root (their '%bundles/common/...' references are relative to it)."""
    monkeypatch.chdir(REPO)
