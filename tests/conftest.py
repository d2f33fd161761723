"""Shared fixtures: tiny synthetic datasets made once per test session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# one thread per pytest-xdist worker, otherwise the cores are shared by all threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def isic_tiny(tmp_path_factory) -> str:
    """A 32 x 32 ISIC-like dataset: 40 training images (half labeled), 8 validation, 8 test."""
    from monai_im.data import make_isic_like_dataset

    root = tmp_path_factory.mktemp("isic_tiny") / "data"
    make_isic_like_dataset(
        root, num_train=40, num_val=8, num_test=8, size=32, labeled_fraction=0.5, seed=3, progress=False
    )
    return str(root)


@pytest.fixture(scope="session")
def hela_tiny(tmp_path_factory) -> str:
    """A 32 x 32 HeLa-like dataset: 24 training images (half labeled), 6 validation, 6 test."""
    from monai_im.data import make_hela_like_dataset

    root = tmp_path_factory.mktemp("hela_tiny") / "data"
    make_hela_like_dataset(
        root, num_train=24, num_val=6, num_test=6, size=32, labeled_fraction=0.5, seed=3, progress=False
    )
    return str(root)
