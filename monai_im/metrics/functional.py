"""Per-image overlap scores on batched, already discretised masks.

Every function takes batch-first tensors ``(B, C, *spatial)`` (2D or 3D; torch tensors, MetaTensors or
numpy arrays) and returns one score per image (and per channel where stated). The inputs are expected to
be discretised by the evaluator's post-processing (sigmoid + threshold, or argmax + one-hot); a value
above 0.5 counts as foreground, so 0/1, boolean and 0/255 masks all work.

Empty-mask convention
---------------------
When a prediction and its ground truth are both empty the overlap is undefined. Here the score is
``empty_score`` (default 1.0: a correct "nothing here"); an empty prediction against a non-empty ground
truth, or the reverse, scores 0. Other conventions in use:

- the paper's reference code scores empty-vs-empty as IoU 0 but Dice 1;
- MONAI's :class:`~monai.metrics.DiceMetric` / :class:`~monai.metrics.MeanIoU` return NaN with the
  default ``ignore_empty=True`` (and 1.0 with ``ignore_empty=False``) and drop NaN when averaging.

Pass ``empty_score=0.0`` to reproduce the reference code's IoU. Because every image gets a finite
score, the per-image averages here never contain NaN.

One implementation
------------------
Every per-image IoU and Dice of the package (these functions, the metric classes and handlers, EvalNet's
:func:`monai_im.methods.quality.mask_iou`, the pseudo-labels' agreement with a hidden truth) is
:func:`overlap_scores`, which computes MONAI's :func:`monai.metrics.compute_iou` /
:func:`monai.metrics.compute_dice` with ``ignore_empty=False`` on boolean masks (exact integer counts)
and puts ``empty_score`` where both masks are empty (MONAI's value there is 1.0).
"""

from __future__ import annotations

import torch
from monai.metrics import compute_dice, compute_iou
from monai.networks.utils import one_hot
from monai.utils import convert_to_tensor

__all__ = [
    "binary_dice",
    "binary_iou",
    "channel_dice",
    "channel_iou",
    "overlap_scores",
    "present_class_miou",
]

#: values strictly above this count as foreground in a discretised mask.
FOREGROUND_THRESHOLD = 0.5


