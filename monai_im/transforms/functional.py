"""
Batched, torch-only functional core of the Inconsistency Mask (IM) transforms.

These functions do the math for the array transforms in :mod:`monai_im.transforms.array` and are
meant to be called directly on (GPU) batches by the self-training workflow. Every function keeps
the device of its input and is vectorised over teachers, batch and pixels.

Shapes use ``E`` for the number of teachers, ``B`` for the batch size, ``C`` for the number of
channels and ``*spatial`` for the 2D ``(H, W)`` or 3D ``(H, W, D)`` spatial dimensions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.data.meta_tensor import MetaTensor

from monai_im.constants import IGNORE_INDEX, IM_MODES, LABEL_POLICIES

__all__ = [
    "inconsistency_mask",
    "dilate_mask",
    "mask_image",
    "mask_label",
    "accept_pseudo_labels",
]

_SPATIAL_DIMS = (2, 3)


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`monai_im.constants.IM_MODES`, else raise ``ValueError``."""
    if mode not in IM_MODES:
        raise ValueError(f"Unknown IM mode {mode!r}; expected one of {', '.join(IM_MODES)}.")
    return mode


def check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float if it lies strictly inside (0, 1), else raise ``ValueError``."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a number strictly between 0 and 1, got {threshold!r}.")
    return float(threshold)


def check_dilation(dilation: int) -> int:
    """Return ``dilation`` if it is a non-negative integer kernel size, else raise ``ValueError``."""
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ValueError(
            f"dilation must be a non-negative integer kernel size (0 or 1 = none), got {dilation!r}."
        )
    return dilation


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is one of :data:`monai_im.constants.LABEL_POLICIES`, else raise ``ValueError``."""
    if policy not in LABEL_POLICIES:
        raise ValueError(f"Unknown label policy {policy!r}; expected one of {', '.join(LABEL_POLICIES)}.")
    return policy


def check_acceptance(min_foreground: int, max_im_fraction: float | None) -> None:
    """Raise ``ValueError`` unless ``min_foreground`` >= 0 is an integer and ``max_im_fraction`` is None or in [0, 1]."""
    if isinstance(min_foreground, bool) or not isinstance(min_foreground, int) or min_foreground < 0:
        raise ValueError(f"min_foreground must be a non-negative integer, got {min_foreground!r}.")
    if max_im_fraction is not None and (
        isinstance(max_im_fraction, bool)
        or not isinstance(max_im_fraction, (int, float))
        or not 0.0 <= max_im_fraction <= 1.0
    ):
        raise ValueError(f"max_im_fraction must be None or a number in [0, 1], got {max_im_fraction!r}.")


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    """The float dtype of ``x``, or float32 when ``x`` is not floating point."""
    return x.dtype if x.is_floating_point() else torch.float32


def dilate_mask(im: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """
    Dilate a batch of binary masks with a square (2D) or cubic (3D) structuring element.

    The dilation is a max-pooling with stride 1 that keeps the spatial shape for odd and even
    kernel sizes. For an even size ``k`` the anchor follows OpenCV's default (``k // 2``): a pixel
    at index ``i`` grows to ``i - (k - 1) // 2 ... i + k // 2``, i.e. one pixel more towards the
    higher indices.

    Args:
        im: masks of shape (B, 1, *spatial), values 0/1 (anything > 0 counts as inside).
        kernel_size: side length of the structuring element; 0 or 1 returns ``im`` unchanged.

    Returns:
        the dilated masks, same shape, dtype and device as ``im``.
    """
    kernel_size = check_dilation(kernel_size)
    if kernel_size <= 1:
        return im
    spatial_dims = im.ndim - 2
    if spatial_dims not in (1, 2, 3):
        raise ValueError(
            f"dilate_mask expects a (B, 1, *spatial) mask with 1 to 3 spatial dims, got shape {tuple(im.shape)}."
        )
    lo, hi = kernel_size // 2, (kernel_size - 1) // 2
    x = (im > 0).to(torch.float32)
    x = F.pad(x, (lo, hi) * spatial_dims, mode="constant", value=0.0)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial_dims - 1]
    return pool(x, kernel_size=kernel_size, stride=1).to(im.dtype)


def inconsistency_mask(
    preds: torch.Tensor, mode: str = "binary", threshold: float = 0.5, dilation: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Build pseudo-labels and Inconsistency Masks from the stacked predictions of an ensemble of teachers.

    - ``"binary"`` (C = 1): a teacher says foreground where its probability is strictly greater than
      ``threshold``. The pseudo-label is 1 where all teachers say foreground; the IM is 1 where some,
      but not all, teachers say foreground.
    - ``"multiclass"`` (C >= 2): per-teacher argmax over the channels. The pseudo-label holds the class
      index where all teachers agree; the IM is 1 wherever any two teachers disagree.
    - ``"multilabel"``: the binary rule per channel; the pseudo-label has one channel per class and
      the IM is the union (max) of the per-channel IMs.

    The IM is then optionally dilated (``dilation`` >= 2) and the pseudo-label is set to 0 in every
    channel inside the (dilated) IM; outside the IM it is left unchanged. With one teacher (E = 1)
    the IM is empty.

    Args:
        preds: probabilities of shape (E, B, C, *spatial), 2D or 3D spatial.
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        threshold: foreground threshold for the binary and multilabel modes, in (0, 1).
        dilation: kernel size of the IM dilation; 0 or 1 means none (the paper's default).

    Returns:
        ``(pseudo_label, im)``: pseudo_label of shape (B, Cp, *spatial) with Cp = C for
        ``"multilabel"`` and 1 otherwise (0/1 values, class indices for ``"multiclass"``), and im of
        shape (B, 1, *spatial) with 0/1 values. Both have the float dtype of ``preds`` (float32 for
        integer or boolean inputs) and its device; they are plain tensors (no metadata).
    """
    check_mode(mode)
    threshold = check_threshold(threshold)
    check_dilation(dilation)
    if not isinstance(preds, torch.Tensor):
        raise TypeError(f"preds must be a torch.Tensor, got {type(preds).__name__}.")
    if isinstance(preds, MetaTensor):  # the batched core works on plain tensors
        preds = preds.as_tensor()
    if preds.ndim - 3 not in _SPATIAL_DIMS:
        raise ValueError(
            f"preds must have shape (E, B, C, *spatial) with 2 or 3 spatial dims, got shape {tuple(preds.shape)}."
        )
    num_teachers, num_channels = preds.shape[0], preds.shape[2]
    if num_teachers < 1:
        raise ValueError("preds must hold the predictions of at least one teacher (E >= 1).")
    dtype = _output_dtype(preds)
    if preds.dtype == torch.bool:
        preds = preds.to(dtype)

    if mode == "multiclass":
        if num_channels < 2:
            raise ValueError(
                f"mode 'multiclass' needs C >= 2 channels of class probabilities, got C = {num_channels}."
            )
        votes = preds.argmax(dim=2)  # (E, B, *spatial)
        im = (votes != votes[:1]).any(dim=0).unsqueeze(1)  # (B, 1, *spatial)
        pseudo_label = votes[0].unsqueeze(1)  # the agreed class; zeroed inside the IM below
    else:
        if mode == "binary" and num_channels != 1:
            raise ValueError(
                f"mode 'binary' needs C = 1 channel, got C = {num_channels}; use 'multiclass' or 'multilabel'."
            )
        # all teachers say foreground <=> the smallest probability is above the threshold, and some
        # teacher does <=> the largest is; min/max over the teacher axis are much cheaper on CPU
        # than boolean all/any or integer counts over that axis
        pseudo_label = preds.amin(dim=0) > threshold
        disagree = (preds.amax(dim=0) > threshold) & ~pseudo_label  # some, but not all
        im = disagree if num_channels == 1 else disagree.any(dim=1, keepdim=True)

    if dilation > 1:
        im = dilate_mask(im.to(dtype), dilation) > 0
    if mode != "binary" or dilation > 1:  # binary without dilation: already 0 inside the IM
        pseudo_label = (
            pseudo_label & ~im if pseudo_label.dtype == torch.bool else pseudo_label.masked_fill(im, 0)
        )
    return pseudo_label.to(dtype), im.to(dtype)


