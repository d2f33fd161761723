from __future__ import annotations

from pathlib import Path

import pytest

from monai_im.data import make_isic_like_dataset


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """16 x 16 ISIC-like images: 4 labeled, 4 unlabeled, 2 validation, 2 test."""
    root = tmp_path_factory.mktemp("engines") / "data"
    make_isic_like_dataset(
        root, num_train=8, num_val=2, num_test=2, size=16, labeled_fraction=0.5, seed=1, progress=False
    )
    return root
