"""Methods with a learned quality estimate of each pseudo-label (the paper's EvalNet).

- ``evalnet``: the teachers' consensus, kept only where the estimated IoU reaches ``evalnet_min_score``.
- ``im_plus_plus`` / ``aim_plus_plus``: IM+ / AIM+ with an EvalNet trained on IM-processed data that
  weights each pseudo-label by replication (1..5 copies by estimated IoU) instead of discarding it.

The estimator (:class:`monai_im.methods.quality.QualityEstimator`) is trained in
:meth:`~monai_im.methods.base.Method.prepare_generation` of every generation, as the paper
trains it: the teachers' predictions of the labeled images paired with their true IoU, and the
ground-truth masks paired with 1.0. The same is done on the validation images, and the correlation
of estimated and true IoU there is logged (``evalnet_pearson``, ``evalnet_spearman``, ``evalnet_mae``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from monai_im.methods.base import GenerationContext, PseudoLabels
from monai_im.methods.noisy import AIMPlus, IMPlus
from monai_im.methods.pseudo import ModelEnsemble, consensus
from monai_im.transforms import mask_image

__all__ = ["QualityScored", "EvalNetFilter", "IMPlusPlus", "AIMPlusPlus", "as_masks"]


def as_masks(label: torch.Tensor, mode: str, num_channels: int) -> torch.Tensor:
    """Binary masks (B, C, *spatial) of a label: itself (binary, multilabel), one-hot (multiclass)."""
    if mode == "multiclass":
        onehot = torch.nn.functional.one_hot(label[:, 0].long().clamp_min(0), num_channels)
        return onehot.movedim(-1, 1).float()
    return (label > 0).float()


class QualityScored:
    """Mixin: trains a quality estimator per generation and scores pseudo-labels with it.

    Args:
        evalnet_alpha: width factor of the EvalNet (the paper: 1 for ISIC, 2 otherwise).
        evalnet_epochs: training epochs of the estimator per generation.
        evalnet_batch_size: batch size of the estimator's training.
        evalnet_learning_rate: AdamW learning rate of the estimator's training.
    """

    #: train the estimator on IM-processed pairs (image cut by the IM, IM pseudo-label, IoU outside the IM)
    im_pairs: bool = False

    def _init_quality(self, alpha: float, epochs: int, batch_size: int, learning_rate: float) -> None:
        if int(epochs) < 1 or int(batch_size) < 1 or float(learning_rate) <= 0:
            raise ValueError(
                "evalnet_epochs and evalnet_batch_size must be >= 1 and evalnet_learning_rate > 0"
            )
        self.evalnet_alpha = float(alpha)
        self.evalnet_epochs = int(epochs)
        self.evalnet_batch_size = int(batch_size)
        self.evalnet_learning_rate = float(learning_rate)
        self.estimator: Any = None

    def _pairs(self, context: GenerationContext, split: str) -> tuple[torch.Tensor, ...] | None:
        """(images, candidate masks, true IoU) of the ``split`` images: the teachers' candidates and the truth."""
        from monai.utils import convert_to_tensor

        from monai_im.methods.quality import mask_iou

        images, masks, targets = [], [], []
        for batch in context.labeled_batches(split):
            x = convert_to_tensor(batch["image"], track_meta=False).to(context.device).float()
            y = convert_to_tensor(batch["label"], track_meta=False).to(context.device)
            probs = self.activation(self.predict(context.teachers, x, context.inferer), channel_dim=2)
            channels = probs.shape[2]
            truth = as_masks(y, self.mode, channels)
            if self.im_pairs:
                result = self._rule(probs, x)  # type: ignore[attr-defined]
                valid = (result.im < 0.5).float() if result.im is not None else None
                cand = [(mask_image(x, result.im, 0.0) if result.im is not None else x, result.label, valid)]
            else:
                labels = (
                    probs.argmax(2, keepdim=True).float()
                    if self.mode == "multiclass"
                    else (probs > self.threshold).float()
                )
                cand = [(x, labels[e], None) for e in range(labels.shape[0])]
            for image, label, valid in cand:
                m = as_masks(label, self.mode, channels)
                images.append(image)
                masks.append(m)
                targets.append(mask_iou(m > 0.5, truth > 0.5, None if valid is None else valid > 0.5))
            images.append(x)
            masks.append(truth)
            targets.append(torch.ones(x.shape[0], device=x.device))
        if not images:
            return None
        return torch.cat(images), torch.cat(masks), torch.cat(targets).float()

    def prepare_generation(self, context: GenerationContext) -> dict[str, float]:
        """Train the estimator with this generation's teachers (after the preparation of the method it is
        mixed into, e.g. IM's class gate); returns its validation correlation."""
        from monai_im.methods.quality import QualityEstimator

        stats = dict(super().prepare_generation(context))  # type: ignore[misc]
        self.estimator = None
        train = self._pairs(context, "labeled")
        if train is None:
            raise ValueError("EvalNet needs labeled images to learn from")
        val = self._pairs(context, "validation")
        estimator = QualityEstimator(
            image_channels=train[0].shape[1],
            mask_channels=train[1].shape[1],
            alpha=self.evalnet_alpha,
            epochs=self.evalnet_epochs,
            batch_size=self.evalnet_batch_size,
            learning_rate=self.evalnet_learning_rate,
            device=context.device,
            seed=context.seed,
            progress=context.progress,
        )
        report = estimator.fit(*train, val=val)
        self.estimator = estimator
        report_stats = {
            f"evalnet_{k}": float(v) for k, v in report.to_dict().items() if isinstance(v, (int, float))
        }
        return {**stats, **report_stats}

    def _score(self, images: torch.Tensor, label: torch.Tensor, channels: int) -> torch.Tensor:
        if self.estimator is None:
            raise RuntimeError(f"{self.name}: the quality estimator is trained in prepare_generation first")
        return self.estimator.score(images, as_masks(label, self.mode, channels)).to(label.device)

    def describe_quality(self) -> dict[str, Any]:
        return {
            "evalnet_alpha": self.evalnet_alpha,
            "evalnet_epochs": self.evalnet_epochs,
            "evalnet_batch_size": self.evalnet_batch_size,
            "evalnet_learning_rate": self.evalnet_learning_rate,
        }


