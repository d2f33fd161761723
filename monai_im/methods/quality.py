"""Segmentation-quality estimation: learn to predict the IoU of a candidate mask (the paper's EvalNet).

The paper's EvalNet method filters pseudo-labels by a predicted IoU (kept above a threshold, 0.75 for
ISIC 2018), and IM++ / AIM++ weight each pseudo-label by replicating it 1..5 times by that score. The
estimator is trained on teacher predictions for the labeled images with their true IoU as target
(ground-truth masks count as 1.0):

    estimator = QualityEstimator(image_channels=3, mask_channels=1)
    report = estimator.fit(images, masks, mask_iou(masks, truths), val=(val_images, val_masks, val_iou))
    scores = estimator.score(unlabeled_images, pseudo_labels)  # (N,) in [0, 1]

- :func:`mask_iou`: per-image IoU of binary masks, the regression target.
- :class:`QualityEstimator`: an :class:`~monai_im.networks.EvalNet` trained by MSE regression.
- :class:`QualityReport`: what a fit did, with the agreement of predicted and true IoU on validation.
- :func:`correlation`: Pearson and Spearman correlation of predicted and true scores.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from monai_im.metrics.functional import overlap_scores
from monai_im.networks import EvalNet
from monai_im.runtime.progress import progress_bar

__all__ = ["QualityEstimator", "QualityReport", "correlation", "mask_iou"]


def mask_iou(pred: Tensor, truth: Tensor, valid: Tensor | None = None) -> Tensor:
    """
    Per-image IoU of binary masks, counting the elements of all channels together.

    Args:
        pred: candidate masks ``(B, C, *spatial)``; a value above 0.5 (or ``True``) is foreground.
        truth: ground-truth masks of the same shape.
        valid: optional ``(B, 1, *spatial)`` or ``(B, C, *spatial)`` map; only its true (> 0.5) elements
            are counted, e.g. to score a pseudo-label outside its Inconsistency Mask.

    Returns:
        ``(B,)`` float32: intersection over union per image; 1.0 where both masks are empty (in the valid
        region), the package's empty-mask convention (see :mod:`monai_im.metrics.functional`).

    Raises:
        ValueError: the shapes do not match or are not batch-first ``(B, C, *spatial)``.
    """
    if pred.shape != truth.shape or pred.dim() < 3:
        raise ValueError(
            "mask_iou: pred and truth should be (B, C, *spatial) masks of the same shape, "
            f"got {tuple(pred.shape)} and {tuple(truth.shape)}."
        )
    if valid is not None:
        shape = tuple(valid.shape)
        if (
            valid.dim() != pred.dim()
            or shape[0] != pred.shape[0]
            or shape[1] not in (1, pred.shape[1])
            or shape[2:] != pred.shape[2:]
        ):
            raise ValueError(
                f"mask_iou: valid should be (B, 1 or C, *spatial) for masks {tuple(pred.shape)}, got {shape}."
            )
    return overlap_scores(pred, truth, "iou", valid=valid, pool_channels=True, name="mask_iou")[:, 0]


def _ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1D tensor, ties sharing their average rank."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    start = torch.cumsum(counts, 0) - counts
    return (start + (counts + 1.0) / 2.0)[inverse]


def _pearson(a: Tensor, b: Tensor) -> float | None:
    a, b = a - a.mean(), b - b.mean()
    den = torch.sqrt((a * a).sum() * (b * b).sum())
    if den <= 0:
        return None
    return float((a * b).sum() / den)


def correlation(pred: Tensor, true: Tensor) -> tuple[float | None, float | None]:
    """
    Pearson and Spearman (rank, ties averaged) correlation of predicted and true scores.

    Args:
        pred: predicted scores, any shape (flattened).
        true: true scores with as many elements.

    Returns:
        ``(pearson, spearman)``; both ``None`` with fewer than 3 pairs or when either side is constant.

    Raises:
        ValueError: the two do not have the same number of elements.
    """
    a = pred.detach().flatten().to("cpu", torch.float64)
    b = true.detach().flatten().to("cpu", torch.float64)
    if a.numel() != b.numel():
        raise ValueError(f"correlation: pred has {a.numel()} values but true has {b.numel()}.")
    if a.numel() < 3:
        return None, None
    pearson = _pearson(a, b)
    if pearson is None:
        return None, None
    return pearson, _pearson(_ranks(a), _ranks(b))


@dataclass
class QualityReport:
    """Summary of one :meth:`QualityEstimator.fit`.

    Attributes:
        pairs: training (image, mask) pairs.
        epochs: epochs trained.
        final_loss: mean training MSE of the last epoch.
        val_pairs: validation pairs (0 without validation).
        pearson: Pearson correlation of predicted and true IoU on the validation pairs.
        spearman: Spearman correlation of the same.
        mae: mean absolute error of the predicted IoU on the validation pairs.
    """

    pairs: int
    epochs: int
    final_loss: float
    val_pairs: int
    pearson: float | None
    spearman: float | None
    mae: float | None

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dictionary (e.g. for JSON or MLflow parameters)."""
        return asdict(self)


