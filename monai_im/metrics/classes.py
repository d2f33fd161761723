"""MONAI metric classes for the per-image scores of :mod:`monai_im.metrics.functional` and the MCCE.

Each class follows :class:`monai.metrics.CumulativeIterationMetric`: calling it on a batch (a batch-first
tensor or a list of channel-first tensors) returns the per-image values and adds them to the buffer;
:meth:`aggregate` returns their mean over all images seen since the last :meth:`reset`, as a 0-dim
float tensor. The per-image values never contain NaN (see the empty-mask convention in
:mod:`monai_im.metrics.functional`), so the mean is over every image.

Example::

    metric = PerImageIoUMetric()
    for batch in loader:
        metric(y_pred=post(model(batch["image"])), y=batch["label"])
    print(metric.aggregate().item())
    metric.reset()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import CumulativeIterationMetric

from monai_im.metrics.cell_count import HELA_CHANNELS, cell_count_error
from monai_im.metrics.functional import binary_dice, binary_iou, channel_iou, present_class_miou

__all__ = [
    "CellCountErrorMetric",
    "ChannelIoUMetric",
    "PerImageDiceMetric",
    "PerImageIoUMetric",
    "PresentClassMeanIoUMetric",
]


class _PerImageMeanMetric(CumulativeIterationMetric):
    """Shared ``aggregate``: the mean of the buffered per-image values."""

    def _buffer(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"{self.__class__.__name__}: the data to aggregate must be a PyTorch Tensor.")
        if data.numel() == 0:
            raise ValueError(
                f"{self.__class__.__name__}: nothing to aggregate, call the metric on some data first."
            )
        return data.float()

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Mean of the per-image values over all buffered images (0-dim tensor)."""
        return self._buffer().mean()

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{self.__class__.__name__} needs the ground truth y.")
        return self._score(y_pred, y)

    def _score(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PerImageIoUMetric(_PerImageMeanMetric):
    """
    Per-image IoU of binary masks averaged over images (the ISIC 2018 protocol).

    Args:
        empty_score: score of an image whose prediction and ground truth are both empty.

    Inputs are thresholded one-channel masks ``(B, 1, *spatial)`` (or lists of ``(1, *spatial)``).
    See :func:`monai_im.metrics.functional.binary_iou`.
    """

    def __init__(self, empty_score: float = 1.0) -> None:
        super().__init__()
        self.empty_score = empty_score

    def _score(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return binary_iou(y_pred, y, empty_score=self.empty_score)


class PerImageDiceMetric(PerImageIoUMetric):
    """
    Per-image Dice of binary masks averaged over images; same inputs and ``empty_score`` as
    :class:`PerImageIoUMetric`. See :func:`monai_im.metrics.functional.binary_dice`.
    """

    def _score(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return binary_dice(y_pred, y, empty_score=self.empty_score)


class PresentClassMeanIoUMetric(_PerImageMeanMetric):
    """
    Per-image mean IoU over the classes present in each image's ground truth, averaged over images
    (the SUIM / Cityscapes protocol). See :func:`monai_im.metrics.functional.present_class_miou`.

    Args:
        num_classes: number of classes including background; needed when both inputs are class indices
            ``(B, 1, *spatial)``, otherwise taken from the one-hot input ``(B, C, *spatial)``.
        include_background: whether class 0 takes part in the per-image mean.
        empty_score: score of an image whose ground truth has no class at all and whose prediction is
            empty too.
    """

    def __init__(
        self, num_classes: int | None = None, include_background: bool = True, empty_score: float = 1.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.include_background = include_background
        self.empty_score = empty_score

    def _score(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return present_class_miou(
            y_pred,
            y,
            num_classes=self.num_classes,
            include_background=self.include_background,
            empty_score=self.empty_score,
        )


class ChannelIoUMetric(_PerImageMeanMetric):
    """
    Per-image, per-channel IoU of multi-label masks; ``aggregate`` averages over images and the selected
    channels (e.g. ``channels=(0, 1)`` for the HeLa alive and dead maps).

    The per-iteration values (and the buffer) keep every channel, shape ``(B, C)``.

    Args:
        channels: channel indices averaged by ``aggregate``; ``None`` means all channels.
        empty_score: score of a channel whose prediction and ground truth are both empty.
    """

    def __init__(self, channels: Sequence[int] | None = None, empty_score: float = 1.0) -> None:
        super().__init__()
        self.channels = None if channels is None else [int(c) for c in channels]
        self.empty_score = empty_score

    def _score(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return channel_iou(y_pred, y, empty_score=self.empty_score)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Mean over images and the selected channels (0-dim tensor)."""
        data = self._buffer()
        if self.channels is not None:
            if max(self.channels) >= data.shape[1]:
                raise ValueError(
                    f"ChannelIoUMetric: channels {self.channels} out of range for {data.shape[1]} channels."
                )
            data = data[:, self.channels]
        return data.mean()


class CellCountErrorMetric(_PerImageMeanMetric):
    """
    Mean cell count error (MCCE) of HeLa masks: the per-image ``|alive_pred - alive_gt| +
    |dead_pred - dead_gt|`` averaged over images; lower is better.
    See :mod:`monai_im.metrics.cell_count` for the counting rule.

    Args:
        window: side of the alive/dead comparison window around each cell centroid.
        channels: indices of the (alive, dead, position) channels.
        connectivity: connected-component neighbourhood; ``None`` is full connectivity.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        window: int = 6,
        channels: Sequence[int] = HELA_CHANNELS,
        connectivity: int | None = None,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.window = window
        self.channels = tuple(channels)
        self.connectivity = connectivity
        self.spatial_dims = spatial_dims

    def _score(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cell_count_error(
            y_pred,
            y,
            window=self.window,
            channels=self.channels,
            connectivity=self.connectivity,
            spatial_dims=self.spatial_dims,
        )
