"""Per-class statistics of a multi-class pseudo-label set: how much of each class the IM cuts out, how well
the pseudo-labels of each class agree with a hidden truth, and how certain the teachers were of each case.

Per batch :func:`class_batch` gives raw numbers (voxel counts, per-image Dice) that add up over batches and
shards; :func:`class_set_stats` turns those of a whole set into the statistics (``stats.json``):

- ``im_fraction_class_<c>``: of the voxels some teacher gives class ``c``, the fraction inside the IM;
- ``pl_dice_class_<c>`` / ``pl_dice_kept_class_<c>``: the mean over all / kept images of the Dice of the
  pseudo-label's class ``c`` against the hidden truth, outside the IM (images where the class is in neither
  are left out), when the unlabeled items carry a ``label``;
- ``certainty_mean`` / ``certainty_kept_mean``: the teachers' agreement on each case (``case_agreement``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from monai_im.methods.context import PseudoLabels
from monai_im.methods.pl_rules import class_masks
from monai_im.metrics.functional import overlap_scores

if TYPE_CHECKING:  # pseudo_result imports this module
    from monai_im.selftrain.pseudo_result import LabelledRun

__all__ = ["class_batch", "class_set_stats", "record_classes"]


def class_batch(
    probs: torch.Tensor, result: PseudoLabels, truth: torch.Tensor | None, mode: str
) -> tuple[list[int], list[list[float]] | None]:
    """The raw per-class numbers of one batch (multiclass only: ``([], None)`` otherwise).

    Args:
        probs: the teachers' stacked probabilities ``(E, B, C, *spatial)``.
        result: the method's pseudo-labels of the batch.
        truth: the hidden class indices ``(B, 1, *spatial)``, or None.
        mode: the method's mode.

    Returns:
        ``(voxels, dice)``: per class 1..C-1 the IM voxels of its extent, then the voxels of its extent
        (``2 * (C - 1)`` counts); and per image the Dice of each class outside the IM (NaN where the class is
        in neither), or None without a truth.
    """
    if mode != "multiclass":
        return [], None
    channels = probs.shape[2]
    im = result.im[:, 0] > 0 if result.im is not None else torch.zeros_like(result.label[:, 0], dtype=bool)
    votes = probs.argmax(dim=2)
    inside, extent = [], []
    for c in range(1, channels):  # a loop over classes, each vectorised over every voxel of the batch
        some = (votes == c).any(dim=0)
        inside.append(int((some & im).sum()))
        extent.append(int(some.sum()))
    if truth is None:
        return inside + extent, None
    pred = class_masks(result.label[:, 0], mode, channels)
    target = class_masks(truth.to(pred.device)[:, 0].long(), mode, channels)
    valid = (~im).unsqueeze(1)
    dice = overlap_scores(pred, target, "dice", empty_score=float("nan"), valid=valid)
    return inside + extent, dice.cpu().tolist()


def record_classes(
    part: LabelledRun, probs: torch.Tensor, result: PseudoLabels, truth: torch.Tensor | None, mode: str
) -> None:
    """Add the certainty and the per-class numbers of one batch (:func:`class_batch`) to ``part``."""
    accepted = result.accepted
    if result.certainty is not None:
        part.certainty.append(torch.stack([result.certainty.float(), accepted.float()]).cpu())
    voxels, dice = class_batch(probs, result, truth, mode)
    part.class_voxels.append(voxels)
    if dice is not None:
        part.class_dice.extend(dice)
        part.class_dice_kept.extend(d for d, a in zip(dice, accepted.tolist()) if a)


def _nanmean_rows(rows: Sequence[Sequence[float]]) -> np.ndarray:
    with warnings.catch_warnings():  # a class in no image: NaN, left out of the statistics
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(rows, dtype=np.float64), axis=0)


def class_set_stats(
    voxels: Sequence[Sequence[int]],
    dice: Sequence[Sequence[float]],
    dice_kept: Sequence[Sequence[float]],
    certainty: Sequence[torch.Tensor],
) -> dict[str, float]:
    """The per-class statistics of a set from the raw numbers of its batches (see the module docstring).

    Args:
        voxels: per batch, the counts of :func:`class_batch` (batches without them are skipped).
        dice: per image, the Dice of each class (:func:`class_batch`).
        dice_kept: the rows of ``dice`` of the kept images.
        certainty: per batch, ``(2, B)``: the teachers' certainty of each image and whether it was kept.
    """
    stats: dict[str, Any] = {}
    counts = [v for v in voxels if v]
    if counts:
        total = np.asarray(counts, dtype=np.int64).sum(axis=0)
        inside, extent = np.split(total, 2)
        for j, (i, e) in enumerate(zip(inside.tolist(), extent.tolist())):
            if e > 0:
                stats[f"im_fraction_class_{j + 1}"] = i / e
    for name, rows in (("pl_dice", dice), ("pl_dice_kept", dice_kept)):
        if rows:
            for j, v in enumerate(_nanmean_rows(rows).tolist()):
                if not np.isnan(v):
                    stats[f"{name}_class_{j + 1}"] = float(v)
    if certainty:
        value, kept = torch.cat(list(certainty), dim=1)
        stats["certainty_mean"] = float(value.mean())
        if kept.any():
            stats["certainty_kept_mean"] = float(value[kept > 0].mean())
    return stats