def _random_dihedral(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each sample of ``x`` (B, C, *spatial) along each spatial axis with probability 1/2, and swap
    the last two axes with probability 1/2 when they are equal (all eight 90-degree rotations and
    reflections in 2D); one draw per sample, vectorised over the batch."""
    b, spatial = x.shape[0], x.dim() - 2
    n_draws = spatial + 1
    draws = torch.rand(b, n_draws, generator=generator) < 0.5
    draws = draws.to(x.device).view(b, n_draws, *([1] * (x.dim() - 1)))
    for axis in range(spatial):
        x = torch.where(draws[:, axis], x.flip(2 + axis), x)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where(draws[:, spatial], x.transpose(-1, -2), x)
    return x


class QualityEstimator:
    """
    Learns to predict the IoU of a candidate mask for an image (the paper's EvalNet).

    :meth:`fit` trains an :class:`~monai_im.networks.EvalNet` (or a copy of ``network``) by mean squared
    error on the true IoU of (image, mask) pairs with AdamW; mini-batches are shuffled and augmented
    with random flips and 90-degree rotations (the same for an image and its mask) drawn from a
    ``torch.Generator`` seeded with ``seed``, and the network is initialised under the same seed, so a fit
    is reproducible. After the last epoch the batch-norm statistics are re-estimated over the training
    pairs with the final weights (a small labeled set gives too few steps for the running averages).
    :meth:`score` predicts the IoU of new pairs.

    Args:
        image_channels: channels of the images (3 RGB, 1 grey), values in [0, 1].
        mask_channels: channels of the masks (1 binary; C for multi-label or one-hot masks).
        alpha: width factor of EvalNet (1 for ISIC 2018 in the paper, 2 otherwise).
        epochs: training epochs.
        batch_size: mini-batch size for training, and the default for :meth:`score`.
        learning_rate: AdamW learning rate.
        device: where the network runs (``"cpu"``, ``"cuda"``, a :class:`torch.device`).
        seed: seed of the initialisation, the shuffling and the augmentation.
        progress: show a bar over the epochs.
        network: a module ``forward(image, mask) -> (B, 1)`` with scores in [0, 1] to use instead of a
            fresh EvalNet, e.g. a pre-trained or customised one; every fit trains a copy of it (so two
            fits start from the same weights) and :meth:`score` uses it as it is before the first fit.
        weight_decay: AdamW weight decay (1e-4 as the paper's students).
    """

    def __init__(
        self,
        image_channels: int = 3,
        mask_channels: int = 1,
        alpha: float = 1.0,
        epochs: int = 30,
        batch_size: int = 16,
        learning_rate: float = 1e-3,
        device: str | torch.device = "cpu",
        seed: int = 0,
        progress: bool = False,
        network: nn.Module | None = None,
        weight_decay: float = 1e-4,
    ) -> None:
        for name, value in [("epochs", epochs), ("batch_size", batch_size)]:
            if int(value) < 1:
                raise ValueError(f"QualityEstimator: {name} should be at least 1, got {value}.")
        for name, value in [("alpha", alpha), ("learning_rate", learning_rate)]:
            if not value > 0:
                raise ValueError(f"QualityEstimator: {name} should be positive, got {value}.")
        self.image_channels = int(image_channels)
        self.mask_channels = int(mask_channels)
        self.alpha = float(alpha)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.progress = progress
        self._template = network
        self.network: nn.Module | None = None if network is None else network.to(self.device)
        #: mean training loss of each epoch of the last fit
        self.history: list[float] = []

    # ------------------------------------------------------------------ building and checking
    def _build(self, spatial_dims: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if self._template is not None:
                net = copy.deepcopy(self._template)
            else:
                net = EvalNet(spatial_dims, self.image_channels, self.mask_channels, alpha=self.alpha)
        return net.to(self.device)

    def _check_pairs(self, images: Tensor, masks: Tensor, what: str) -> None:
        if images.dim() not in (4, 5) or masks.dim() != images.dim():
            raise ValueError(
                f"QualityEstimator.{what}: images and masks should be (N, C, *spatial) 2D or 3D batches, "
                f"got {tuple(images.shape)} and {tuple(masks.shape)}."
            )
        if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
            raise ValueError(
                f"QualityEstimator.{what}: images {tuple(images.shape)} and masks {tuple(masks.shape)} "
                "should have the same N and spatial size."
            )
        if self._template is None and (
            images.shape[1] != self.image_channels or masks.shape[1] != self.mask_channels
        ):
            raise ValueError(
                f"QualityEstimator.{what}: expected {self.image_channels} image and {self.mask_channels} mask "
                f"channels, got images {tuple(images.shape)} and masks {tuple(masks.shape)}."
            )
        net = self.network if self.network is not None else self._template
        min_size = getattr(net, "min_size", 64)
        if min(images.shape[2:]) < min_size:
            raise ValueError(
                f"QualityEstimator.{what}: every spatial size should be at least {min_size}, "
                f"got images {tuple(images.shape)}."
            )

    def _check_targets(self, targets: Tensor, n: int, what: str) -> Tensor:
        targets = torch.as_tensor(targets).detach().flatten().float()
        if targets.numel() != n:
            raise ValueError(f"QualityEstimator.{what}: {n} pairs but {targets.numel()} targets.")
        if targets.numel() and not bool(((targets >= 0) & (targets <= 1)).all()):
            raise ValueError(
                f"QualityEstimator.{what}: targets should be IoU values in [0, 1], got values in "
                f"[{float(targets.min())}, {float(targets.max())}]."
            )
        return targets

    # ------------------------------------------------------------------ training and scoring
    def fit(
        self,
        images: Tensor,
        masks: Tensor,
        targets: Tensor,
        val: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> QualityReport:
        """
        Train a fresh network to regress ``targets`` from the (image, mask) pairs.

        Args:
            images: ``(N, image_channels, *spatial)`` float in [0, 1], every spatial size at least 64.
            masks: ``(N, mask_channels, *spatial)`` 0/1 float (or bool).
            targets: ``(N,)`` true IoU of each mask, in [0, 1].
            val: optional ``(images, masks, targets)`` scored after training for the report.

        Returns:
            a :class:`QualityReport`.

        Raises:
            ValueError: mismatched shapes or counts, spatial size below 64, targets outside [0, 1]; all
                checked before any training.
        """
        self._check_pairs(images, masks, "fit")
        targets = self._check_targets(targets, images.shape[0], "fit")
        if images.shape[0] == 0:
            raise ValueError("QualityEstimator.fit: no training pairs.")
        if val is not None:
            self._check_pairs(val[0], val[1], "fit(val)")
            val_targets = self._check_targets(val[2], val[0].shape[0], "fit(val)")

        net = self._build(images.dim() - 2)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        n, n_image = images.shape[0], images.shape[1]
        self.history = []
        net.train()
        bar = progress_bar(range(self.epochs), desc="EvalNet", unit="epoch", disable=not self.progress)
        for _ in bar:
            total = torch.zeros((), device=self.device)
            for index in torch.randperm(n, generator=generator).split(self.batch_size):
                pair = torch.cat([images[index].float(), masks[index].float()], dim=1).to(self.device)
                pair = _random_dihedral(pair, generator)
                y = targets[index].to(self.device)
                loss = F.mse_loss(net(pair[:, :n_image], pair[:, n_image:]).reshape(-1), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * index.numel()
            self.history.append(float(total) / n)
            bar.set_postfix(loss=f"{self.history[-1]:.4f}")
        bar.close()
        self.network = net
        self._recalibrate_batch_norm(images, masks)

        pearson = spearman = mae = None
        val_pairs = 0 if val is None else int(val[0].shape[0])
        if val is not None and val_pairs > 0:
            predicted = self.score(val[0], val[1])
            pearson, spearman = correlation(predicted, val_targets)
            mae = float((predicted - val_targets).abs().mean())
        return QualityReport(n, self.epochs, self.history[-1], val_pairs, pearson, spearman, mae)

    @torch.no_grad()
    def _recalibrate_batch_norm(self, images: Tensor, masks: Tensor) -> None:
        """Re-estimate the batch-norm running statistics as the plain average over the training pairs
        (not augmented) with the final weights, as ``torch.optim.swa_utils.update_bn`` does.

        The running averages kept during training (momentum 0.1) lag behind the weights and are far
        from converged after the few hundred steps of a small labeled set, which makes eval-mode scores
        collapse to a near-constant value; one extra forward pass fixes that."""
        assert self.network is not None
        norms = [m for m in self.network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            self.network.eval()
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        self.network.train()
        for start in range(0, images.shape[0], self.batch_size):
            stop = start + self.batch_size
            self.network(
                images[start:stop].float().to(self.device), masks[start:stop].float().to(self.device)
            )
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.network.eval()

    @torch.no_grad()
    def score(self, images: Tensor, masks: Tensor, batch_size: int | None = None) -> Tensor:
        """
        Predicted IoU of each (image, mask) pair.

        Args:
            images: ``(N, image_channels, *spatial)`` float in [0, 1].
            masks: ``(N, mask_channels, *spatial)`` 0/1.
            batch_size: pairs per forward pass; the training ``batch_size`` by default.

        Returns:
            ``(N,)`` float32 on the CPU, in [0, 1].

        Raises:
            RuntimeError: there is no network yet (neither fitted, loaded nor given).
            ValueError: mismatched shapes or spatial size below 64.
        """
        if self.network is None:
            raise RuntimeError("QualityEstimator.score: no network yet; call fit or load_state_dict first.")
        self._check_pairs(images, masks, "score")
        step = self.batch_size if batch_size is None else int(batch_size)
        if step < 1:
            raise ValueError(f"QualityEstimator.score: batch_size should be at least 1, got {batch_size}.")
        self.network.eval()
        out = [torch.zeros(0)]
        for start in range(0, images.shape[0], step):
            image = images[start : start + step].float().to(self.device)
            mask = masks[start : start + step].float().to(self.device)
            out.append(self.network(image, mask).reshape(-1).float().cpu())
        return torch.cat(out)

    def state_dict(self) -> dict[str, Tensor]:
        """The network's weights (a plain tensor dictionary, loadable with ``weights_only=True``)."""
        if self.network is None:
            raise RuntimeError("QualityEstimator.state_dict: no network yet; call fit first.")
        return self.network.state_dict()

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load weights saved by :meth:`state_dict`; builds the network first if there is none (the
        spatial dimensions are read from the weights of an EvalNet's first convolution)."""
        if self.network is None:
            key = "image_stream.0.conv.weight"
            if key not in state_dict:
                raise ValueError(f"QualityEstimator.load_state_dict: not EvalNet weights (no {key!r}).")
            self.network = self._build(state_dict[key].dim() - 2)
        self.network.load_state_dict(state_dict)
        self.network.eval()
