"""monai_im: semi-supervised segmentation with Inconsistency Masks, built on MONAI."""

from __future__ import annotations

__version__ = "0.1.0"
