"""Ready-made transform chains used by the bundles, so that bundle JSON stays thin.

:func:`image_segmentation_transforms` is the whole preprocessing of a 2D image dataset for labeled,
pseudo-labeled, validation, test and unlabeled items alike: keys that an item lacks (``label`` for
unlabeled images, ``im`` for everything but pseudo-labels) are skipped. :func:`image_inference_transforms`
is its image half with the metadata kept, so that predictions can be inverted to the input's size.
Both read files by the rules of :mod:`monai_im.transforms.encoding` (stated intensity scaling,
explicit foreground rule), the same rules the dataset preflight checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
    Resized,
    ScaleIntensityRanged,
    SelectItemsd,
    Spacingd,
)

from monai_im.constants import IGNORE_INDEX
from monai_im.transforms.dictionary import ApplyInconsistencyMaskd, EnsureNumChannelsd
from monai_im.transforms.encoding import Image2DReader, IntensityRange, ReadLabeld, ScaleImageIntensityd
from monai_im.transforms.patches import ClassBalancedPatchesd

__all__ = [
    "image_segmentation_transforms",
    "image_inference_transforms",
    "paper_augmentation",
    "volume_segmentation_transforms",
    "volume_patch_transforms",
    "volume_augmentation",
    "ClassBalancedPatchesd",
]


def _read_images(keys: Sequence[str], num_channels: int, intensity_range: IntensityRange) -> list:
    """Load (stored type kept) -> channel first -> image scaled to [0, 1] -> ``num_channels`` channels."""
    return [
        LoadImaged(
            keys=list(keys),
            image_only=True,
            dtype=None,
            ensure_channel_first=True,
            reader=Image2DReader(),
            allow_missing_keys=True,
        ),
        ScaleImageIntensityd(keys="image", intensity_range=intensity_range),
        EnsureNumChannelsd(keys="image", num_channels=num_channels),
    ]


def _cut_im(
    label_policy: str,
    fill_value: float,
    ignore_index: int,
    im_class: int,
    keep_meta: bool,
    keep_keys: Sequence[str] = (),
) -> list:
    """The end of every chain: the IM cut out of image and label (the one place it is applied), then only
    ``image``, ``label`` and ``keep_keys`` kept (labeled and pseudo-labeled items collate together)."""
    return [
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
        SelectItemsd(keys=["image", "label", *keep_keys], allow_missing_keys=True),
        EnsureTyped(keys=["image", "label"], track_meta=bool(keep_meta), allow_missing_keys=True),
    ]


def image_segmentation_transforms(
    image_size: Sequence[int],
    num_channels: int = 3,
    label_policy: str = "background",
    mode: str = "binary",
    label_channels: int = 1,
    label_threshold: float = 0.0,
    intensity_range: IntensityRange = None,
    fill_value: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    im_class: int = 0,
) -> Compose:
    """Load, scale, resize and encode image / label / IM triples for training, validation and pseudo-labelling.

    The chain: ``LoadImaged`` (stored type kept) -> :class:`ScaleImageIntensityd` (``intensity_range``) ->
    :class:`EnsureNumChannelsd` (grayscale or RGB(A) to ``num_channels``) -> :class:`ReadLabeld` (the
    foreground rule ``label > label_threshold``, or class maps) -> ``AsDiscreted`` (IM files: > 0.5) ->
    ``Resized`` (bilinear for images, nearest for masks) -> :class:`ApplyInconsistencyMaskd` (the IM is cut
    out of image and label with ``label_policy``; only pseudo-labeled items carry an IM) ->
    ``SelectItemsd`` -> ``EnsureTyped``.

    Args:
        image_size: spatial size every image is resized to, e.g. (256, 256).
        num_channels: channels the network expects (3 for RGB, 1 for grayscale).
        label_policy: "background" (IM pixels become 0, the paper's runs), "ignore" (IM pixels get
            ``ignore_index`` and the loss skips them) or "im_class".
        mode: "binary", "multilabel" or "multiclass": how masks are read (:class:`ReadLabel`).
        label_channels: the network's output channels (mask channels of multi-label tasks, classes of
            multi-class tasks).
        label_threshold: binary and multi-label masks are foreground where ``label > label_threshold``
            (0: 0/1, 0/255 and 0/k masks alike).
        intensity_range: ``None`` (8-bit 0..255, 16-bit 0..65535, float as stored), ``[low, high]`` or
            ``"minmax"``; see :class:`ScaleImageIntensity`.
        fill_value: image value inside the IM.
        ignore_index: label value of ignored pixels (policy "ignore").
        im_class: label value of IM pixels (policy "im_class").
    """
    keys = ["image", "label", "im"]
    return Compose(
        [
            *_read_images(keys, num_channels, intensity_range),
            ReadLabeld(
                keys="label",
                mode=mode,
                num_channels=label_channels,
                label_threshold=label_threshold,
                allow_missing_keys=True,
            ),
            AsDiscreted(keys="im", threshold=0.5, allow_missing_keys=True),
            Resized(
                keys=keys,
                spatial_size=tuple(image_size),
                mode=("bilinear", "nearest", "nearest"),
                allow_missing_keys=True,
            ),
            *_cut_im(label_policy, fill_value, ignore_index, im_class, keep_meta=False),
        ]
    )


def image_inference_transforms(
    image_size: Sequence[int], num_channels: int = 3, intensity_range: IntensityRange = None
) -> Compose:
    """The image half of :func:`image_segmentation_transforms`, keeping the metadata for ``Invertd``.

    Args:
        image_size: the network's input size.
        num_channels: channels the network expects.
        intensity_range: the same rule as in training (see :class:`ScaleImageIntensity`).
    """
    return Compose(
        [
            *_read_images(["image"], num_channels, intensity_range),
            Resized(keys="image", spatial_size=tuple(image_size), mode="bilinear"),
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


def _volume_grid(keys: Sequence[str], orientation: str | None, pixdim: Sequence[float] | None) -> list:
    """``Orientationd`` and ``Spacingd`` of a volume chain (linear for the image, nearest for label and IM)."""
    steps: list = []
    if orientation:
        steps.append(
            Orientationd(
                keys=keys,
                axcodes=orientation,
                labels=(("L", "R"), ("P", "A"), ("I", "S")),
                allow_missing_keys=True,
            )
        )
    if pixdim is not None:
        steps.append(
            Spacingd(
                keys=keys,
                pixdim=tuple(float(v) for v in pixdim),
                mode=("bilinear", "nearest", "nearest"),
                allow_missing_keys=True,
            )
        )
    return steps


def _volume_intensity(intensity_window: Sequence[float] | None) -> Any:
    """The window ``[low, high]`` to [0, 1], clipped; None: each volume's own min..max."""
    if intensity_window is None:
        return ScaleImageIntensityd(keys="image", intensity_range="minmax")
    low, high = (float(v) for v in intensity_window)
    if not high > low:
        raise ValueError(f"intensity_window must be [low, high] with high > low, got {intensity_window}")
    return ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)