def _check_mask(im: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """Return the boolean IM broadcastable onto ``target`` or raise ``ValueError``."""
    try:
        shape = torch.broadcast_shapes(im.shape, target.shape)
    except RuntimeError:
        shape = None
    if im.ndim != target.ndim or shape != target.shape:
        raise ValueError(
            f"im of shape {tuple(im.shape)} cannot be broadcast over {name} of shape {tuple(target.shape)}; "
            "expected im (1, *spatial) for a (C, *spatial) input or (B, 1, *spatial) for a batch."
        )
    return im > 0


def mask_image(img: torch.Tensor, im: torch.Tensor, fill_value: float = 0.0) -> torch.Tensor:
    """
    Cut the IM out of an image ("block input"): every channel is set to ``fill_value`` inside the IM.

    Args:
        img: image of shape (C, *spatial), or a batch (B, C, *spatial).
        im: mask of shape (1, *spatial), or (B, 1, *spatial) for a batch; pixels > 0 are inside.
        fill_value: value written into the IM pixels.

    Returns:
        the masked image, same shape, dtype and device as ``img``.
    """
    inside = _check_mask(im.to(img.device), img, "img")
    return torch.where(inside, torch.as_tensor(fill_value, dtype=img.dtype, device=img.device), img)


def mask_label(
    label: torch.Tensor,
    im: torch.Tensor,
    policy: str = "background",
    ignore_index: int = IGNORE_INDEX,
    im_class: int = 0,
) -> torch.Tensor:
    """
    Cut the IM out of a (pseudo-)label ("block output").

    Args:
        label: label of shape (C, *spatial), or a batch (B, C, *spatial).
        im: mask of shape (1, *spatial), or (B, 1, *spatial) for a batch; pixels > 0 are inside.
        policy: ``"ignore"`` writes ``ignore_index`` into every channel (for an ignore-index loss),
            ``"background"`` writes 0 into every channel (the paper's binary/multi-label runs),
            ``"im_class"`` writes ``im_class`` into a one-channel class-index label (the paper's
            multi-class runs use class 0 as the IM class).
        ignore_index: value for the ``"ignore"`` policy.
        im_class: class index for the ``"im_class"`` policy.

    Returns:
        the masked label, same shape, dtype and device as ``label``.
    """
    check_policy(policy)
    inside = _check_mask(im.to(label.device), label, "label")
    if policy == "ignore":
        value = ignore_index
        if value < 0 and (
            label.dtype == torch.bool or not (label.is_floating_point() or label.dtype.is_signed)
        ):
            raise ValueError(
                f"A label of dtype {label.dtype} cannot hold ignore_index={ignore_index}; "
                "cast the label to a signed integer or float type first."
            )
    elif policy == "background":
        value = 0
    else:
        if label.shape != im.shape:
            raise ValueError(
                f"policy 'im_class' needs a one-channel class-index label shaped like im {tuple(im.shape)}, "
                f"got label shape {tuple(label.shape)}."
            )
        value = im_class
    return torch.where(inside, torch.as_tensor(value, dtype=label.dtype, device=label.device), label)


def accept_pseudo_labels(
    pseudo_label: torch.Tensor,
    im: torch.Tensor,
    mode: str = "binary",
    min_foreground: int = 1,
    foreground_exceeds_im: bool = True,
    max_im_fraction: float | None = None,
) -> torch.Tensor:
    """
    Decide per image whether its pseudo-label is kept (the paper's acceptance rule and extensions).

    The agreed foreground is ``pseudo_label > 0`` for ``"binary"``, ``pseudo_label > 0`` outside the
    IM for ``"multiclass"`` (class 0 = background) and "any channel > 0" for ``"multilabel"``.
    An image is kept when all enabled criteria hold:

    - foreground area >= ``min_foreground`` pixels (switched off by 0);
    - foreground area > IM area (switched off by ``foreground_exceeds_im=False``);
    - IM area <= ``max_im_fraction`` of the pixels (switched off by ``None``).

    The paper's rule (binary) is the default: foreground > 0 and foreground > IM.

    Args:
        pseudo_label: pseudo-labels of shape (B, Cp, *spatial); Cp = 1 for binary and multiclass.
        im: Inconsistency Masks of shape (B, 1, *spatial).
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        min_foreground: minimum number of foreground pixels.
        foreground_exceeds_im: whether the foreground area must be larger than the IM area.
        max_im_fraction: largest accepted fraction of IM pixels, in [0, 1], or None.

    Returns:
        a boolean tensor of shape (B,) on the device of ``pseudo_label``; True = keep.
    """
    check_mode(mode)
    check_acceptance(min_foreground, max_im_fraction)
    if pseudo_label.ndim - 2 not in _SPATIAL_DIMS or im.ndim != pseudo_label.ndim:
        raise ValueError(
            "pseudo_label and im must have shapes (B, Cp, *spatial) and (B, 1, *spatial) with 2 or 3 spatial "
            f"dims, got {tuple(pseudo_label.shape)} and {tuple(im.shape)}."
        )
    if im.shape[0] != pseudo_label.shape[0] or im.shape[1] != 1 or im.shape[2:] != pseudo_label.shape[2:]:
        raise ValueError(
            f"im of shape {tuple(im.shape)} does not match pseudo_label of shape {tuple(pseudo_label.shape)}; "
            "expected im (B, 1, *spatial)."
        )
    if mode != "multilabel" and pseudo_label.shape[1] != 1:
        raise ValueError(
            f"mode {mode!r} needs a one-channel pseudo_label, got shape {tuple(pseudo_label.shape)}."
        )
    im = im.to(pseudo_label.device)
    inside = im > 0
    foreground = (pseudo_label > 0).any(dim=1, keepdim=True)
    if mode == "multiclass":
        foreground = foreground & ~inside
    fg_area = foreground.flatten(1).sum(dim=1)
    im_area = inside.flatten(1).sum(dim=1)
    accept = torch.ones(pseudo_label.shape[0], dtype=torch.bool, device=pseudo_label.device)
    if min_foreground > 0:
        accept &= fg_area >= min_foreground
    if foreground_exceeds_im:
        accept &= fg_area > im_area
    if max_im_fraction is not None:
        num_pixels = math.prod(pseudo_label.shape[2:])
        accept &= im_area.to(torch.float64) <= float(max_im_fraction) * num_pixels
    return accept