class EvalNetFilter(QualityScored, ModelEnsemble):
    """EvalNet: the teachers' consensus pseudo-labels, kept where the estimated IoU >= ``evalnet_min_score``.

    Args:
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold (binary, multilabel).
        evalnet_min_score: the estimated IoU a pseudo-label needs to be kept (the paper: 0.75 for ISIC).
        evalnet_alpha, evalnet_epochs, evalnet_batch_size, evalnet_learning_rate: see :class:`QualityScored`.
    """

    name = "evalnet"

    def __init__(
        self,
        mode: str = "binary",
        threshold: float = 0.5,
        evalnet_min_score: float = 0.75,
        evalnet_alpha: float = 1.0,
        evalnet_epochs: int = 30,
        evalnet_batch_size: int = 16,
        evalnet_learning_rate: float = 1e-3,
    ) -> None:
        ModelEnsemble.__init__(self, mode=mode, threshold=threshold)
        if not 0.0 <= float(evalnet_min_score) <= 1.0:
            raise ValueError(f"evalnet_min_score must be in [0, 1], got {evalnet_min_score}")
        self.min_score = float(evalnet_min_score)
        self._init_quality(evalnet_alpha, evalnet_epochs, evalnet_batch_size, evalnet_learning_rate)

    def __call__(self, probs: torch.Tensor, images: torch.Tensor | None = None) -> PseudoLabels:
        label = consensus(probs, self.mode, self.threshold)
        nonempty = label.flatten(1).gt(0).any(dim=1)
        if images is None:
            raise ValueError("evalnet scores pseudo-labels on their images: pass images")
        score = self._score(images, label, probs.shape[2])
        return PseudoLabels(label=label, im=None, accepted=nonempty & (score >= self.min_score), score=score)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**ModelEnsemble.describe(self), "min_score": self.min_score, **self.describe_quality()}


