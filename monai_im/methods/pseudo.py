"""Methods that pseudo-label with teacher agreement: Model Ensemble, Input Ensemble, IM and AIM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from monai_im.methods.base import GenerationContext, Method, PseudoLabels
from monai_im.methods.labeled import AugmentedLabeled, augmented_copies
from monai_im.methods.pl_rules import (
    PseudoLabelRules,
    gate_classes,
    gated_classes,
    teacher_certainty,
    vote_count,
    vote_mask,
)
from monai_im.transforms import accept_pseudo_labels, inconsistency_mask

__all__ = ["ModelEnsemble", "InputEnsemble", "InconsistencyMask", "AugmentedInconsistencyMask", "consensus"]


def consensus(probs: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """The Model Ensemble label of stacked probabilities (E, B, C, *spatial), nothing cut out.

    Binary: foreground where all members agree (IM_METHOD section 4); multiclass: argmax of the mean
    softmax (B, 1, *spatial); multilabel: mean probability above ``threshold``.
    """
    if mode == "binary":
        return (probs > threshold).all(dim=0).to(probs.dtype)
    if mode == "multiclass":
        return probs.mean(dim=0).argmax(dim=1, keepdim=True).to(probs.dtype)
    return (probs.mean(dim=0) > threshold).to(probs.dtype)


class ModelEnsemble(Method):
    """Model Ensemble: pseudo-labels from the teachers' consensus, nothing cut out.

    The consensus is :func:`consensus`'s; images with no foreground are dropped.
    """

    name = "model_ensemble"
    makes_pseudo_labels = True

    def __call__(self, probs: torch.Tensor, images: torch.Tensor | None = None) -> PseudoLabels:
        label = consensus(probs, self.mode, self.threshold)
        accepted = label.flatten(1).gt(0).any(dim=1)
        return PseudoLabels(label=label, im=None, accepted=accepted)


class InputEnsemble(ModelEnsemble):
    """Input Ensemble: ONE teacher (the best) on ``input_views`` flipped/rotated copies of each image, every
    prediction mapped back, pseudo-labels from their consensus (as Model Ensemble, nothing cut out).

    Args:
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold (binary, multilabel).
        input_views: how many views (the identity first, then flips and 90-degree rotations; see
            :func:`monai_im.methods.blocks.input_views`).
    """

    name = "input_ensemble"

    def __init__(self, mode: str = "binary", threshold: float = 0.5, input_views: int = 3) -> None:
        super().__init__(mode=mode, threshold=threshold)
        if int(input_views) < 2:
            raise ValueError(f"input_ensemble needs at least 2 views, got {input_views}")
        self.views = int(input_views)

    def teacher_count(self, num_teachers: int) -> int:  # noqa: D102
        return 1

    def predict(self, teachers, images, inferer=None):  # noqa: D102
        from monai_im.methods.blocks import input_views, predict_views

        spatial = tuple(images.shape[2:])
        views = input_views(self.views, spatial_dims=len(spatial), square=len(set(spatial[:2])) == 1)
        return predict_views(teachers[0], images, views, inferer)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "views": self.views}


class InconsistencyMask(Method):
    """IM: keep what all teachers agree on, cut the disagreement out of image and pseudo-label.

    The rules for weak teachers of multi-class volumes (``vote``, ``case_agreement``, ``class_gate``) are
    off by default; see :mod:`monai_im.methods.pl_rules`.

    Args:
        mode: "binary", "multiclass" or "multilabel" (IM_METHOD section 1).
        threshold: foreground threshold of each teacher (binary, multilabel).
        im_dilation: kernel size of an optional IM dilation (0 = none, as in the paper).
        min_foreground: an image is kept only with at least this many agreed foreground pixels.
        foreground_exceeds_im: the paper's rule: keep only if the agreed foreground is larger than the IM.
        max_im_fraction: also reject images whose IM covers more than this fraction.
        case_agreement: keep a whole image only if its teacher certainty reaches this value in [0, 1]
            (null = off): per teacher, the per-class agreement with the majority-vote label (background left
            out, a class empty in both counts 1.0) reduced over the classes; the minimum over the teachers.
        case_agreement_reduction: how the per-class agreements of one teacher are reduced: "mean" or "min"
            (every class must reach case_agreement).
        case_agreement_metric: the per-class agreement of case_agreement: "iou" or "dice".
        vote: null = the unanimity rule; an integer k or "majority" (ceil((n + 1) / 2) of n teachers): a
            class wins where at least k teachers vote for it, the IM is where none does.
        class_gate: null = off; else a class whose teachers score a Dice below this value on the validation
            images (each teacher's mean over the images, then the mean over the teachers) is left out of the
            pseudo-labels: every voxel a teacher gives it goes into the IM.
        finetune_epochs: 0 = off; else each student of a generation >= 1 trains this many more epochs on the
            labeled images only, from its best weights, and keeps the best checkpoint of both phases.
    """

    name = "im"
    makes_pseudo_labels = True
    min_teachers = 2

    def __init__(
        self,
        mode: str = "binary",
        threshold: float = 0.5,
        im_dilation: int = 0,
        min_foreground: int = 1,
        foreground_exceeds_im: bool = True,
        max_im_fraction: float | None = None,
        case_agreement: float | None = None,
        case_agreement_reduction: str = "mean",
        case_agreement_metric: str = "iou",
        vote: int | str | None = None,
        class_gate: float | None = None,
        finetune_epochs: int = 0,
    ) -> None:
        super().__init__(mode=mode, threshold=threshold)
        self.dilation = im_dilation
        self.min_foreground = min_foreground
        self.foreground_exceeds_im = foreground_exceeds_im
        self.max_im_fraction = max_im_fraction
        self.rules = PseudoLabelRules(
            case_agreement, case_agreement_reduction, case_agreement_metric, vote, class_gate
        )
        if (
            isinstance(finetune_epochs, bool)
            or int(finetune_epochs) != finetune_epochs
            or finetune_epochs < 0
        ):
            raise ValueError(f"finetune_epochs must be a non-negative integer, got {finetune_epochs!r}")
        self.finetune_epochs = int(finetune_epochs)
        #: the classes the class gate leaves out in this generation (see :meth:`prepare_generation`)
        self.gated_classes: tuple[int, ...] = ()

    def prepare_generation(self, context: GenerationContext) -> dict[str, float]:
        """With ``class_gate``: score the teachers per class on the validation images and gate the weak
        classes; the scores and the number of gated classes go into the pseudo-label statistics."""
        stats = super().prepare_generation(context)
        if self.rules.class_gate is None:
            return stats
        self.gated_classes, gate_stats = gated_classes(self, context, float(self.rules.class_gate))
        return {**stats, **gate_stats}

    def finetune_items(self, generation, datalist):  # noqa: D102
        if generation < 1 or self.finetune_epochs == 0:
            return None
        return [dict(it) for it in datalist["labeled"]]

    def _mask(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pseudo-label and IM of the teachers' vote (unanimity unless ``vote`` is set)."""
        k = vote_count(self.rules.vote, probs.shape[0])
        if k is None:
            return inconsistency_mask(probs, mode=self.mode, threshold=self.threshold, dilation=self.dilation)
        return vote_mask(probs, self.mode, self.threshold, k, dilation=self.dilation)

    def __call__(self, probs: torch.Tensor, images: torch.Tensor | None = None) -> PseudoLabels:
        label, im = self._mask(probs)
        if self.gated_classes:
            label, im = gate_classes(probs, label, im, self.mode, self.threshold, self.gated_classes)
        accepted = accept_pseudo_labels(
            label,
            im,
            mode=self.mode,
            min_foreground=self.min_foreground,
            foreground_exceeds_im=self.foreground_exceeds_im,
            max_im_fraction=self.max_im_fraction,
        )
        certainty = None
        if self.rules.case_agreement is not None:
            certainty = teacher_certainty(
                probs,
                self.mode,
                self.threshold,
                metric=self.rules.case_agreement_metric,
                reduction=self.rules.case_agreement_reduction,
                skip_classes=self.gated_classes,
            )
            accepted = accepted & (certainty >= float(self.rules.case_agreement))
        return PseudoLabels(label=label, im=im, accepted=accepted, certainty=certainty)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().describe(),
            "im_dilation": self.dilation,
            "min_foreground": self.min_foreground,
            "foreground_exceeds_im": self.foreground_exceeds_im,
            "max_im_fraction": self.max_im_fraction,
            **self.rules.describe(),
            **({"finetune_epochs": self.finetune_epochs} if self.finetune_epochs else {}),
        }


