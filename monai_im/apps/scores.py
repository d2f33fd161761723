"""The disagreement scores of an ensemble's probabilities over one image (see
:class:`monai_im.apps.suggest.Suggester`): how much the teachers of a study disagree about it."""

from __future__ import annotations

import torch
from monai.utils import convert_to_tensor

from monai_im.transforms.functional import check_mode, check_threshold, inconsistency_mask

__all__ = ["SCORES", "disagreement_scores"]

#: The scores of :func:`disagreement_scores`, in the column order of ``suggestions.csv``.
SCORES = ("im_fraction", "pairwise_disagreement", "entropy", "im_per_foreground")


def disagreement_scores(probs: torch.Tensor, mode: str, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-image disagreement of an ensemble of teachers.

    - ``im_fraction``: the fraction of pixels inside the Inconsistency Mask
      (:func:`monai_im.transforms.functional.inconsistency_mask`, the project's rule).
    - ``pairwise_disagreement``: over all pairs of teachers, the mean fraction of elements whose hard
      labels differ (binary / multilabel: every channel's ``p > threshold``, so the elements are
      channels x pixels; multiclass: the argmax class of every pixel). 0 with one teacher.
    - ``entropy``: the mean entropy, in nats, of the ensemble-mean probability: binary entropy per
      channel and pixel (binary, multilabel; at most ln 2), categorical entropy over the classes per
      pixel (multiclass; at most ln C).
    - ``im_per_foreground``: IM pixels / (agreed foreground pixels + IM pixels), the IM relative to
      the size of the object (the agreed foreground as in
      :func:`monai_im.transforms.functional.accept_pseudo_labels`); 0 when both are empty.

    Args:
        probs: teacher probabilities of shape (E, B, C, *spatial), 2D or 3D spatial.
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        threshold: foreground threshold of the binary and multilabel modes, in (0, 1).

    Returns:
        ``{name: tensor of shape (B,)}`` in float32 on the device of ``probs``, the names of :data:`SCORES`.
    """
    check_mode(mode)
    threshold = check_threshold(threshold)
    pseudo_label, im = inconsistency_mask(probs, mode=mode, threshold=threshold)
    probs = convert_to_tensor(probs, track_meta=False).float()
    num_teachers, num_channels = probs.shape[0], probs.shape[2]
    pairs = num_teachers * (num_teachers - 1) / 2
    mean = probs.mean(dim=0)  # (B, C, *spatial)
    if mode == "multiclass":
        votes = torch.nn.functional.one_hot(probs.argmax(dim=2), num_channels).sum(dim=0)  # (B, *sp, C)
        agreeing_pairs = (votes * (votes - 1) / 2).sum(dim=-1)  # (B, *spatial)
        differing = pairs - agreeing_pairs
        entropy = -torch.xlogy(mean, mean).sum(dim=1)  # (B, *spatial)
        foreground = (pseudo_label > 0) & (im < 0.5)
    else:
        count = (probs > threshold).sum(dim=0)  # (B, C, *spatial): teachers voting foreground
        differing = count * (num_teachers - count)  # pairs with one vote each way
        entropy = -(torch.xlogy(mean, mean) + torch.xlogy(1 - mean, 1 - mean))
        foreground = (pseudo_label > 0).any(dim=1, keepdim=True)
    if pairs:
        pairwise = differing.flatten(1).float().mean(dim=1) / pairs
    else:  # one teacher: no pair to disagree
        pairwise = torch.zeros(mean.shape[0], device=mean.device)
    im_area = im.flatten(1).sum(dim=1).float()
    fg_area = foreground.flatten(1).sum(dim=1).float()
    per_foreground = torch.where(
        im_area + fg_area > 0, im_area / (im_area + fg_area).clamp_min(1), torch.zeros_like(im_area)
    )
    scores = {
        "im_fraction": im.flatten(1).float().mean(dim=1),
        "pairwise_disagreement": pairwise.reshape(-1),
        "entropy": entropy.flatten(1).mean(dim=1),
        "im_per_foreground": per_foreground,
    }
    return {k: v.float() for k, v in scores.items()}
