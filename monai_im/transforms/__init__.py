"""Inconsistency Mask transforms: functional (batched torch), array and dictionary (MONAI style)."""

from __future__ import annotations

from monai_im.transforms.array import (
    AcceptPseudoLabel,
    ApplyInconsistencyMask,
    EnsureNumChannels,
    InconsistencyMask,
)
from monai_im.transforms.dictionary import (
    AcceptPseudoLabeld,
    ApplyInconsistencyMaskd,
    EnsureNumChannelsd,
    InconsistencyMaskd,
)
from monai_im.transforms.encoding import (
    Image2DReader,
    ReadLabel,
    ReadLabeld,
    ScaleImageIntensity,
    ScaleImageIntensityd,
)
from monai_im.transforms.functional import (
    accept_pseudo_labels,
    dilate_mask,
    inconsistency_mask,
    mask_image,
    mask_label,
)
from monai_im.transforms.io import PseudoLabelFormat, SaveSegmentationd, segmentation_file_name
from monai_im.transforms.presets import (
    image_inference_transforms,
    image_segmentation_transforms,
    paper_augmentation,
    volume_augmentation,
    volume_patch_transforms,
    volume_segmentation_transforms,
)
from monai_im.transforms.readers import SIMPLEITK_SUFFIXES, SimpleITKReader, VolumeReader

__all__ = [
    "AcceptPseudoLabel",
    "AcceptPseudoLabeld",
    "ApplyInconsistencyMask",
    "ApplyInconsistencyMaskd",
    "EnsureNumChannels",
    "EnsureNumChannelsd",
    "InconsistencyMask",
    "InconsistencyMaskd",
    "PseudoLabelFormat",
    "SaveSegmentationd",
    "SIMPLEITK_SUFFIXES",
    "SimpleITKReader",
    "VolumeReader",
    "segmentation_file_name",
    "Image2DReader",
    "ReadLabel",
    "ReadLabeld",
    "ScaleImageIntensity",
    "ScaleImageIntensityd",
    "image_inference_transforms",
    "image_segmentation_transforms",
    "paper_augmentation",
    "volume_augmentation",
    "volume_patch_transforms",
    "volume_segmentation_transforms",
    "accept_pseudo_labels",
    "dilate_mask",
    "inconsistency_mask",
    "mask_image",
    "mask_label",
]