class _Replicated(QualityScored):
    """IM++ mixin: IM pseudo-labels scored by the estimator and replicated 1..(bins + 1) times.

    Args:
        replication_bins: increasing estimated-IoU bounds; a pseudo-label gets 1 + the number of bounds
            below its score (default (0.6, 0.7, 0.8, 0.9): 1..5 copies).
        evalnet_alpha, evalnet_epochs, evalnet_batch_size, evalnet_learning_rate: see :class:`QualityScored`.
        kwargs: the options of the IM+ / AIM+ method this is mixed into.
    """

    im_pairs = True

    def __init__(
        self,
        replication_bins: Sequence[float] = (0.6, 0.7, 0.8, 0.9),
        evalnet_alpha: float = 1.0,
        evalnet_epochs: int = 30,
        evalnet_batch_size: int = 16,
        evalnet_learning_rate: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # the IM+ / AIM+ method this is mixed into
        self._init_quality(evalnet_alpha, evalnet_epochs, evalnet_batch_size, evalnet_learning_rate)
        bins = [float(b) for b in replication_bins]
        if any(b2 <= b1 for b1, b2 in zip(bins, bins[1:])):
            raise ValueError(f"replication_bins must increase, got {bins}")
        self.replication_bins = bins

    def _rule(self, probs: torch.Tensor, images: torch.Tensor | None) -> PseudoLabels:
        return super().__call__(probs, images)  # type: ignore[misc]

    def __call__(self, probs: torch.Tensor, images: torch.Tensor | None = None) -> PseudoLabels:
        result = self._rule(probs, images)
        if self.estimator is None:  # while the estimator's own training pairs are made
            return result
        if images is None:
            raise ValueError(f"{self.name} scores pseudo-labels on their images: pass images")
        masked = mask_image(images, result.im, 0.0) if result.im is not None else images
        result.score = self._score(masked, result.label, probs.shape[2])
        return result

    def replication(self, scores: torch.Tensor) -> torch.Tensor:
        """Copies per pseudo-label: 1 + the number of ``replication_bins`` below its score."""
        from monai_im.methods.blocks import replication_counts

        return replication_counts(scores, self.replication_bins, max_copies=len(self.replication_bins) + 1)

    def training_items(self, datalist, pseudo_items, generation=0):  # noqa: D102
        base = super().training_items(datalist, [], generation)  # type: ignore[misc]
        if not pseudo_items:
            return base
        scores = torch.tensor([float(it.get("score", float("nan"))) for it in pseudo_items])
        counts = self.replication(scores).tolist()
        pseudo = [{k: v for k, v in it.items() if k != "score"} for it in pseudo_items]
        return base + [dict(it) for it, n in zip(pseudo, counts) for _ in range(int(n))]

    def describe(self) -> dict[str, Any]:  # noqa: D102
        replication = {**self.describe_quality(), "replication_bins": list(self.replication_bins)}
        return {**super().describe(), **replication}  # type: ignore[misc]


class IMPlusPlus(_Replicated, IMPlus):
    """IM++: IM+ whose pseudo-labels are replicated 1..5 times by an EvalNet's estimated IoU.

    Args:
        replication_bins, evalnet_alpha, evalnet_epochs, evalnet_batch_size, evalnet_learning_rate: see
            :class:`_Replicated`.
        kwargs: the options of :class:`~monai_im.methods.noisy.IMPlus`.
    """

    name = "im_plus_plus"


class AIMPlusPlus(_Replicated, AIMPlus):
    """AIM++: AIM+ whose pseudo-labels are replicated 1..5 times by an EvalNet's estimated IoU.

    Args:
        replication_bins, evalnet_alpha, evalnet_epochs, evalnet_batch_size, evalnet_learning_rate: see
            :class:`_Replicated`.
        kwargs: the options of :class:`~monai_im.methods.noisy.AIMPlus`.
    """

    name = "aim_plus_plus"
