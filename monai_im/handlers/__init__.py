"""Handlers that observe training and studies: progress bars and MLflow tracking."""

from __future__ import annotations

from monai_im.handlers.mlflow_handler import (
    MLflowStudyHandler,
    check_tracking_uri,
    datalist_dataset,
    find_bundle_config,
)
from monai_im.runtime.epoch_progress import EpochProgressBar

__all__ = [
    "EpochProgressBar",
    "MLflowStudyHandler",
    "check_tracking_uri",
    "datalist_dataset",
    "find_bundle_config",
]
