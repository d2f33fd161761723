"""Handlers that observe training and studies: progress bars and MLflow tracking."""

from __future__ import annotations

from monai_im.handlers.mlflow_handler import MLflowStudyHandler, find_bundle_config
from monai_im.handlers.progress import EpochProgressBar

__all__ = ["EpochProgressBar", "MLflowStudyHandler", "find_bundle_config"]
