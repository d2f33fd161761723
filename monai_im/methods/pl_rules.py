"""Pseudo-label rules that survive weak teachers: k-of-n votes, case acceptance by teacher agreement and
per-class teacher gates (the options of the IM methods, see ``docs/methods.md``).

- :func:`vote_mask`: a class (or foreground) wins where at least ``k`` of the ``n`` teachers vote for it;
  the Inconsistency Mask is where no class reaches ``k`` votes. ``k = n`` is the unanimity of
  :func:`monai_im.transforms.inconsistency_mask`.
- :func:`teacher_certainty`: per image, each teacher's per-class agreement (IoU or Dice) with the
  teachers' majority-vote label, reduced over the classes and then the minimum over the teachers;
  a whole unlabeled case is kept only where it reaches a threshold.
- :func:`class_scores` and :func:`gate_classes`: the teachers' per-class Dice on labeled images; the
  voxels any teacher gives a class scoring below the gate go into the IM (left out of the loss).

Everything is vectorised over batch and voxels; the only Python loops run over teachers or classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai_im.metrics.functional import overlap_scores
from monai_im.transforms import dilate_mask

logger = logging.getLogger("monai_im")

__all__ = [
    "PseudoLabelRules",
    "vote_count",
    "vote_mask",
    "teacher_masks",
    "class_masks",
    "class_index",
    "teacher_certainty",
    "class_scores",
    "gate_classes",
    "gated_classes",
]

#: reductions of the per-class agreement of one teacher with the ensemble label
REDUCTIONS = ("min", "mean")
#: overlap metrics of the case acceptance
AGREEMENT_METRICS = ("iou", "dice")


def vote_count(vote: int | str | None, num_teachers: int) -> int | None:
    """The number of teacher votes ``k`` a class needs: None (unanimity, today's rule), an integer, or
    ``"majority"`` = ceil((n + 1) / 2) of ``num_teachers`` = n.

    Raises:
        ValueError: ``k`` is not in 1..n.
    """
    if vote is None:
        return None
    k = math.ceil((num_teachers + 1) / 2) if vote == "majority" else int(vote)
    if not 1 <= k <= num_teachers:
        raise ValueError(f"vote needs 1 <= k <= {num_teachers} teachers, got k = {k}")
    return k


def teacher_masks(probs: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """Each teacher's hard prediction: class indices ``(E, B, *spatial)`` (multiclass) or boolean masks
    ``(E, B, C, *spatial)`` (binary, multilabel) from stacked probabilities ``(E, B, C, *spatial)``."""
    return probs.argmax(dim=2) if mode == "multiclass" else probs > threshold


def vote_mask(
    probs: torch.Tensor, mode: str, threshold: float, k: int, dilation: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-label and IM by k-of-n teacher votes (the same shapes and dtypes as ``inconsistency_mask``).

    Multiclass: the class most teachers vote for wins where it has at least ``k`` votes; the IM holds the
    voxels where it has fewer, or where two classes tie for the most votes. Binary and multilabel, per
    channel: foreground where at least ``k`` teachers say foreground, background where at least ``k`` say
    background, the IM where neither (or, for ``k <= n / 2``, both) holds; multilabel IMs are united over
    the channels. The label is 0 inside the (optionally dilated) IM. ``k = n`` gives the unanimity rule.

    Args:
        probs: stacked probabilities ``(E, B, C, *spatial)``.
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold of each teacher (binary, multilabel).
        k: votes a class needs, 1..E.
        dilation: kernel size of the IM dilation (0 or 1: none).
    """
    num = probs.shape[0]
    if not 1 <= k <= num:
        raise ValueError(f"vote needs 1 <= k <= {num} teachers, got k = {k}")
    dtype = probs.dtype if probs.is_floating_point() else torch.float32
    hard = teacher_masks(probs, mode, threshold)
    if mode == "multiclass":
        best = torch.zeros(hard.shape[1:], dtype=torch.int64, device=probs.device)
        winner, tied = torch.zeros_like(best), torch.zeros_like(best, dtype=torch.bool)
        for c in range(probs.shape[2]):  # a loop over classes, each vectorised over every voxel
            count = (hard == c).sum(dim=0)
            tied = torch.where(count > best, False, tied | ((count == best) & (count > 0)))
            winner = torch.where(count > best, c, winner)
            best = torch.maximum(best, count)
        im = ((best < k) | tied).unsqueeze(1)
        label = winner.unsqueeze(1)
    else:
        foreground = hard.sum(dim=0)
        fg, bg = foreground >= k, (num - foreground) >= k
        disagree = fg == bg
        im = disagree.any(dim=1, keepdim=True)
        label = fg
    if dilation > 1:
        im = dilate_mask(im.to(dtype), dilation) > 0
    label = label.masked_fill(im, 0)
    return label.to(dtype), im.to(dtype)


def class_masks(x: torch.Tensor, mode: str, num_classes: int) -> torch.Tensor:
    """``(B, K, *spatial)`` boolean class masks of a hard prediction ``(B, *spatial)`` of class indices
    (multiclass: classes 1..C-1) or ``(B, C, *spatial)`` masks (binary, multilabel: every channel)."""
    if mode != "multiclass":
        return x > 0
    return torch.stack([x == c for c in range(1, num_classes)], dim=1)


def class_index(mode: str) -> int:
    """The class number of the first entry of :func:`class_masks`: 1 for multiclass (background excluded),
    0 for channels of binary and multilabel masks."""
    return 1 if mode == "multiclass" else 0


def teacher_certainty(
    probs: torch.Tensor,
    mode: str,
    threshold: float,
    metric: str = "iou",
    reduction: str = "mean",
    skip_classes: Iterable[int] = (),
) -> torch.Tensor:
    """Per image, how well the teachers agree: the minimum over teachers of the reduced per-class
    agreement of the teacher with the majority-vote label.

    The per-class scores are :func:`monai_im.metrics.functional.overlap_scores` (a class empty in both
    scores 1.0); background (class 0 of a multiclass label) and ``skip_classes`` are left out.

    Args:
        probs: stacked probabilities ``(E, B, C, *spatial)``.
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold (binary, multilabel).
        metric: "iou" or "dice".
        reduction: "mean" or "min" over the classes.
        skip_classes: class numbers (multiclass indices, or channels) not counted.

    Returns:
        ``(B,)`` float32 certainty in [0, 1] (1.0 when every class is skipped).
    """
    num, channels = probs.shape[0], probs.shape[2]
    majority = math.ceil((num + 1) / 2)
    ensemble, _ = vote_mask(probs, mode, threshold, majority)
    first = class_index(mode)
    truth = class_masks(ensemble[:, 0] if mode == "multiclass" else ensemble, mode, channels)
    keep = [j for j in range(truth.shape[1]) if j + first not in set(skip_classes)]
    hard = teacher_masks(probs, mode, threshold)
    per_teacher = []
    for e in range(num):  # a loop over teachers, each vectorised over the batch
        scores = overlap_scores(class_masks(hard[e], mode, channels), truth, metric, empty_score=1.0)[:, keep]
        if not keep:
            scores = torch.ones(truth.shape[0], 1, device=probs.device)
        per_teacher.append(scores.amin(dim=1) if reduction == "min" else scores.mean(dim=1))
    return torch.stack(per_teacher).amin(dim=0)


def class_scores(probs: torch.Tensor, truth: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """Each teacher's per-image, per-class Dice against the truth: ``(E, B, K)`` float32, NaN where the
    class is in neither (classes as :func:`teacher_certainty` counts them).

    Args:
        probs: stacked probabilities ``(E, B, C, *spatial)``.
        truth: class indices ``(B, 1, *spatial)`` (multiclass) or masks ``(B, C, *spatial)``.
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold (binary, multilabel).
    """
    channels = probs.shape[2]
    truth = truth.to(probs.device)
    target = class_masks(truth[:, 0].long() if mode == "multiclass" else truth, mode, channels)
    hard = teacher_masks(probs, mode, threshold)
    return torch.stack(
        [
            overlap_scores(class_masks(hard[e], mode, channels), target, "dice", empty_score=float("nan"))
            for e in range(probs.shape[0])
        ]
    )


def gate_classes(
    probs: torch.Tensor,
    label: torch.Tensor,
    im: torch.Tensor,
    mode: str,
    threshold: float,
    gated: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put every voxel any teacher gives a ``gated`` class into the IM (label 0 there, as inside any IM).

    Args:
        probs: stacked probabilities ``(E, B, C, *spatial)``.
        label: the pseudo-label ``(B, Cp, *spatial)``.
        im: its IM ``(B, 1, *spatial)``.
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold (binary, multilabel).
        gated: class numbers (multiclass indices, or channels) to leave out.
    """
    if not gated:
        return label, im
    hard = teacher_masks(probs, mode, threshold)
    if mode == "multiclass":
        out = torch.zeros_like(hard[0], dtype=torch.bool)
        for c in gated:
            out |= (hard == c).any(dim=0)
        out = out.unsqueeze(1)
    else:
        out = hard[:, :, list(gated)].any(dim=0).any(dim=1, keepdim=True)
    inside = (im > 0) | out
    return label.masked_fill(inside.expand_as(label), 0), inside.to(im.dtype)


def gated_classes(method: Any, context: Any, gate: float) -> tuple[tuple[int, ...], dict[str, float]]:
    """The classes whose teachers score a Dice below ``gate`` on the validation images (the labeled ones
    where there are none), and the statistics: ``gate_dice_class_<c>`` (each teacher's mean over the images
    where the class is present, then the mean over the teachers) and ``classes_gated``.

    Args:
        method: the method (its ``predict``, ``activation``, ``mode`` and ``threshold``).
        context: the :class:`monai_im.methods.GenerationContext` of the generation.
        gate: the class gate.
    """
    from monai.utils import convert_to_tensor

    split = "validation" if context.datalist.get("validation") else "labeled"
    scores = []
    with torch.no_grad():
        for batch in context.labeled_batches(split):
            x = convert_to_tensor(batch["image"], track_meta=False).to(context.device).float()
            y = convert_to_tensor(batch["label"], track_meta=False)
            probs = method.activation(method.predict(context.teachers, x, context.inferer), channel_dim=2)
            scores.append(class_scores(probs, y, method.mode, method.threshold).cpu())
    if not scores:
        raise ValueError("class_gate scores the teachers on labeled images: the datalist has none")
    per_class = torch.nanmean(torch.cat(scores, dim=1), dim=1).mean(dim=0)  # NaN: the class never appears
    first = class_index(method.mode)
    gated = tuple(first + j for j, s in enumerate(per_class.tolist()) if s < gate)
    stats = {f"gate_dice_class_{first + j}": s for j, s in enumerate(per_class.tolist()) if not math.isnan(s)}
    logger.info(
        f"generation {context.generation}: class gate {gate}: "
        + (f"classes {list(gated)} left out of the pseudo-labels" if gated else "no class left out")
        + " (teachers' Dice per class: "
        + ", ".join(f"{k.rsplit('_', 1)[1]}: {v:.3f}" for k, v in stats.items())
        + ")"
    )
    return gated, {**stats, "classes_gated": float(len(gated))}


@dataclass(frozen=True)
class PseudoLabelRules:
    """The options of the pseudo-label rules, checked (see the ``Args`` of
    :class:`monai_im.methods.InconsistencyMask`)."""

    case_agreement: float | None = None
    case_agreement_reduction: str = "mean"
    case_agreement_metric: str = "iou"
    vote: int | str | None = None
    class_gate: float | None = None

    def __post_init__(self) -> None:
        for name in ("case_agreement", "class_gate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be null or in [0, 1], got {value}")
        if self.case_agreement_reduction not in REDUCTIONS:
            raise ValueError(f"case_agreement_reduction must be one of {REDUCTIONS}")
        if self.case_agreement_metric not in AGREEMENT_METRICS:
            raise ValueError(f"case_agreement_metric must be one of {AGREEMENT_METRICS}")
        vote = self.vote
        if isinstance(vote, str) and vote.strip().isdigit():
            object.__setattr__(self, "vote", vote := int(vote))
        if vote is not None and vote != "majority" and (isinstance(vote, bool) or not isinstance(vote, int)):
            raise ValueError(f"vote must be null, an integer k or 'majority', got {vote!r}")
        if isinstance(vote, int) and vote < 1:
            raise ValueError(f"vote must be at least 1, got {vote}")

    def describe(self) -> dict[str, Any]:
        """The rules that are switched on (none by default, so a default method describes itself as before)."""
        out: dict[str, Any] = {}
        if self.case_agreement is not None:
            out["case_agreement"] = float(self.case_agreement)
            out["case_agreement_reduction"] = self.case_agreement_reduction
            out["case_agreement_metric"] = self.case_agreement_metric
        if self.vote is not None:
            out["vote"] = self.vote
        if self.class_gate is not None:
            out["class_gate"] = float(self.class_gate)
        return out
