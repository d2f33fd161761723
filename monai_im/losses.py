"""Losses that skip Inconsistency-Mask pixels.

The Inconsistency Mask (IM) marks the pixels of a pseudo-label where the teachers disagree. Under the
``"ignore"`` label policy (see :data:`monai_im.constants.LABEL_POLICIES`) those pixels carry
:data:`monai_im.constants.IGNORE_INDEX` in the target, and the losses here give them no weight and no
gradient.

- :class:`MaskedDiceCELoss`: Dice + cross-entropy, this package's default.
- :class:`MaskedMSELoss`: the mean squared error between the activated output and the target, the loss
  of the paper's published binary (ISIC 2018) and multi-label (HeLa) runs.

For the Dice + CE loss: MONAI's :class:`monai.losses.DiceCELoss` has no ignore index, and
:class:`monai.losses.MaskedDiceLoss` takes one spatial mask for all channels, so the composition is
done here: the activated prediction and the target are zeroed where the target is ignored, then fed to a
plain :class:`monai.losses.DiceLoss`; the cross-entropy is averaged over the kept elements only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.utils import one_hot
from monai.utils import LossReduction, look_up_option
from torch.nn.modules.loss import _Loss

from monai_im.constants import IGNORE_INDEX, IM_MODES

__all__ = ["MaskedDiceCELoss", "MaskedMSELoss", "LOSSES", "build_loss"]


def _check_dims(input: torch.Tensor, target: torch.Tensor) -> None:
    if input.dim() != target.dim() or input.dim() < 3:
        raise ValueError(
            "input and target should both be (B, C, *spatial) tensors, "
            f"got shapes {tuple(input.shape)} and {tuple(target.shape)}."
        )


def _valid_elements(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Boolean map of the target elements that are not ``ignore_index``."""
    if ignore_index is None:
        return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def _multiclass_labels(
    input: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a class-index target ``(B, 1, *spatial)``; return its labels (0 at ignored pixels) and the
    kept-pixel map, both ``(B, 1, *spatial)``."""
    n_classes = input.shape[1]
    if n_classes < 2:
        raise ValueError(
            f"multiclass mode needs at least 2 input channels, got input shape {tuple(input.shape)}."
        )
    if target.shape[1] != 1 or target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
        raise ValueError(
            "multiclass mode expects a class-index target of shape (B, 1, *spatial) matching the input, "
            f"got input {tuple(input.shape)} and target {tuple(target.shape)}."
        )
    valid = _valid_elements(target, ignore_index)
    labels = torch.where(valid, target, torch.zeros_like(target)).long()
    if labels.numel() > 0 and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"multiclass target values must be in [0, {n_classes}) or ignore_index={ignore_index}, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]."
        )
    return labels, valid


def _sigmoid_target(
    mode: str, input: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a binary/multilabel target (the input's shape); return it in the input's dtype with 0 at
    ignored elements, and the kept-element map."""
    if target.shape != input.shape:
        raise ValueError(
            f"{mode} mode expects a target of the same shape as the input, "
            f"got input {tuple(input.shape)} and target {tuple(target.shape)}."
        )
    valid = _valid_elements(target, ignore_index)
    return torch.where(valid, target, torch.zeros_like(target)).to(input.dtype), valid


class MaskedDiceCELoss(_Loss):
    """
    Dice + cross-entropy on logits, where target elements equal to ``ignore_index`` are left out.

    Modes:

    - ``"binary"`` and ``"multilabel"``: sigmoid activation for the Dice term and
      ``binary_cross_entropy_with_logits`` for the CE term. ``target`` has the same shape as ``input``
      (``B, C, *spatial``) with values 0/1 or ``ignore_index``; each channel element is ignored on its own,
      so an IM of one channel does not hide the other channels.
    - ``"multiclass"``: softmax activation and ``cross_entropy``. ``target`` is a class-index map
      ``(B, 1, *spatial)`` with values in ``[0, C)`` or ``ignore_index``; an ignored pixel is left out of
      every channel.

    Ignored elements contribute nothing to the Dice intersection and sums nor to the CE mean, and their
    logits receive exactly zero gradient. An (image, channel) pair whose target is fully ignored is left
    out of the Dice mean (with ``batch=True``: a channel fully ignored over the batch). A fully ignored
    batch gives a loss of 0 with zero gradient.

    When no element is ignored the value equals MONAI's :class:`~monai.losses.DiceCELoss` with the
    matching settings: ``sigmoid=True`` for a one-channel binary input, ``softmax=True, to_onehot_y=True``
    for multiclass, and the same ``smooth_nr``, ``smooth_dr``, ``batch``. For a multi-channel multilabel
    input it equals ``DiceLoss(sigmoid=True)`` + ``BCEWithLogitsLoss()``; MONAI's ``DiceCELoss`` would
    use a softmax cross-entropy there, which does not fit independent labels.

    Note:
        The paper's published runs do not use a masked loss: they train with plain losses on the
        blacked-out pairs, where the IM pixels are set to 0 in both the input image and the pseudo-label
        (label policy ``"background"``). Skipping the IM pixels with this loss (policy ``"ignore"``) is
        this package's improvement; the paper-exact setting remains available through the
        ``"background"`` policy with :class:`MaskedMSELoss` (binary, multilabel) or with
        ``lambda_dice=0`` here (the categorical cross-entropy of the multiclass runs).

    Args:
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        ignore_index: target value that marks ignored elements; ``None`` ignores nothing.
        lambda_dice: weight of the Dice term, no less than 0.
        lambda_ce: weight of the cross-entropy term, no less than 0.
        smooth_nr: constant added to the Dice numerator.
        smooth_dr: constant added to the Dice denominator.
        batch: sum the Dice intersection and sums over the batch before dividing (as in ``DiceLoss``).

    Example::

        loss_fn = MaskedDiceCELoss(mode="multiclass")
        logits = torch.randn(2, 4, 32, 32, requires_grad=True)
        target = torch.randint(0, 4, (2, 1, 32, 32))
        target[:, :, :8] = IGNORE_INDEX  # e.g. the Inconsistency Mask
        loss_fn(logits, target).backward()
    """

    def __init__(
        self,
        mode: str = "binary",
        ignore_index: int | None = IGNORE_INDEX,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
    ) -> None:
        super().__init__()
        self.mode = look_up_option(mode, IM_MODES)
        if lambda_dice < 0.0:
            raise ValueError(f"lambda_dice should be no less than 0.0, got {lambda_dice}.")
        if lambda_ce < 0.0:
            raise ValueError(f"lambda_ce should be no less than 0.0, got {lambda_ce}.")
        self.ignore_index = ignore_index
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.batch = batch
        # activations and masking are done here, the Dice term itself is MONAI's
        self.dice = DiceLoss(
            include_background=True,
            reduction="none",
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )

    def _prepare_multiclass(
        self, input: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        labels, valid = _multiclass_labels(input, target, self.ignore_index)
        probs = torch.softmax(input, dim=1)
        onehot = one_hot(labels, num_classes=input.shape[1], dtype=input.dtype)
        ce_map = F.cross_entropy(input, labels[:, 0], reduction="none").unsqueeze(1)  # (B, 1, *spatial)
        return probs, onehot, ce_map, valid

    def _prepare_sigmoid(
        self, input: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        target, valid = _sigmoid_target(self.mode, input, target, self.ignore_index)
        probs = torch.sigmoid(input)
        ce_map = F.binary_cross_entropy_with_logits(input, target, reduction="none")
        return probs, target, ce_map, valid

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits, shape ``(B, C, *spatial)`` (2D or 3D).
            target: ``(B, C, *spatial)`` for binary/multilabel, ``(B, 1, *spatial)`` for multiclass,
                with ``ignore_index`` at ignored elements.

        Returns:
            the scalar loss ``lambda_dice * dice + lambda_ce * ce``.
        """
        _check_dims(input, target)
        if self.mode == "multiclass":
            probs, onehot, ce_map, valid = self._prepare_multiclass(input, target)
        else:
            probs, onehot, ce_map, valid = self._prepare_sigmoid(input, target)

        # sums and counts in at least float32: half-precision counts overflow above 65504 elements
        acc = torch.promote_types(input.dtype, torch.float32)
        probs, onehot, ce_map = probs.to(acc), onehot.to(acc), ce_map.to(acc)
        zero = torch.zeros((), dtype=acc, device=input.device)
        # CE: mean over the kept elements (pixels for multiclass, channel elements otherwise)
        ce = torch.where(valid, ce_map, zero).sum() / valid.sum().clamp_min(1).to(acc)

        # Dice: ignored elements are zero in both prediction and target, so they add nothing to tp/fp/fn
        valid_c = valid.expand_as(probs)
        dice_map = self.dice(torch.where(valid_c, probs, zero), torch.where(valid_c, onehot, zero))
        reduce_dims = [0, *range(2, probs.dim())] if self.batch else list(range(2, probs.dim()))
        has_valid = valid_c.sum(dim=reduce_dims).reshape(-1) > 0
        dice_per_pair = torch.where(has_valid, dice_map.reshape(-1), zero)
        dice = dice_per_pair.sum() / has_valid.sum().clamp_min(1).to(acc)

        return self.lambda_dice * dice + self.lambda_ce * ce


class MaskedMSELoss(_Loss):
    """
    Mean squared error between the activated network output and the target, skipping ``ignore_index``.

    This is the loss of the paper's published binary (ISIC 2018) and multi-label (HeLa) runs, which train
    with MSE on the sigmoid outputs; with the ``"background"`` label policy (no element ignored) it is
    exactly that. The conventions are those of :class:`MaskedDiceCELoss`:

    - ``"binary"`` and ``"multilabel"``: ``sigmoid(input)`` against a target of the input's shape
      ``(B, C, *spatial)`` with values 0/1 (soft values allowed) or ``ignore_index``; each channel element
      is kept or ignored on its own.
    - ``"multiclass"``: ``softmax(input)`` against the one-hot of a class-index target ``(B, 1, *spatial)``
      with values in ``[0, C)`` or ``ignore_index``; an ignored pixel is left out of every channel.

    The mean is taken over the kept elements only (for multiclass: kept pixels times ``C``), so ignored
    elements add nothing to the loss and their logits receive exactly zero gradient. A fully ignored batch
    gives 0 (still attached to the graph, with zero gradient) rather than NaN. Sums and counts are done in
    at least float32.

    Args:
        mode: one of ``"binary"``, ``"multiclass"``, ``"multilabel"``.
        ignore_index: target value that marks ignored elements; ``None`` ignores nothing.
        reduction: ``"mean"`` (over the kept elements), ``"sum"`` (over the kept elements) or ``"none"``
            (the squared-error map of the input's shape, 0 at ignored elements).

    Example::

        loss_fn = MaskedMSELoss(mode="binary")
        logits = torch.randn(2, 1, 32, 32, requires_grad=True)
        target = (torch.rand(2, 1, 32, 32) > 0.5).float()
        target[:, :, :8] = IGNORE_INDEX  # e.g. the Inconsistency Mask
        loss_fn(logits, target).backward()
    """

    def __init__(
        self, mode: str = "binary", ignore_index: int | None = IGNORE_INDEX, reduction: str = "mean"
    ) -> None:
        reductions = [r.value for r in LossReduction]
        if reduction not in reductions:
            raise ValueError(f"reduction should be one of {reductions}, got {reduction!r}.")
        super().__init__(reduction=reduction)
        self.mode = look_up_option(mode, IM_MODES)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits, shape ``(B, C, *spatial)`` (2D or 3D).
            target: ``(B, C, *spatial)`` for binary/multilabel, ``(B, 1, *spatial)`` for multiclass,
                with ``ignore_index`` at ignored elements.

        Returns:
            the scalar loss, or the ``(B, C, *spatial)`` squared-error map with ``reduction="none"``.
        """
        _check_dims(input, target)
        if self.mode == "multiclass":
            labels, valid = _multiclass_labels(input, target, self.ignore_index)
            probs = torch.softmax(input, dim=1)
            encoded = one_hot(labels, num_classes=input.shape[1], dtype=input.dtype)
        else:
            encoded, valid = _sigmoid_target(self.mode, input, target, self.ignore_index)
            probs = torch.sigmoid(input)
        acc = torch.promote_types(input.dtype, torch.float32)
        valid = valid.expand_as(probs)
        zero = torch.zeros((), dtype=acc, device=input.device)
        squared = torch.where(valid, (probs.to(acc) - encoded.to(acc)) ** 2, zero)
        if self.reduction == LossReduction.NONE.value:
            return squared
        if self.reduction == LossReduction.SUM.value:
            return squared.sum()
        return squared.sum() / valid.sum().clamp_min(1).to(acc)


#: The losses a bundle's ``loss`` key names (``--loss mse``), each taking the task ``mode``.
LOSSES: dict[str, type[_Loss]] = {"dice_ce": MaskedDiceCELoss, "mse": MaskedMSELoss}


def build_loss(loss: str | Callable, mode: str = "binary", **kwargs: Any) -> Callable:
    """The training loss ``loss`` names (a key of :data:`LOSSES`) for the task ``mode``; a loss object (e.g.
    one built from a ``_target_`` block of a bundle) is returned as it is.

    Raises:
        SystemExit: an unknown name, in one line naming the known ones (bundles read it from the command line).
    """
    if not isinstance(loss, str):
        return loss
    cls = LOSSES.get(loss)
    if cls is None:
        raise SystemExit(f"error: unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    return cls(mode=mode, **kwargs)
