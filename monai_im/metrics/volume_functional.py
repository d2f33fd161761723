"""The functional core of the per-class volume metrics of :mod:`monai_im.metrics.volume` (whose module
docstring states the conventions): class maps to one-hot, per-class Dice and normalised surface Dice, and
their macro mean."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import compute_dice, compute_surface_dice
from monai.networks.utils import one_hot
from monai.utils import convert_to_tensor

__all__ = [
    "FLARE22_LABELLED_SLICES_ONLY",
    "FLARE22_ORGANS",
    "FLARE22_TOLERANCES",
    "LABEL_IGNORE_VALUE",
    "macro_mean",
    "per_class_dice",
    "per_class_surface_dice",
    "prepare_one_hot",
]

#: FLARE22 organ names in label order (labels 1..13), usable in metric names.
FLARE22_ORGANS: tuple[str, ...] = (
    "liver",
    "right_kidney",
    "spleen",
    "pancreas",
    "aorta",
    "ivc",
    "right_adrenal",
    "left_adrenal",
    "gallbladder",
    "esophagus",
    "stomach",
    "duodenum",
    "left_kidney",
)
#: the official FLARE22 NSD tolerances in mm, in label order (labels 1..13).
FLARE22_TOLERANCES: tuple[float, ...] = (5.0, 3.0, 3.0, 5.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0, 5.0, 7.0, 3.0)
#: labels FLARE22 scores only on the ground truth's slices (aorta, IVC, esophagus: their annotations stop at
#: arbitrary slices); pass as ``labelled_slices_only`` to follow the official evaluation (which also drops the
#: last labelled slice; here the range includes it).
FLARE22_LABELLED_SLICES_ONLY: tuple[int, ...] = (5, 6, 10)
#: label value of voxels left out of the metrics by default (unannotated voxels of a volume); the IM
#: value of the training targets (:data:`monai_im.constants.IGNORE_INDEX`) can be passed as ``ignore_index``.
LABEL_IGNORE_VALUE = 255


def _class_indices(x: torch.Tensor, num_classes: int, what: str, ignore_index: int | None) -> torch.Tensor:
    """``(B, 1, ...)`` integer map from class indices or a one-hot / probability map; ignored voxels -> -1."""
    if x.shape[1] == num_classes and num_classes > 1:
        idx = x.argmax(dim=1, keepdim=True)
        if what == "label":  # one-hot label: voxels without any class are ignored
            idx[~(x > 0.5).any(dim=1, keepdim=True)] = -1
        return idx
    if x.shape[1] != 1:
        raise ValueError(
            f"{what}: expected class indices (B, 1, ...) or one-hot (B, {num_classes}, ...), "
            f"got shape {tuple(x.shape)}."
        )
    if x.is_floating_point():
        if (x != torch.round(x)).any():
            raise ValueError(f"{what}: class indices must be whole numbers, got non-integer values.")
    idx = x.long()
    ignored = idx == ignore_index if ignore_index is not None else torch.zeros_like(idx, dtype=torch.bool)
    bad = ((idx < 0) | (idx >= num_classes)) & ~ignored
    if bad.any():
        allowed = f"0..{num_classes - 1}" + (f" or {ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"{what}: values must be {allowed}, found {int(idx[bad][0])}.")
    return torch.where(ignored, torch.full_like(idx, -1), idx)


def _restrict_to_labelled_slices(
    pred: torch.Tensor, label: torch.Tensor, classes: Sequence[int], axis: int
) -> torch.Tensor:
    """Clear ``pred[:, c]`` outside the slices (along spatial ``axis``) where ``label[:, c]`` has voxels."""
    cls = list(classes)
    dim = axis % (label.dim() - 2) + 2
    others = [d for d in range(2, label.dim()) if d != dim]
    on = label[:, cls].amax(dim=others) > 0  # (B, k, L): the slices holding the class
    pos = torch.arange(on.shape[-1], device=on.device)
    first = torch.where(on, pos, on.shape[-1]).amin(dim=-1, keepdim=True)
    last = torch.where(on, pos, -1).amax(dim=-1, keepdim=True)
    # a class absent from the label keeps its whole prediction (a false positive counts)
    keep = ((pos >= first) & (pos <= last)) | ~on.any(dim=-1, keepdim=True)
    shape = [*keep.shape[:2]] + [keep.shape[-1] if d == dim else 1 for d in range(2, label.dim())]
    pred = pred.clone()
    pred[:, cls] = pred[:, cls] * keep.reshape(shape).to(pred.dtype)
    return pred


def prepare_one_hot(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = LABEL_IGNORE_VALUE,
    labelled_slices_only: Sequence[int] = (),
    slice_axis: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    One-hot float prediction and label ``(B, num_classes, *spatial)``, ignored voxels zero in every channel.

    Args:
        y_pred: class indices ``(B, 1, ...)`` or one-hot / probabilities ``(B, num_classes, ...)``.
        y: class indices ``(B, 1, ...)`` (``ignore_index`` marks left-out voxels) or one-hot
            ``(B, num_classes, ...)`` (voxels without a class are left out).
        num_classes: number of classes including background.
        ignore_index: label value of left-out voxels; ``None`` for none.
        labelled_slices_only: labels whose prediction only counts on the slices (along ``slice_axis``) where
            the label has that class, e.g. :data:`FLARE22_LABELLED_SLICES_ONLY`.
        slice_axis: spatial axis of the slices (``-1``: the last one, z of an RAS volume).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background and one class), got {num_classes}.")
    p = convert_to_tensor(y_pred, track_meta=False)
    g = convert_to_tensor(y, track_meta=False).to(p.device)
    if p.dim() < 3 or g.dim() != p.dim() or p.shape[0] != g.shape[0] or p.shape[2:] != g.shape[2:]:
        raise ValueError(
            "y_pred and y must be batch-first (B, C, *spatial) with the same batch and spatial size, "
            f"got {tuple(p.shape)} and {tuple(g.shape)}."
        )
    bad = [c for c in labelled_slices_only if not 0 < int(c) < num_classes]
    if bad:
        raise ValueError(f"labelled_slices_only: labels must be in 1..{num_classes - 1}, got {bad}.")
    label_idx = _class_indices(g, num_classes, "label", ignore_index)
    pred_idx = _class_indices(p, num_classes, "prediction", None)
    keep = label_idx >= 0
    pred_oh = one_hot(pred_idx, num_classes, dtype=torch.float32) * keep
    label_oh = one_hot(label_idx.clamp_min(0), num_classes, dtype=torch.float32) * keep
    if labelled_slices_only:
        pred_oh = _restrict_to_labelled_slices(pred_oh, label_oh, labelled_slices_only, slice_axis)
    return pred_oh, label_oh


def _absent_to_nan(values: torch.Tensor, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """NaN where a class is in neither ``pred`` nor ``label`` (values, pred and label start at one class)."""
    dims = list(range(2, pred.dim()))
    present = (pred.sum(dim=dims) + label.sum(dim=dims)) > 0
    return torch.where(present.to(values.device), values.float(), torch.full_like(values.float(), math.nan))


def per_class_dice(
    y_pred: torch.Tensor, y: torch.Tensor, num_classes: int, include_background: bool = False, **kwargs: Any
) -> torch.Tensor:
    """
    Per-case, per-class Dice ``(B, num_classes - 1)`` (or ``(B, num_classes)`` with the background).

    NaN where the class is absent from both the label and the prediction; 0 where only one has it.
    ``kwargs`` (``ignore_index``, ``labelled_slices_only``, ``slice_axis``) go to :func:`prepare_one_hot`.

    Args:
        y_pred: class indices ``(B, 1, ...)`` or one-hot ``(B, num_classes, ...)``.
        y: class indices ``(B, 1, ...)`` or one-hot ``(B, num_classes, ...)``.
        num_classes: number of classes including background.
        include_background: whether class 0 gets a column.
    """
    pred, label = prepare_one_hot(y_pred, y, num_classes, **kwargs)
    dice = compute_dice(pred, label, include_background=True, ignore_empty=False)
    start = 0 if include_background else 1
    return _absent_to_nan(dice[:, start:], pred[:, start:], label[:, start:])


def _check_spacing(
    spacing: float | Sequence[float] | None, spatial_dims: int | None = None
) -> list[float] | None:
    """Voxel sizes in mm as a list (one per spatial axis when ``spatial_dims`` is given); ``None`` stays."""
    if spacing is None:
        return None
    single = isinstance(spacing, (int, float))
    values = [float(spacing)] * (spatial_dims or 1) if single else [float(s) for s in spacing]
    ok = all(math.isfinite(s) and s > 0 for s in values) and len(values) > 0
    if not ok or (spatial_dims is not None and len(values) != spatial_dims):
        raise ValueError(
            f"spacing must be {spatial_dims or 'the'} positive voxel sizes in mm (or one number, or None), "
            f"got {spacing}."
        )
    return [values[0]] * spatial_dims if single and spatial_dims else values


def _check_tolerances(tolerances: float | Sequence[float], n: int) -> list[float]:
    """One non-negative tolerance in mm per class 1..n."""
    single = isinstance(tolerances, (int, float))
    tol = [float(tolerances)] * n if single else [float(t) for t in tolerances]
    if len(tol) != n or not all(math.isfinite(t) and t >= 0 for t in tol):
        raise ValueError(
            f"tolerances must be one or {n} non-negative values in mm (classes 1..{n}), got {tolerances}."
        )
    return tol


def per_class_surface_dice(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    tolerances: float | Sequence[float] = FLARE22_TOLERANCES,
    spacing: float | Sequence[float] | None = None,
    use_subvoxels: bool = True,
    **kwargs: Any,
) -> torch.Tensor:
    """
    Per-case, per-class normalised surface Dice ``(B, num_classes - 1)`` of the classes 1..N.

    NaN where the class is absent from both the label and the prediction; 0 where only one has it.
    ``kwargs`` (``ignore_index``, ``labelled_slices_only``, ``slice_axis``) go to :func:`prepare_one_hot`.

    Args:
        y_pred: class indices ``(B, 1, ...)`` or one-hot ``(B, num_classes, ...)``.
        y: class indices ``(B, 1, ...)`` or one-hot ``(B, num_classes, ...)``.
        num_classes: number of classes including background.
        tolerances: boundary tolerance in mm, one for all classes or one per class 1..N.
        spacing: voxel size in mm along each spatial axis (one number: isotropic); ``None`` is 1 mm.
        use_subvoxels: weight the boundary by surface-element areas (as the DeepMind surface-distance code
            the FLARE22 evaluation uses) rather than counting boundary voxels.
    """
    tol = _check_tolerances(tolerances, num_classes - 1)
    pred, label = prepare_one_hot(y_pred, y, num_classes, **kwargs)
    spacing_mm = _check_spacing(spacing, pred.dim() - 2)
    with warnings.catch_warnings():  # absent classes are expected and handled (NaN or 0)
        warnings.filterwarnings("ignore", message=r"the (ground truth|prediction) of class .* is all 0")
        warnings.filterwarnings("ignore", message=r".*always_return_as_numpy", category=FutureWarning)
        nsd = compute_surface_dice(
            pred,
            label,
            class_thresholds=tol,
            include_background=False,
            spacing=spacing_mm,
            use_subvoxels=use_subvoxels,
        )
    return _absent_to_nan(nsd, pred[:, 1:], label[:, 1:])


def macro_mean(per_class: torch.Tensor) -> float:
    """Mean of the finite per-class values (classes never present are NaN and left out); NaN if none."""
    finite = per_class[~torch.isnan(per_class)]
    return float(finite.mean()) if finite.numel() else math.nan
