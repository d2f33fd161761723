"""Ready-made transform chains used by the bundles, so that bundle JSON stays thin.

:func:`image_segmentation_transforms` is the whole preprocessing of a 2D image dataset stored
as 8-bit files (PNG/JPG images; masks with 0/255 values), for labeled, pseudo-labeled,
validation, test and unlabeled items alike: keys that an item lacks (``label`` for unlabeled
images, ``im`` for everything but pseudo-labels) are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ScaleIntensityRanged,
    SelectItemsd,
)

from monai_im.constants import IGNORE_INDEX
from monai_im.transforms.dictionary import ApplyInconsistencyMaskd, EnsureNumChannelsd

__all__ = ["image_segmentation_transforms", "paper_augmentation"]


def image_segmentation_transforms(
    image_size: Sequence[int],
    num_channels: int = 3,
    label_policy: str = "background",
    label_threshold: float = 127.5,
    image_max: float = 255.0,
    fill_value: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    im_class: int = 0,
) -> Compose:
    """Load, resize and scale image / label / IM triples for training and inference.

    The chain: ``LoadImaged`` -> ``EnsureChannelFirstd`` -> :class:`EnsureNumChannelsd` (grayscale
    or RGB(A) to ``num_channels``) -> ``Resized`` (bilinear for images, nearest for masks) ->
    ``ScaleIntensityRanged`` (0..``image_max`` to 0..1) -> ``AsDiscreted`` (masks to 0/1 at
    ``label_threshold``) -> :class:`ApplyInconsistencyMaskd` (the IM is cut out of image and label
    with ``label_policy``; only pseudo-labeled items carry an IM) -> ``SelectItemsd`` -> ``EnsureTyped``.

    Args:
        image_size: spatial size every image is resized to, e.g. (256, 256).
        num_channels: channels the network expects (3 for RGB, 1 for grayscale).
        label_policy: "background" (IM pixels become 0, the paper's runs), "ignore" (IM pixels get
            ``ignore_index`` and the loss skips them) or "im_class".
        label_threshold: mask values above it are foreground (masks are stored as 0/255).
        image_max: the intensity that maps to 1.0.
        fill_value: image value inside the IM.
        ignore_index: label value of ignored pixels (policy "ignore").
        im_class: label value of IM pixels (policy "im_class").
    """
    keys = ["image", "label", "im"]
    masks = ["label", "im"]
    return Compose(
        [
            LoadImaged(keys=keys, image_only=True, allow_missing_keys=True),
            EnsureChannelFirstd(keys=keys, allow_missing_keys=True),
            EnsureNumChannelsd(keys="image", num_channels=num_channels),
            Resized(
                keys=keys,
                spatial_size=tuple(image_size),
                mode=("bilinear", "nearest", "nearest"),
                allow_missing_keys=True,
            ),
            ScaleIntensityRanged(keys="image", a_min=0.0, a_max=image_max, b_min=0.0, b_max=1.0, clip=True),
            AsDiscreted(keys=masks, threshold=label_threshold, allow_missing_keys=True),
            ApplyInconsistencyMaskd(
                image_keys="image",
                label_keys="label",
                im_key="im",
                policy=label_policy,
                fill_value=fill_value,
                ignore_index=ignore_index,
                im_class=im_class,
                allow_missing_keys=True,
            ),
            SelectItemsd(keys=["image", "label"], allow_missing_keys=True),
            EnsureTyped(keys=["image", "label"], track_meta=False, allow_missing_keys=True),
        ]
    )


def paper_augmentation(spatial_axes: tuple[int, int] = (0, 1), noise_std: float = 0.02) -> Compose:
    """The augmentations of the paper's augmented-labeled training (ALDT), as random MONAI transforms.

    Flips along both axes, 90-degree rotations, brightness and contrast changes, Gaussian blur and
    additive noise, applied to ``image`` (geometry to ``label`` too) after
    :func:`image_segmentation_transforms`; intensities are clipped back to [0, 1]. The paper makes
    nine fixed augmented copies of each labeled image offline, with uniform noise; here every epoch
    draws fresh random views of each of the ten entries, and the noise is Gaussian (MONAI's
    ``RandGaussianNoised``) with a small standard deviation.

    Args:
        spatial_axes: the two spatial axes of 2D images (rotations and flips).
        noise_std: standard deviation of the additive noise on images scaled to [0, 1].
    """
    both = ["image", "label"]
    return Compose(
        [
            RandFlipd(keys=both, prob=0.5, spatial_axis=spatial_axes[0]),
            RandFlipd(keys=both, prob=0.5, spatial_axis=spatial_axes[1]),
            RandRotate90d(keys=both, prob=0.75, max_k=3, spatial_axes=spatial_axes),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.4), prob=0.5),
            RandScaleIntensityd(keys="image", factors=0.2, prob=0.5),
            RandGaussianSmoothd(keys="image", sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), prob=0.3),
            RandGaussianNoised(keys="image", std=noise_std, prob=0.5),
            ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
