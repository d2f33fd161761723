"""The continuous semi-supervised training steps: FixMatch, Mean Teacher and Cross Pseudo Supervision.

Each overrides only the unsupervised term of :class:`monai_im.methods.ssl_steps.SemiSupervisedIteration`
(the weak view, the strong view and the loss of the unlabeled batch); the step skeleton, the labeled loss
and the bookkeeping are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from torch import Tensor

from monai_im.methods.blocks import predict_views
from monai_im.methods.ssl_steps import (
    SemiSupervisedIteration,
    UnsupervisedTerm,
    activate,
    confidence,
    ema_update,
    hard_labels,
    masked_mean,
    pseudo_label_loss,
)
from monai_im.methods.steps import photometric_views

__all__ = ["FixMatchIteration", "MeanTeacherIteration", "CrossPseudoSupervisionIteration"]


class FixMatchIteration(SemiSupervisedIteration):
    """FixMatch, with (``use_im``) or without Inconsistency Masks.

    The network predicts the unlabeled batch on ``num_views`` distinct random weak views (mapped back,
    no gradient); their mean probability gives the hard pseudo-label (:func:`hard_labels`) and its
    :func:`confidence`. The loss (:func:`pseudo_label_loss`) of the prediction on the strong view (the
    photometric view in the geometry of the first weak view, mapped back) is kept where the confidence
    is >= ``confidence_threshold`` and, with ``use_im``, outside the IM of the ``num_views`` predictions.

    Args:
        unlabeled_loader: see :class:`SemiSupervisedIteration`.
        confidence_threshold: the smallest confidence kept, in [0, 1].
        num_views: weak views (1 for FixMatch; the IM ensemble size for FixMatch + IM).
        strong_view: a photometric view function; None = :func:`photometric_views` on the generator.
        kwargs: ``mode``, ``threshold``, ``weight``, ``ramp_up_steps``, ``use_im``, ``image_key``, ``seed``.
    """

    def __init__(
        self,
        unlabeled_loader: Iterable,
        confidence_threshold: float = 0.95,
        num_views: int = 1,
        strong_view: Callable[[Tensor], Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(unlabeled_loader, **kwargs)
        if not 0.0 <= confidence_threshold <= 1.0 or int(num_views) < 1:
            raise ValueError(
                f"FixMatchIteration: need 0 <= confidence_threshold <= 1 and num_views >= 1, got "
                f"{confidence_threshold}, {num_views}."
            )
        self.confidence_threshold, self.num_views = float(confidence_threshold), int(num_views)
        self.strong_view = strong_view if strong_view is not None else photometric_views(self.generator)

    def unsupervised(self, engine: SupervisedTrainer, unlabeled: Tensor) -> UnsupervisedTerm:  # noqa: D102
        views = self.random_views(unlabeled, self.num_views)
        logits = predict_views(engine.network, unlabeled, views, engine.inferer)  # (V, B, C, *spatial)
        probs = activate(logits, self.mode, channel_dim=2)
        mean = probs.mean(dim=0)
        target = hard_labels(mean, self.mode, self.threshold)
        im = self.im_of(probs, unlabeled)
        keep = (confidence(mean, self.mode) >= self.confidence_threshold) & ~im
        first = views[0]
        logits = first.invert(engine.inferer(first.apply(self.strong_view(unlabeled)), engine.network))
        loss_map = pseudo_label_loss(logits, target, self.mode)
        keep = keep.expand_as(loss_map)
        return UnsupervisedTerm(masked_mean(loss_map, keep), keep.float().mean(), im.float().mean())


class MeanTeacherIteration(SemiSupervisedIteration):
    """Mean Teacher, with (``use_im``) or without Inconsistency Masks.

    The teacher is an exponential moving average of the student (``engine.network``): it starts as a
    copy of the student at the first step and after every optimizer step becomes
    ``decay * teacher + (1 - decay) * student`` (:func:`ema_update`). The loss is the squared difference
    of the student's probabilities on the strong view and the teacher's on the weak view (one random
    geometry, mapped back; multiclass: averaged over the classes per voxel), with ``use_im`` kept outside
    the IM of {teacher, student} predictions.

    Args:
        unlabeled_loader: see :class:`SemiSupervisedIteration`.
        teacher: a network of the student's architecture to hold the EMA weights; None = a deep copy.
        decay: the EMA decay, in [0, 1].
        strong_view: a photometric view function; None = :func:`photometric_views` on the generator.
        kwargs: ``mode``, ``threshold``, ``weight``, ``ramp_up_steps``, ``use_im``, ``image_key``, ``seed``.
    """

    def __init__(
        self,
        unlabeled_loader: Iterable,
        teacher: torch.nn.Module | None = None,
        decay: float = 0.99,
        strong_view: Callable[[Tensor], Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(unlabeled_loader, **kwargs)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"MeanTeacherIteration: decay must be in [0, 1], got {decay}.")
        self.teacher, self.decay = teacher, float(decay)
        self.strong_view = strong_view if strong_view is not None else photometric_views(self.generator)
        self._started = False
        self._restored: Mapping[str, Tensor] | None = None

    def setup(self, engine: SupervisedTrainer) -> None:  # noqa: D102
        if self._started:
            return
        if self.teacher is None:
            import copy

            self.teacher = copy.deepcopy(engine.network)
        else:
            self.teacher.load_state_dict(engine.network.state_dict())
        if self._restored is not None:  # resumed from an epoch checkpoint: the EMA weights so far
            self.teacher.load_state_dict(self._restored)
            self._restored = None
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._started = True

    def extra_state(self) -> dict[str, Any]:  # noqa: D102
        return {"teacher": self.teacher.state_dict()} if self._started else {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:  # noqa: D102
        self._restored = state.get("teacher")
        self._started = False

    def unsupervised(self, engine: SupervisedTrainer, unlabeled: Tensor) -> UnsupervisedTerm:  # noqa: D102
        view = self.random_views(unlabeled)[0]
        self.teacher.train()
        with torch.no_grad():
            teacher = activate(view.invert(engine.inferer(view.apply(unlabeled), self.teacher)), self.mode)
        strong = view.apply(self.strong_view(unlabeled))
        student = activate(view.invert(engine.inferer(strong, engine.network)), self.mode)
        loss_map = (student - teacher).square()
        if self.mode == "multiclass":
            loss_map = loss_map.mean(dim=1, keepdim=True)
        im = self.im_of([teacher, student.detach()], unlabeled)
        keep = (~im).expand_as(loss_map)
        return UnsupervisedTerm(masked_mean(loss_map, keep), keep.float().mean(), im.float().mean())

    def after_step(self, engine: SupervisedTrainer) -> None:  # noqa: D102
        ema_update(self.teacher, engine.network, self.decay)


class CrossPseudoSupervisionIteration(SemiSupervisedIteration):
    """Cross Pseudo Supervision, with (``use_im``) or without Inconsistency Masks.

    Two networks, ``engine.network`` (A, the one the trainer checkpoints) and ``second`` (B, with its
    own optimizer), both see the labeled batch (supervised loss = loss(A) + loss(B)) and the same
    unlabeled batch; each is taught by the other's hard labels (:func:`hard_labels`, no gradient):
    unsupervised loss = :func:`pseudo_label_loss` (A, labels of B) + (B, labels of A), each with
    ``use_im`` kept outside the IM of the two predictions.

    Args:
        unlabeled_loader: see :class:`SemiSupervisedIteration`.
        second: network B (initialised differently from A).
        second_optimizer: B's optimizer; None = ``AdamW`` with the lr and weight decay of the first
            parameter group of ``engine.optimizer`` (made at the first step).
        kwargs: ``mode``, ``threshold``, ``weight``, ``ramp_up_steps``, ``use_im``, ``image_key``, ``seed``.
    """

    def __init__(
        self,
        unlabeled_loader: Iterable,
        second: torch.nn.Module,
        second_optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(unlabeled_loader, **kwargs)
        self.second, self.second_optimizer = second, second_optimizer
        self._restored_optimizer: Mapping[str, Any] | None = None

    def setup(self, engine: SupervisedTrainer) -> None:  # noqa: D102
        if self.second_optimizer is None:
            group = engine.optimizer.param_groups[0]
            self.second_optimizer = torch.optim.AdamW(
                self.second.parameters(), lr=group["lr"], weight_decay=group.get("weight_decay", 0.01)
            )
        if self._restored_optimizer is not None:  # resumed from an epoch checkpoint
            self.second_optimizer.load_state_dict(self._restored_optimizer)
            self._restored_optimizer = None

    def extra_state(self) -> dict[str, Any]:  # noqa: D102
        state: dict[str, Any] = {"second": self.second.state_dict()}
        if self.second_optimizer is not None:
            state["second_optimizer"] = self.second_optimizer.state_dict()
        return state

    def load_extra_state(self, state: Mapping[str, Any]) -> None:  # noqa: D102
        if "second" in state:
            self.second.load_state_dict(state["second"])
        self._restored_optimizer = state.get("second_optimizer")

    def networks(self, engine: SupervisedTrainer) -> list[torch.nn.Module]:  # noqa: D102
        return [engine.network, self.second]

    def optimizers(self, engine: SupervisedTrainer) -> list[torch.optim.Optimizer]:  # noqa: D102
        return [engine.optimizer, self.second_optimizer]

    def supervised(self, engine: SupervisedTrainer, pred: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        other = engine.inferer(inputs, self.second)
        return engine.loss_function(pred, targets).mean() + engine.loss_function(other, targets).mean()

    def unsupervised(self, engine: SupervisedTrainer, unlabeled: Tensor) -> UnsupervisedTerm:  # noqa: D102
        logits_a = engine.inferer(unlabeled, engine.network)
        logits_b = engine.inferer(unlabeled, self.second)
        probs_a, probs_b = activate(logits_a, self.mode).detach(), activate(logits_b, self.mode).detach()
        im = self.im_of([probs_a, probs_b], unlabeled)
        map_a = pseudo_label_loss(logits_a, hard_labels(probs_b, self.mode, self.threshold), self.mode)
        map_b = pseudo_label_loss(logits_b, hard_labels(probs_a, self.mode, self.threshold), self.mode)
        keep = (~im).expand_as(map_a)
        loss = masked_mean(map_a, keep) + masked_mean(map_b, keep)
        return UnsupervisedTerm(loss, keep.float().mean(), im.float().mean())
