from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _run_outside_the_repository(tmp_path_factory, monkeypatch):
    """Bundles must not depend on the working directory: every bundle test runs from an empty folder."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
