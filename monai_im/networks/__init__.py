"""Networks of the Inconsistency Masks paper: the lightweight "1x1 U-Net" and EvalNet."""

from __future__ import annotations

from monai_im.networks.evalnet import EvalNet
from monai_im.networks.unet import ConvPair, IMUNet, PointwiseBlock, init_he_normal, scaled_width

__all__ = ["IMUNet", "EvalNet", "ConvPair", "PointwiseBlock", "init_he_normal", "scaled_width"]
