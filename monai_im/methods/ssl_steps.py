"""Training steps of the continuous semi-supervised methods, for ``SupervisedTrainer(iteration_update=...)``.

Every step takes a labeled batch (the trainer's ``loss_function``, the supervised loss) and the next batch
of an endlessly cycled unlabeled loader (the unsupervised loss), and optimises
``loss = supervised_loss + w(t) * unsupervised_loss``:

- :class:`FixMatchIteration`: hard pseudo-labels from the network's own prediction on weak views,
  kept where confident, taught on a strong view (FixMatch).
- :class:`MeanTeacherIteration`: MSE between the student's probabilities on a strong view and those
  of an exponential-moving-average teacher on the weak view (Mean Teacher).
- :class:`CrossPseudoSupervisionIteration`: two networks, each taught by the other's hard labels
  (Cross Pseudo Supervision).

Each has an Inconsistency-Mask variant (``use_im=True``): the unlabeled elements where an ensemble of
predictions disagrees (:func:`monai_im.transforms.functional.inconsistency_mask`: binary and multilabel
at ``threshold``, multiclass by argmax) are left out of the unsupervised loss and get exactly zero gradient.

Common definitions:

- unsupervised loss = the sum of the per-element loss over the kept elements divided by the number of
  all unlabeled elements (FixMatch's normalisation: fewer kept elements give a smaller loss). Elements are
  (image, channel, voxel) for binary and multilabel and (image, voxel) for multiclass.
- pseudo-label losses: binary cross-entropy with logits against 0/1 labels (binary, multilabel),
  cross-entropy against class indices (multiclass).
- ``used_fraction``: the kept fraction of the unlabeled elements; ``im_fraction``: the fraction of
  unlabeled voxels in the IM (0 without IM).
- random geometry: one :class:`monai_im.methods.blocks.View` (flips, quarter turns when the first two
  spatial dims are equal) per batch, drawn from a seeded ``torch.Generator``; predictions are mapped back
  to the original orientation. The strong view is :func:`monai_im.methods.steps.photometric_views`
  of the image in the same geometry as the (first) weak view.
- predictions on weak views and of the teacher run in training mode (batch statistics) under no_grad.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.utils import convert_to_tensor
from torch import Tensor

from monai_im.constants import IM_MODES
from monai_im.methods.blocks import View, input_views
from monai_im.methods.steps import TrainingStep, UnlabeledBatches
from monai_im.transforms.functional import inconsistency_mask

__all__ = [
    "UnsupervisedTerm",
    "SemiSupervisedIteration",
    "activate",
    "confidence",
    "hard_labels",
    "pseudo_label_loss",
    "masked_mean",
    "ensemble_im",
    "sigmoid_ramp_up",
    "ema_update",
    "LOGGED_KEYS",
]

#: The per-step values of ``engine.state.output`` (and per-epoch means in ``engine.state.metrics``).
LOGGED_KEYS = ("supervised_loss", "unsupervised_loss", "used_fraction", "im_fraction")
#: How many distinct views :func:`input_views` has, by (spatial dims, square first two dims).
_VIEW_COUNTS = {(2, True): 8, (2, False): 4, (3, True): 16, (3, False): 8}


# ---------------------------------------------------------------------------------------- functions
def activate(logits: Tensor, mode: str, channel_dim: int = 1) -> Tensor:
    """float32 probabilities of logits (B, C, *spatial): softmax over the channels ``channel_dim``
    (multiclass; 2 for stacked (V, B, C, *spatial) logits) or sigmoid."""
    logits = convert_to_tensor(logits, track_meta=False).float()
    return torch.softmax(logits, dim=channel_dim) if mode == "multiclass" else torch.sigmoid(logits)


def confidence(probs: Tensor, mode: str) -> Tensor:
    """The confidence of probabilities (B, C, *spatial): ``max(p, 1 - p)`` per element (binary,
    multilabel; shape kept) or the largest class probability per voxel (multiclass; (B, 1, *spatial))."""
    if mode == "multiclass":
        return probs.amax(dim=1, keepdim=True)
    return torch.maximum(probs, 1 - probs)


def hard_labels(probs: Tensor, mode: str, threshold: float = 0.5) -> Tensor:
    """Hard labels: ``probs > threshold`` as 0/1 floats (binary, multilabel; shape kept) or the argmax
    class index (multiclass; int64 (B, 1, *spatial))."""
    if mode == "multiclass":
        return probs.argmax(dim=1, keepdim=True)
    return (probs > threshold).to(probs.dtype)


def pseudo_label_loss(logits: Tensor, target: Tensor, mode: str) -> Tensor:
    """The per-element loss of logits (B, C, *spatial) against hard labels of :func:`hard_labels`:
    binary cross-entropy with logits (binary, multilabel; (B, C, *spatial)) or cross-entropy
    (multiclass; (B, 1, *spatial))."""
    logits = convert_to_tensor(logits, track_meta=False).float()
    if mode == "multiclass":
        return F.cross_entropy(logits, target[:, 0].long(), reduction="none").unsqueeze(1)
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")


def masked_mean(loss_map: Tensor, keep: Tensor) -> Tensor:
    """``sum(loss_map[keep]) / loss_map.numel()``; elements not kept get exactly zero gradient (for the
    finite losses here). ``keep`` (bool) broadcasts onto ``loss_map``."""
    kept = torch.where(keep, loss_map, torch.zeros((), dtype=loss_map.dtype, device=loss_map.device))
    return kept.sum() / max(loss_map.numel(), 1)


def ensemble_im(probs: Sequence[Tensor] | Tensor, mode: str, threshold: float = 0.5) -> Tensor:
    """The Inconsistency Mask (bool, (B, 1, *spatial)) of an ensemble of probabilities, each
    (B, C, *spatial) (or stacked (E, B, C, *spatial)): where thresholded (binary, multilabel: union over
    channels) or argmax (multiclass) predictions of any two members differ."""
    stacked = probs if isinstance(probs, Tensor) else torch.stack(list(probs))
    return inconsistency_mask(stacked.detach().float(), mode=mode, threshold=threshold)[1] > 0


def sigmoid_ramp_up(step: int, ramp_up_steps: int) -> float:
    """The usual sigmoid ramp-up ``exp(-5 (1 - t / T)^2)`` for step ``t < T``, 1 from ``T`` on (and for
    ``T <= 0``)."""
    if ramp_up_steps <= 0 or step >= ramp_up_steps:
        return 1.0
    phase = 1.0 - max(step, 0) / ramp_up_steps
    return float(math.exp(-5.0 * phase * phase))


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` for every parameter; buffers (batch-norm
    statistics) are copied from the student."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


@dataclass
class UnsupervisedTerm:
    """The unsupervised part of one step: the loss (with gradient), and detached statistics."""

    loss: Tensor
    used_fraction: Tensor
    im_fraction: Tensor


# ---------------------------------------------------------------------------------------- iterations
class SemiSupervisedIteration(TrainingStep):
    """The shared step: supervised loss on the labeled batch + ``w(t)`` times :meth:`unsupervised`.

    A :class:`monai_im.methods.steps.TrainingStep` (MONAI's supervised step and events) whose :meth:`loss`
    adds the unsupervised term; the methods fill in :meth:`unsupervised` and, as needed, :meth:`setup`,
    :meth:`networks`, :meth:`optimizers`, :meth:`supervised` and :meth:`after_step`.
    ``w(t) = weight * sigmoid_ramp_up(t, ramp_up_steps)`` with ``t`` the trainer's iteration (from 0).
    ``engine.state.output`` holds image, label, pred (labeled batch), ``loss`` and the detached
    :data:`LOGGED_KEYS` (``unsupervised_loss`` unweighted); ``engine.state.metrics`` holds their means
    over the epoch so far.

    Args:
        unlabeled_loader: batches of unlabeled images (dicts with ``image_key``, tensors or sequences).
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold of hard labels and of the IM (binary, multilabel).
        weight: the unsupervised weight (>= 0).
        ramp_up_steps: steps of the sigmoid ramp-up of the weight (0 = none).
        use_im: leave the Inconsistency Mask out of the unsupervised loss.
        image_key: the image key of dict batches.
        seed: seeds the random views.
    """

    def __init__(
        self,
        unlabeled_loader: Iterable,
        mode: str = "binary",
        threshold: float = 0.5,
        weight: float = 1.0,
        ramp_up_steps: int = 0,
        use_im: bool = False,
        image_key: str = "image",
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        if mode not in IM_MODES:
            raise ValueError(f"{name}: mode must be one of {IM_MODES}, got {mode!r}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"{name}: threshold must be in (0, 1), got {threshold}.")
        if not weight >= 0 or int(ramp_up_steps) < 0:
            raise ValueError(
                f"{name}: need weight >= 0 and ramp_up_steps >= 0, got {weight}, {ramp_up_steps}."
            )
        self._source = UnlabeledBatches(unlabeled_loader, image_key, owner=name)
        self._batch: Tensor | None = None  # the unlabeled batch of the current step
        self.mode, self.threshold, self.weight = mode, float(threshold), float(weight)
        self.ramp_up_steps, self.use_im = int(ramp_up_steps), bool(use_im)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._epoch: int | None = None
        self._sums: Tensor | None = None
        self._count = 0

    # ------------------------------------------------------------------ hooks of the methods
    def setup(self, engine: SupervisedTrainer) -> None:
        """Called before every step, after the unlabeled batch is fetched (lazy construction of extra
        networks)."""

    def supervised(self, engine: SupervisedTrainer, pred: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        """The supervised loss, given the prediction ``pred`` of ``engine.network`` on ``inputs``."""
        return engine.loss_function(pred, targets).mean()

    def unsupervised(self, engine: SupervisedTrainer, unlabeled: Tensor) -> UnsupervisedTerm:
        """The unsupervised loss of an unlabeled batch (B, C, *spatial)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ epoch checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The step's state for an epoch checkpoint: the position in the unlabeled data, the random
        generators (views and strong view) and :meth:`extra_state` (the method's own networks)."""
        strong = getattr(getattr(self, "strong_view", None), "generator", None)
        return {
            "source": self._source.state_dict(),
            "generator": self.generator.get_state(),
            "strong": strong.get_state() if isinstance(strong, torch.Generator) else None,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self._source.load_state_dict(state["source"])
        self.generator.set_state(state["generator"])
        strong = getattr(getattr(self, "strong_view", None), "generator", None)
        if state.get("strong") is not None and isinstance(strong, torch.Generator):
            strong.set_state(state["strong"])
        self.load_extra_state(state.get("extra") or {})

    def extra_state(self) -> dict[str, Any]:
        """A method's own state (e.g. an EMA teacher); tensors and containers only."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_state` (it may be applied lazily, at the next :meth:`setup`)."""

    # ------------------------------------------------------------------ helpers
    def random_views(self, images: Tensor, n: int = 1) -> list[View]:
        """``n`` distinct random geometric views of the batch ``images`` (one draw of the generator)."""
        spatial = images.ndim - 2
        square = spatial >= 2 and images.shape[2] == images.shape[3]
        pool = input_views(_VIEW_COUNTS.get((spatial, square), 1), spatial_dims=spatial, square=square)
        if not 1 <= n <= len(pool):
            raise ValueError(f"{type(self).__name__}: {n} views asked, these images have {len(pool)}.")
        return [pool[i] for i in torch.randperm(len(pool), generator=self.generator)[:n].tolist()]

    def im_of(self, probs: Sequence[Tensor] | Tensor, like: Tensor) -> Tensor:
        """The IM of an ensemble when ``use_im``, else an empty mask, (B, 1, *spatial) bool."""
        if self.use_im:
            return ensemble_im(probs, self.mode, self.threshold)
        return torch.zeros((like.shape[0], 1, *like.shape[2:]), dtype=torch.bool, device=like.device)

    def _log(self, engine: SupervisedTrainer, values: Tensor) -> None:
        """Means of :data:`LOGGED_KEYS` over the current epoch into ``engine.state.metrics``."""
        if self._epoch != engine.state.epoch or self._sums is None:
            self._epoch, self._sums, self._count = engine.state.epoch, torch.zeros_like(values), 0
        self._sums, self._count = self._sums + values, self._count + 1
        means = (self._sums / self._count).tolist()
        engine.state.metrics.update(dict(zip(LOGGED_KEYS, means)))

    # ------------------------------------------------------------------ the step
    def prepare(self, engine: SupervisedTrainer) -> None:
        """Fetch the next unlabeled batch, then :meth:`setup`."""
        self._batch = self._source.next().to(engine.state.device, non_blocking=engine.non_blocking)
        self.setup(engine)

    def loss(
        self, engine: SupervisedTrainer, pred: Tensor, inputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``supervised + w(t) * unsupervised``, with the detached :data:`LOGGED_KEYS` (also logged as epoch
        means into ``engine.state.metrics``)."""
        weight = self.weight * sigmoid_ramp_up(engine.state.iteration - 1, self.ramp_up_steps)
        supervised = self.supervised(engine, pred, inputs, targets)
        term = self.unsupervised(engine, self._batch)
        loss = supervised + weight * term.loss
        logged = torch.stack(
            [
                t.detach().float().reshape(())
                for t in (supervised, term.loss, term.used_fraction, term.im_fraction)
            ]
        )
        self._log(engine, logged)
        return loss, dict(zip(LOGGED_KEYS, logged.unbind()))