def volume_segmentation_transforms(
    pixdim: Sequence[float] | None = (2.5, 2.5, 4.0),
    orientation: str | None = "RAS",
    intensity_window: Sequence[float] | None = (-160.0, 240.0),
    num_classes: int = 14,
    mode: str = "multiclass",
    label_threshold: float = 0.0,
    label_policy: str = "background",
    fill_value: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    im_class: int = 0,
    keep_meta: bool = True,
    reader: object | None = None,
    keep_keys: Sequence[str] = (),
) -> Compose:
    """Load, reorient, resample, window and encode volume / label / IM triples (CT or MRI, 3D).

    The chain: ``LoadImaged`` (``reader``, e.g. :class:`monai_im.transforms.VolumeReader`: NIfTI through
    nibabel, NRRD, MHA and DICOM folders through SimpleITK; None = MONAI's default readers) -> ``Orientationd``
    (``orientation``) -> ``Spacingd`` (``pixdim`` mm; linear for the image, nearest for label and IM) ->
    ``ScaleIntensityRanged`` (the window ``[low, high]`` to [0, 1], clipped) -> :class:`ReadLabeld`
    (class indices for ``"multiclass"``) -> ``AsDiscreted`` (IM > 0.5) -> :class:`ApplyInconsistencyMaskd`
    -> ``SelectItemsd`` -> ``EnsureTyped``. Every key goes through the same geometry from its own file's
    affine, so a pseudo-label written on the resampled grid (with that grid's affine) comes back on
    the grid of its image.

    Args:
        pixdim: target voxel spacing in mm; None keeps each volume's spacing.
        orientation: target axis codes (e.g. ``"RAS"``); None keeps the stored orientation.
        intensity_window: ``[low, high]`` of the stored intensities mapped to [0, 1] (CT: Hounsfield units,
            e.g. ``[-160, 240]`` for abdominal soft tissue); None = each volume's own min..max (MRI).
        num_classes: the network's output channels (classes including background for ``"multiclass"``).
        mode: "multiclass", "binary" or "multilabel" (how labels are read, :class:`ReadLabel`).
        label_threshold: foreground rule of binary and multi-label masks.
        label_policy, fill_value, ignore_index, im_class: how the IM is cut (see
            :func:`image_segmentation_transforms`).
        keep_meta: keep MONAI's metadata (the affine, needed to write pseudo-labels aligned with their
            volume); training chains may drop it.
        reader: a MONAI image reader tried before the default ones (e.g. ``VolumeReader()``).
        keep_keys: item keys kept besides ``image`` and ``label`` (e.g. ``output``, the mask path of
            inference); the others are dropped so that labeled and pseudo-labeled items collate together.

    A MONAI-style transform factory: every option is a keyword the bundles' configs set by name, so the
    parameters stay flat.
    """
    keys = ["image", "label", "im"]
    chain: list = [
        LoadImaged(
            keys=keys, image_only=True, ensure_channel_first=True, reader=reader, allow_missing_keys=True
        ),
    ]
    chain += _volume_grid(keys, orientation, pixdim)
    chain.append(_volume_intensity(intensity_window))
    chain += [
        ReadLabeld(
            keys="label",
            mode=mode,
            num_channels=num_classes,
            label_threshold=label_threshold,
            allow_missing_keys=True,
        ),
        AsDiscreted(keys="im", threshold=0.5, allow_missing_keys=True),
        *_cut_im(label_policy, fill_value, ignore_index, im_class, keep_meta, keep_keys),
    ]
    return Compose(chain)


