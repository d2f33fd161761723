"""Shared fixtures: tiny synthetic datasets made once per test session."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from monai.handlers import from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose

from monai_im.data import load_datalist
from monai_im.datasets import make_isic_like_dataset
from monai_im.losses import MaskedDiceCELoss
from monai_im.methods import InconsistencyMask
from monai_im.metrics import PerImageIoU
from monai_im.networks import IMUNet
from monai_im.selftrain import Evaluation, SelfTrainingStudy, StudyData, StudyProtocol
from monai_im.transforms import image_segmentation_transforms

os.environ.setdefault("MPLBACKEND", "Agg")
# one thread per pytest-xdist worker, otherwise the cores are shared by all threads
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def isic_tiny(tmp_path_factory) -> str:
    """A 32 x 32 ISIC-like dataset: 40 training images (half labeled), 8 validation, 8 test."""
    from monai_im.datasets import make_isic_like_dataset

    root = tmp_path_factory.mktemp("isic_tiny") / "data"
    make_isic_like_dataset(
        root, num_train=40, num_val=8, num_test=8, size=32, labeled_fraction=0.5, seed=3, progress=False
    )
    return str(root)


@pytest.fixture(scope="session")
def hela_tiny(tmp_path_factory) -> str:
    """A 32 x 32 HeLa-like dataset: 24 training images (half labeled), 6 validation, 6 test."""
    from monai_im.datasets import make_hela_like_dataset

    root = tmp_path_factory.mktemp("hela_tiny") / "data"
    make_hela_like_dataset(
        root, num_train=24, num_val=6, num_test=6, size=32, labeled_fraction=0.5, seed=3, progress=False
    )
    return str(root)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """16 x 16 ISIC-like images: 4 labeled, 4 unlabeled, 2 validation, 2 test."""
    root = tmp_path_factory.mktemp("study") / "data"
    make_isic_like_dataset(
        root, num_train=8, num_val=2, num_test=2, size=16, labeled_fraction=0.5, seed=1, progress=False
    )
    return root


def _split(options: dict, record: type) -> dict:
    """Take the options of the settings ``record`` (a dataclass) out of ``options``."""
    names = {f.name for f in dataclasses.fields(record)}
    return {k: options.pop(k) for k in list(options) if k in names}


def _make_study(data: Path, output_dir: Path, **kwargs) -> SelfTrainingStudy:
    """A tiny IM study on ``data`` (1 epoch, 2 students, CPU); ``kwargs`` override its options: those of
    :class:`StudyProtocol`, :class:`StudyData` and :class:`Evaluation` go into these records, the rest to
    the study."""
    pre = image_segmentation_transforms((16, 16), num_channels=3)
    options = {
        "network": lambda: IMUNet(2, 3, 1, alpha=0.25),
        "optimizer": lambda p: torch.optim.AdamW(p, 1e-3),
        "loss_function": MaskedDiceCELoss(mode="binary"),
        "method": InconsistencyMask(min_foreground=0, foreground_exceeds_im=False),
        "datalist": load_datalist(data),
        "train_transforms": pre,
        "eval_transforms": pre,
        "infer_transforms": pre,
        "key_metric": {"iou": PerImageIoU(output_transform=from_engine(["pred", "label"]))},
        "postprocessing": Compose([Activationsd("pred", sigmoid=True), AsDiscreted("pred", threshold=0.5)]),
        "num_students": 2,
        "num_teachers": 2,
        "num_generations": 0,
        "epochs": 1,
        "batch_size": 4,
        "device": "cpu",
        "progress": False,
        **kwargs,
    }
    protocol = StudyProtocol(**_split(options, StudyProtocol))
    study_data = StudyData(**_split(options, StudyData))
    evaluation = Evaluation(**_split(options, Evaluation))
    return SelfTrainingStudy(output_dir, data=study_data, evaluation=evaluation, protocol=protocol, **options)


@pytest.fixture
def make_study():
    """The factory of tiny studies shared by the loop, method, runtime and application tests."""
    return _make_study