def as_bool_mask(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as a boolean torch tensor (``x > 0.5``), dropping any MetaTensor metadata."""
    x = convert_to_tensor(x, track_meta=False)
    if x.dtype == torch.bool:
        return x
    return x > FOREGROUND_THRESHOLD


def _check_pair(y_pred: torch.Tensor, y: torch.Tensor, name: str) -> None:
    if y_pred.shape != y.shape:
        raise ValueError(
            f"{name}: y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}."
        )
    if y_pred.dim() < 3:
        raise ValueError(
            f"{name}: expected batch-first (B, C, *spatial) tensors, got shape {tuple(y_pred.shape)}."
        )


def overlap_scores(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    metric: str = "iou",
    empty_score: float = 1.0,
    valid: torch.Tensor | None = None,
    pool_channels: bool = False,
    name: str = "overlap_scores",
) -> torch.Tensor:
    """
    Per-image, per-channel IoU or Dice of discretised masks: the one implementation of the package.

    MONAI's :func:`monai.metrics.compute_iou` / :func:`monai.metrics.compute_dice` (``ignore_empty=False``,
    every channel) on the boolean masks, with ``empty_score`` where both masks are empty.

    Args:
        y_pred: discretised prediction, ``(B, C, *spatial)`` (a value above 0.5 is foreground).
        y: ground truth of the same shape.
        metric: ``"iou"`` or ``"dice"``.
        empty_score: the score where prediction and truth are both empty (in ``valid``).
        valid: optional ``(B, 1 or C, *spatial)`` map; only its foreground elements are counted.
        pool_channels: count the elements of all channels together (one score per image).
        name: the caller's name in error messages.

    Returns:
        ``(B, C)`` float32, or ``(B, 1)`` with ``pool_channels``.
    """
    if metric not in ("iou", "dice"):
        raise ValueError(f"{name}: metric must be 'iou' or 'dice', got {metric!r}.")
    p = as_bool_mask(y_pred)
    g = as_bool_mask(y).to(p.device)
    _check_pair(p, g, name)
    if valid is not None:
        v = as_bool_mask(valid).to(p.device)
        p, g = p & v, g & v
    if pool_channels:
        p, g = p.flatten(1).unsqueeze(1), g.flatten(1).unsqueeze(1)
    compute = compute_iou if metric == "iou" else compute_dice
    scores = compute(p, g, include_background=True, ignore_empty=False).float()
    dims = list(range(2, p.dim()))
    empty = ~(p.any(dim=dims) | g.any(dim=dims))
    return torch.where(empty, torch.full_like(scores, float(empty_score)), scores)


def channel_iou(y_pred: torch.Tensor, y: torch.Tensor, empty_score: float = 1.0) -> torch.Tensor:
    """
    Per-image, per-channel IoU of multi-label masks (e.g. HeLa alive / dead / position).

    Args:
        y_pred: discretised prediction, ``(B, C, *spatial)``.
        y: ground truth of the same shape.
        empty_score: score of a channel where both masks are empty (see the module docstring).

    Returns:
        ``(B, C)`` float tensor.
    """
    return overlap_scores(y_pred, y, "iou", empty_score, name="channel_iou")


def channel_dice(y_pred: torch.Tensor, y: torch.Tensor, empty_score: float = 1.0) -> torch.Tensor:
    """
    Per-image, per-channel Dice of multi-label masks; same conventions as :func:`channel_iou`.

    Returns:
        ``(B, C)`` float tensor.
    """
    return overlap_scores(y_pred, y, "dice", empty_score, name="channel_dice")


def _single_channel(scores: torch.Tensor, name: str) -> torch.Tensor:
    if scores.shape[1] != 1:
        raise ValueError(
            f"{name} expects one-channel binary masks (B, 1, *spatial), got {scores.shape[1]} channels; "
            "select the foreground channel first, or use channel_iou / present_class_miou."
        )
    return scores[:, 0]


def binary_iou(y_pred: torch.Tensor, y: torch.Tensor, empty_score: float = 1.0) -> torch.Tensor:
    """
    Per-image IoU (Jaccard index) of binary masks, the ISIC 2018 key metric.

    Args:
        y_pred: thresholded prediction, ``(B, 1, *spatial)``.
        y: ground truth of the same shape.
        empty_score: score when both masks are empty (see the module docstring); an empty prediction
            against a non-empty ground truth (or the reverse) scores 0.

    Returns:
        ``(B,)`` float tensor.

    Example::

        >>> p = torch.tensor([[[[1, 1, 0, 0]]]])
        >>> g = torch.tensor([[[[0, 1, 1, 0]]]])
        >>> binary_iou(p, g)
        tensor([0.3333])
    """
    return _single_channel(channel_iou(y_pred, y, empty_score), "binary_iou")


def binary_dice(y_pred: torch.Tensor, y: torch.Tensor, empty_score: float = 1.0) -> torch.Tensor:
    """
    Per-image Dice (F1) of binary masks; same inputs and conventions as :func:`binary_iou`.

    Returns:
        ``(B,)`` float tensor.
    """
    return _single_channel(channel_dice(y_pred, y, empty_score), "binary_dice")


def _to_onehot(x: torch.Tensor, num_classes: int | None, name: str) -> torch.Tensor:
    x = convert_to_tensor(x, track_meta=False)
    if x.dim() < 3:
        raise ValueError(
            f"{name}: expected batch-first (B, C, *spatial) tensors, got shape {tuple(x.shape)}."
        )
    if x.shape[1] != 1:
        if num_classes is not None and x.shape[1] != num_classes:
            raise ValueError(f"{name}: got {x.shape[1]} one-hot channels but num_classes={num_classes}.")
        return as_bool_mask(x)
    if num_classes is None:
        raise ValueError(f"{name}: class-index inputs (B, 1, *spatial) need num_classes.")
    labels = x.long()
    if labels.numel() > 0 and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name}: class indices must be in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]."
        )
    return one_hot(labels, num_classes=num_classes, dtype=torch.bool)


def present_class_miou(
    y_pred: torch.Tensor,
    y: torch.Tensor,
    num_classes: int | None = None,
    include_background: bool = True,
    empty_score: float = 1.0,
) -> torch.Tensor:
    """
    Per-image mean IoU over the classes present in that image's ground truth (SUIM / Cityscapes protocol).

    A class absent from the ground truth is left out of the image's mean, even if it is predicted (its
    false-positive pixels still lower the IoU of the true class at those pixels).

    Args:
        y_pred: one-hot prediction ``(B, C, *spatial)``, or class indices ``(B, 1, *spatial)`` with
            ``num_classes``.
        y: ground truth in either of the same two forms.
        num_classes: number of classes including background; needed when both inputs are class indices,
            otherwise taken from the one-hot input.
        include_background: whether class 0 takes part in the mean.
        empty_score: score of an image whose ground truth has no (included) class at all:
            ``empty_score`` if the prediction has none either, else 0.

    Returns:
        ``(B,)`` float tensor.
    """
    if num_classes is None:  # take it from whichever input is one-hot
        num_classes = next((int(x.shape[1]) for x in (y_pred, y) if x.ndim > 1 and x.shape[1] > 1), None)
    p = _to_onehot(y_pred, num_classes, "present_class_miou")
    g = _to_onehot(y, num_classes, "present_class_miou").to(p.device)
    if p.shape != g.shape:
        raise ValueError(
            f"present_class_miou: y_pred and y disagree after one-hot conversion: {tuple(p.shape)} vs {tuple(g.shape)}; "
            "pass num_classes for class-index inputs."
        )
    if not include_background:
        p, g = p[:, 1:], g[:, 1:]
    iou = channel_iou(p, g, empty_score=0.0)  # (B, C); absent classes are masked out below
    dims = list(range(2, g.dim()))
    present = g.any(dim=dims)
    n_present = present.sum(dim=1)
    miou = torch.where(present, iou, torch.zeros_like(iou)).sum(dim=1) / n_present.clamp_min(1)
    pred_empty = ~p.flatten(1).any(dim=1)
    fallback = torch.where(pred_empty, torch.full_like(miou, float(empty_score)), torch.zeros_like(miou))
    return torch.where(n_present > 0, miou, fallback)