def volume_patch_transforms(
    preprocessing: Compose,
    patch_size: Sequence[int] = (64, 64, 48),
    num_classes: int = 14,
    num_samples: int = 2,
    ratios: Sequence[float] | None = None,
    by_label: bool = True,
) -> Compose:
    """Training on patches: ``preprocessing`` (cached), then ``num_samples`` random patches per volume
    centred on each class in turn (``RandCropByLabelClassesd``; ``ratios`` per class, None = equal), so
    that small organs are seen as often as the liver; without labels (``by_label=False``, the unlabeled
    volumes of FixMatch, Mean Teacher, CPS) uniformly placed patches of the image.

    Args:
        preprocessing: the deterministic chain (e.g. :func:`volume_segmentation_transforms`).
        patch_size: the patch size in voxels (volumes smaller than it are padded).
        num_classes: classes of the label map, background included.
        num_samples: patches drawn from a volume each time it is loaded.
        ratios: sampling weight per class.
        by_label: crop around the classes of ``label``; False: uniform patches of ``image`` alone.
    """
    from monai.transforms import SpatialPadd

    if not by_label:
        return Compose(
            [
                preprocessing,
                SpatialPadd(keys="image", spatial_size=tuple(patch_size)),
                RandSpatialCropSamplesd(
                    keys="image", roi_size=tuple(patch_size), num_samples=int(num_samples), random_size=False
                ),
            ]
        ).flatten()
    return Compose(
        [
            preprocessing,
            SpatialPadd(keys=["image", "label"], spatial_size=tuple(patch_size)),
            ClassBalancedPatchesd(
                keys=["image", "label"],
                label_key="label",
                spatial_size=patch_size,
                num_classes=num_classes,
                num_samples=num_samples,
                ratios=ratios,
            ),
        ]
    ).flatten()


def volume_augmentation(noise_std: float = 0.02) -> Compose:
    """Random intensity augmentation of volume patches (no flips: left and right organs differ).

    Brightness shift, contrast scale and Gamma changes, Gaussian smoothing and noise on ``image``,
    clipped back to [0, 1]; the ALDT / AIM methods of the 3D bundle use it in place of the 2D
    :func:`paper_augmentation`.

    Args:
        noise_std: standard deviation of the additive noise on images scaled to [0, 1].
    """
    return Compose(
        [
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
            RandScaleIntensityd(keys="image", factors=0.2, prob=0.5),
            RandAdjustContrastd(keys="image", gamma=(0.7, 1.4), prob=0.5),
            RandGaussianSmoothd(
                keys="image", sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0), sigma_z=(0.3, 1.0), prob=0.3
            ),
            RandGaussianNoised(keys="image", std=noise_std, prob=0.5),
            ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
