"""
Array transforms for Inconsistency Masks (IM): building the IM from an ensemble of teachers,
cutting it out of images and pseudo-labels, deciding which pseudo-labels to keep, and making the
number of image channels match the network.

Each transform takes one image (channel first, no batch dimension) as a numpy array, a torch tensor
or a MONAI ``MetaTensor``; the output has the type and device of the input and keeps its metadata.
The math is in :mod:`monai_im.transforms.functional`, which also works on batches.
"""

from __future__ import annotations

import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms.transform import Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_im.constants import IGNORE_INDEX
from monai_im.transforms.functional import (
    accept_pseudo_labels,
    check_acceptance,
    check_dilation,
    check_mode,
    check_policy,
    check_threshold,
    inconsistency_mask,
    mask_image,
    mask_label,
)

__all__ = [
    "InconsistencyMask",
    "ApplyInconsistencyMask",
    "AcceptPseudoLabel",
    "EnsureNumChannels",
    "converts_channels",
]

#: ITU-R BT.601 luma weights used to turn RGB into one grey channel.
LUMINANCE_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


def _as_torch(x: NdarrayOrTensor) -> torch.Tensor:
    """A plain torch tensor (no metadata) on the device of ``x``."""
    return convert_to_tensor(x, track_meta=False)


def _like(out: torch.Tensor, ref: NdarrayOrTensor, dtype: torch.dtype | None = None) -> NdarrayOrTensor:
    """Convert ``out`` to the type and device of ``ref`` (keeping ``ref``'s metadata), with ``dtype`` or ``ref``'s."""
    if isinstance(ref, MetaTensor) and not get_track_meta():
        ref = ref.as_tensor()
    return convert_to_dst_type(out, ref, dtype=dtype)[0]


