"""What a pseudo-labelling pass produced: the result and its IM figure, the datalist rows (paths relative to
the set's folder on disk), and the statistics of the whole set."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_im.data.datalist import write_datalist
from monai_im.io import atomic_write_json, load_json
from monai_im.metrics.functional import overlap_scores
from monai_im.selftrain.pseudo_classes import class_set_stats

__all__ = ["FigureSample", "PseudoLabelResult", "LabelledRun", "agreement", "finish_set", "relative_row"]


@dataclass
class FigureSample:
    """The pieces of the IM figure for a few unlabeled images (CPU tensors, channel first)."""

    images: torch.Tensor
    teacher_masks: torch.Tensor
    im: torch.Tensor
    pseudo_label: torch.Tensor
    masked_images: torch.Tensor

    def plot(self, path: str | os.PathLike) -> Path:
        """Draw the IM figure (see :func:`monai_im.visualize.plot_inconsistency_mask`) to the PNG ``path``."""
        from monai_im.visualize import plot_inconsistency_mask

        return Path(
            plot_inconsistency_mask(
                self.images,
                self.teacher_masks,
                self.im,
                self.pseudo_label,
                self.masked_images,
                path,
                reverse_indexing=True,
            )
        )


@dataclass
class PseudoLabelResult:
    """What one pseudo-labelling pass produced."""

    items: list[dict[str, Any]]
    stats: dict[str, float]
    figure: FigureSample | None = None
    output_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    figure_path: str | None = None

    #: entries of a pseudo-label datalist row that are file paths (the others, e.g. ``score``, are values)
    PATH_KEYS = ("label", "im", "masked_image")
    FIGURE = "im_figure.png"

    @classmethod
    def _resolve(cls, row: Mapping[str, Any], folder: Path) -> dict[str, Any]:
        item = {k: str(folder / v) if k in cls.PATH_KEYS else v for k, v in row.items()}
        if "source" not in row:  # sets of versions <= 0.3: "image" is the masked copy inside the folder
            item["image"] = str(folder / row["image"])
        return item

    @classmethod
    def load(cls, folder: str | os.PathLike) -> PseudoLabelResult | None:
        """A finished pseudo-label set written by :class:`PseudoLabeler`, or None when ``folder`` holds none.

        The paths of its files in ``datalist.json`` are relative to ``folder`` and are resolved against it,
        so a moved or copied set refers to its own files; ``image`` is the original unlabeled image and
        ``source`` its index in the unlabeled list (see :meth:`SelfTrainingStudy.pseudo_label`).
        """
        folder = Path(folder)
        if not ((folder / "datalist.json").is_file() and (folder / "stats.json").is_file()):
            return None
        rows = load_json(folder / "datalist.json")["pseudo_labeled"]
        items = [cls._resolve(row, folder) for row in rows]
        figure = folder / cls.FIGURE
        return cls(
            items=items,
            stats=load_json(folder / "stats.json"),
            output_dir=str(folder),
            figure_path=str(figure) if figure.is_file() else None,
        )


@dataclass
class LabelledRun:
    """What the teachers made of a run of batches, before the statistics of the whole set."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    #: per batch: images, accepted, sum of the IM fractions, sum of the kept images' IM fractions
    batches: list[tuple[int, int, float, float]] = field(default_factory=list)
    quality: list[float] = field(default_factory=list)
    quality_kept: list[float] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    #: per batch: the teachers' certainty of each image and whether it was kept, ``(2, B)``
    certainty: list[torch.Tensor] = field(default_factory=list)
    #: per batch: the per-class voxel counts, and per image: the per-class Dice (multiclass, see
    #: :mod:`monai_im.selftrain.pseudo_classes`)
    class_voxels: list[list[int]] = field(default_factory=list)
    class_dice: list[list[float]] = field(default_factory=list)
    class_dice_kept: list[list[float]] = field(default_factory=list)
    figure: FigureSample | None = None
    figure_path: Path | None = None


def relative_row(item: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """A datalist row with its file paths relative to ``root`` (how a set's ``datalist.json`` stores them)."""
    keys = PseudoLabelResult.PATH_KEYS
    return {k: os.path.relpath(v, root) if k in keys else v for k, v in item.items()}


def moved_row(item: Mapping[str, Any], old: Path, new: Path) -> dict[str, Any]:
    """A datalist row whose files under the folder ``old`` now lie under ``new``."""
    keys = PseudoLabelResult.PATH_KEYS
    return {k: str(new / os.path.relpath(v, old)) if k in keys else v for k, v in item.items()}


def agreement(pred: torch.Tensor, truth: torch.Tensor, im: torch.Tensor | None) -> torch.Tensor:
    """Per-image IoU of pseudo-label and hidden truth over the pixels outside the IM.

    Both empty outside the IM scores 1; an image entirely inside the IM has nothing to score (NaN).
    """
    valid = torch.ones_like(pred) if im is None else (im < 0.5).expand_as(pred)
    iou = overlap_scores(pred, truth, "iou", valid=valid, pool_channels=True)[:, 0]
    return torch.where(valid.flatten(1).any(1), iou, torch.full_like(iou, float("nan")))


def _score_stats(scores: list[torch.Tensor]) -> dict[str, float]:
    """Mean quality score of all and of the kept pseudo-labels (methods that score them)."""
    if not scores:
        return {}
    score, kept = torch.cat(scores, dim=1)
    out = {"score_mean": float(score.mean())}
    if kept.any():
        out["score_kept_mean"] = float(score[kept > 0].mean())
    return out


def _stats(totals: Mapping[str, float], quality: list[float], quality_kept: list[float]) -> dict[str, float]:
    n = max(int(totals["images"]), 1)
    kept = int(totals["accepted"])
    stats = {
        "unlabeled_images": int(totals["images"]),
        "images_kept": kept,
        "kept_fraction": kept / n,
        "im_fraction": totals["im_fraction_sum"] / n,
        "im_fraction_kept": totals["im_fraction_kept_sum"] / max(kept, 1),
    }
    if quality and not np.isnan(quality).all():
        stats["label_iou"] = float(np.nanmean(quality))
    if quality_kept and not np.isnan(quality_kept).all():
        stats["label_iou_kept"] = float(np.nanmean(quality_kept))
    return stats


def finish_set(tmp: Path, part: LabelledRun, extra_stats: Mapping[str, float] | None) -> dict[str, float]:
    """The statistics of a whole set from its batches; ``datalist.json`` and ``stats.json`` into ``tmp``.

    Args:
        tmp: the set's folder being written.
        part: the rows and raw statistics of every batch of the set, in batch order.
        extra_stats: statistics of the method's preparation, stored with the pseudo-label statistics.
    """
    totals: dict[str, float] = {
        "images": 0,
        "accepted": 0,
        "im_fraction_sum": 0.0,
        "im_fraction_kept_sum": 0.0,
    }
    for n, accepted, im_sum, im_kept_sum in part.batches:  # in batch order: the sums of one pass
        totals["images"] += n
        totals["accepted"] += accepted
        totals["im_fraction_sum"] += im_sum
        totals["im_fraction_kept_sum"] += im_kept_sum
    stats = {**_stats(totals, part.quality, part.quality_kept), **_score_stats(part.scores)}
    stats.update(class_set_stats(part.class_voxels, part.class_dice, part.class_dice_kept, part.certainty))
    stats.update({k: float(v) for k, v in (extra_stats or {}).items()})
    write_datalist(tmp / "datalist.json", {"pseudo_labeled": [relative_row(it, tmp) for it in part.rows]})
    atomic_write_json(tmp / "stats.json", stats)
    return stats