class AugmentedInconsistencyMask(InconsistencyMask):
    """AIM: Inconsistency Masks on augmented training pairs, starting from ALDT teachers.

    Generation 0 is ALDT (each labeled image plus ``augmented_copies`` augmented views); every later
    generation trains on the labeled images (once each, or with their copies when ``augment_labeled``) and the
    IM pseudo-labeled pairs, every item through ``augmentation`` (fresh random views each epoch; an IM
    pair is flipped and rotated together with its pseudo-label). A generation whose teachers have no
    accepted pseudo-label falls back to the generation-0 set.

    Args:
        augmented_copies: augmented views per labeled image besides the image itself (the paper: 9).
        augmentation: random dictionary transforms for ``image``, ``label`` (and ``im``) (default
            :func:`monai_im.transforms.paper_augmentation`).
        augment_labeled: keep the labeled images' augmented copies in later generations too (None: the
            method's own choice, False for AIM, True for AIM+).
        kwargs: the options of :class:`InconsistencyMask`.
    """

    name = "aim"
    augment_labeled: bool = False

    def __init__(
        self,
        mode: str = "binary",
        augmented_copies: int = 9,
        augmentation: Callable | None = None,
        augment_labeled: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mode=mode, **kwargs)
        aldt = AugmentedLabeled(mode=mode, augmented_copies=augmented_copies, augmentation=augmentation)
        self.copies = aldt.copies
        self.default_augmentation = aldt.default_augmentation
        if augment_labeled is not None:
            self.augment_labeled = bool(augment_labeled)

    def training_items(self, datalist, pseudo_items, generation=0):  # noqa: D102
        labeled = augmented_copies(datalist["labeled"], self.copies)
        if not pseudo_items:
            return labeled
        if not self.augment_labeled:
            labeled = [dict(it) for it in datalist["labeled"]]
        return labeled + [dict(it) for it in pseudo_items]

    def describe(self) -> dict[str, Any]:  # noqa: D102
        desc = {**super().describe(), "augmented_copies": self.copies}
        return {**desc, "augment_labeled": True} if self.augment_labeled else desc