class InconsistencyMask(Transform):
    """
    Build the pseudo-label and the Inconsistency Mask (IM) of one image from the stacked predictions
    of ``E`` teachers.

    - ``"binary"`` (C = 1): a teacher says foreground where its probability is strictly greater than
      ``threshold``; pseudo-label = 1 where all teachers say foreground; IM = 1 where some, but not
      all, teachers say foreground.
    - ``"multiclass"`` (C >= 2): per-teacher argmax; the pseudo-label holds the agreed class index
      where all teachers agree; IM = 1 wherever any two teachers disagree.
    - ``"multilabel"``: the binary rule per channel; the pseudo-label has C channels and the IM is
      the union of the per-channel IMs.

    The IM is optionally dilated (``dilation`` >= 2, see :func:`~monai_im.transforms.functional.dilate_mask`)
    and the pseudo-label is 0 in every channel inside the (dilated) IM.

    Args:
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        threshold: foreground threshold for the binary and multilabel modes, in (0, 1).
        dilation: kernel size of a square/cubic dilation of the IM; 0 or 1 = none (paper default 0).

    Example::

        preds = torch.stack([teacher(x)[0] for teacher in teachers])  # (E, 1, H, W) sigmoid maps
        pseudo_label, im = InconsistencyMask("binary")(preds)          # (1, H, W), (1, H, W)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, mode: str = "binary", threshold: float = 0.5, dilation: int = 0) -> None:
        self.mode = check_mode(mode)
        self.threshold = check_threshold(threshold)
        self.dilation = check_dilation(dilation)

    def __call__(self, preds: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """
        Args:
            preds: teacher probabilities of shape (E, C, *spatial), 2D or 3D spatial.

        Returns:
            ``(pseudo_label, im)`` of shapes (Cp, *spatial) (Cp = C for ``"multilabel"``, else 1)
            and (1, *spatial), 0/1 values (class indices for ``"multiclass"``), in the float dtype of
            ``preds`` (float32 for integer inputs), with the type, device and metadata of ``preds``.
        """
        preds_t = _as_torch(preds)
        if preds_t.ndim not in (4, 5):
            raise ValueError(
                f"preds must have shape (E, C, *spatial) with 2 or 3 spatial dims, got shape {tuple(preds_t.shape)}."
            )
        pseudo_label, im = inconsistency_mask(
            preds_t.unsqueeze(1), mode=self.mode, threshold=self.threshold, dilation=self.dilation
        )
        return _like(pseudo_label[0], preds, pseudo_label.dtype), _like(im[0], preds, im.dtype)


class ApplyInconsistencyMask(Transform):
    """
    Cut the Inconsistency Mask out of an image and, optionally, its pseudo-label.

    The image is set to ``fill_value`` in every channel inside the IM ("block input", the paper
    uses black). The label is changed inside the IM according to ``policy``:

    - ``"ignore"``: ``ignore_index`` in every channel, for a loss that skips those pixels;
    - ``"background"``: 0 in every channel (the paper's binary and multi-label runs);
    - ``"im_class"``: ``im_class`` in a one-channel class-index label (the paper's multi-class runs
      use class 0 as a dedicated IM class).

    Applying the transform twice gives the same result as applying it once. Batches (B, C, *spatial)
    with an IM of shape (B, 1, *spatial) are accepted too.

    Args:
        policy: one of ``"ignore"``, ``"background"``, ``"im_class"``.
        fill_value: image value inside the IM.
        ignore_index: label value inside the IM for the ``"ignore"`` policy.
        im_class: label class inside the IM for the ``"im_class"`` policy.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        policy: str = "background",
        fill_value: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        im_class: int = 0,
    ) -> None:
        self.policy = check_policy(policy)
        self.fill_value = fill_value
        self.ignore_index = ignore_index
        self.im_class = im_class

    def apply_image(self, img: NdarrayOrTensor, im: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: image of shape (C, *spatial).
            im: Inconsistency Mask of shape (1, *spatial); pixels > 0 are inside.

        Returns:
            the image with every channel set to ``fill_value`` inside the IM; same type, dtype,
            device and metadata as ``img``.
        """
        return _like(mask_image(_as_torch(img), _as_torch(im), self.fill_value), img)

    def apply_label(self, label: NdarrayOrTensor, im: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            label: label of shape (C, *spatial); (1, *spatial) class indices for ``"im_class"``.
            im: Inconsistency Mask of shape (1, *spatial); pixels > 0 are inside.

        Returns:
            the label changed inside the IM according to ``policy``; same type, dtype, device and
            metadata as ``label``.
        """
        masked = mask_label(
            _as_torch(label),
            _as_torch(im),
            self.policy,
            ignore_index=self.ignore_index,
            im_class=self.im_class,
        )
        return _like(masked, label)

    def __call__(
        self, img: NdarrayOrTensor, im: NdarrayOrTensor, label: NdarrayOrTensor | None = None
    ) -> NdarrayOrTensor | tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """
        Args:
            img: image of shape (C, *spatial).
            im: Inconsistency Mask of shape (1, *spatial).
            label: optional label of shape (C', *spatial).

        Returns:
            the masked image, or ``(img, label)`` both masked when ``label`` is given.
        """
        out = self.apply_image(img, im)
        if label is None:
            return out
        return out, self.apply_label(label, im)


class AcceptPseudoLabel(Transform):
    """
    Decide whether the pseudo-label of one image is kept.

    The paper's rule (binary) is the default: keep the image only if the agreed foreground area is
    > 0 and larger than the IM area. See :func:`~monai_im.transforms.functional.accept_pseudo_labels`
    for the foreground of each mode.

    Args:
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        min_foreground: minimum number of foreground pixels (0 switches it off).
        foreground_exceeds_im: whether the foreground area must be larger than the IM area.
        max_im_fraction: reject images whose IM covers more than this fraction of the pixels
            (None switches it off).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        mode: str = "binary",
        min_foreground: int = 1,
        foreground_exceeds_im: bool = True,
        max_im_fraction: float | None = None,
    ) -> None:
        self.mode = check_mode(mode)
        check_acceptance(min_foreground, max_im_fraction)
        self.min_foreground = min_foreground
        self.foreground_exceeds_im = foreground_exceeds_im
        self.max_im_fraction = max_im_fraction

    def __call__(self, pseudo_label: NdarrayOrTensor, im: NdarrayOrTensor) -> bool:
        """
        Args:
            pseudo_label: pseudo-label of shape (Cp, *spatial).
            im: Inconsistency Mask of shape (1, *spatial).

        Returns:
            True if the pseudo-label is kept.
        """
        accepted = accept_pseudo_labels(
            _as_torch(pseudo_label).unsqueeze(0),
            _as_torch(im).unsqueeze(0),
            mode=self.mode,
            min_foreground=self.min_foreground,
            foreground_exceeds_im=self.foreground_exceeds_im,
            max_im_fraction=self.max_im_fraction,
        )
        return bool(accepted[0])


def converts_channels(channels: int, num_channels: int) -> bool:
    """Whether :class:`EnsureNumChannels` turns ``channels`` channels into ``num_channels``."""
    return channels in (num_channels, 1) or (channels, num_channels) in ((4, 3), (3, 1))


class EnsureNumChannels(Transform):
    """
    Make a channel-first image have ``num_channels`` channels, so that grayscale, RGB and RGBA
    images can all be fed to the same network.

    - same number of channels: unchanged;
    - 1 channel: repeated ``num_channels`` times;
    - 4 channels (RGBA) to 3: the alpha channel is dropped;
    - 3 channels (RGB) to 1: luminance ``0.299 R + 0.587 G + 0.114 B`` (rounded for integer images);
    - anything else: ``ValueError`` naming the shapes and, when known, the file.

    Args:
        num_channels: the number of channels wanted.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, num_channels: int) -> None:
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive integer, got {num_channels!r}.")
        self.num_channels = num_channels

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: image of shape (C, *spatial).

        Returns:
            the image of shape (num_channels, *spatial), same type, dtype, device and metadata.
        """
        img_t = _as_torch(img)
        channels = img_t.shape[0] if img_t.ndim >= 2 else None
        if channels == self.num_channels:
            return img
        if channels == 1:
            out = img_t.repeat(self.num_channels, *([1] * (img_t.ndim - 1)))
        elif channels == 4 and self.num_channels == 3:
            out = img_t[:3]
        elif channels == 3 and self.num_channels == 1:
            dtype = img_t.dtype if img_t.is_floating_point() else torch.float32
            weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=dtype, device=img_t.device)
            out = (img_t.to(dtype) * weights.view(3, *([1] * (img_t.ndim - 1)))).sum(dim=0, keepdim=True)
            if not img_t.is_floating_point():
                out = out.round()
        else:
            source = ""
            if isinstance(img, MetaTensor) and img.meta.get("filename_or_obj"):
                source = f" in {img.meta['filename_or_obj']}"
            raise ValueError(
                f"Cannot turn a channel-first image of shape {tuple(img_t.shape)}{source} into {self.num_channels} "
                f"channel(s) (expected shape ({self.num_channels}, *spatial)); supported: 1 -> N, 4 (RGBA) -> 3, "
                "3 (RGB) -> 1."
            )
        return _like(out, img)
