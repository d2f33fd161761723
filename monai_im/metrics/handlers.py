"""Ignite handlers that put the per-image metrics into MONAI engines (e.g. as the ``key_val_metric`` of a
:class:`monai.engines.SupervisedEvaluator`), in the style of :class:`monai.handlers.MeanDice`.

The engine output is passed through ``output_transform`` to get ``(y_pred, y)``: batch-first tensors, or
lists of channel-first tensors after decollating post-processing. Typical use::

    from monai.handlers import from_engine

    key_val_metric = {"val_iou": PerImageIoU(output_transform=from_engine(["pred", "label"]))}

With ``save_details=True`` the per-image values are stored in ``engine.state.metric_details[name]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers import IgniteMetricHandler

from monai_im.metrics.cell_count import HELA_CHANNELS
from monai_im.metrics.classes import (
    CellCountErrorMetric,
    ChannelIoUMetric,
    PerImageDiceMetric,
    PerImageIoUMetric,
    PresentClassMeanIoUMetric,
)

__all__ = ["ChannelMeanIoU", "MeanCellCountError", "PerImageDice", "PerImageIoU", "PresentClassMeanIoU"]


class PerImageIoU(IgniteMetricHandler):
    """Per-image IoU of binary masks, averaged over images. See :class:`PerImageIoUMetric`."""

    def __init__(
        self, empty_score: float = 1.0, output_transform: Callable = lambda x: x, save_details: bool = True
    ) -> None:
        """
        Args:
            empty_score: score of an image whose prediction and ground truth are both empty.
            output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``, e.g.
                ``from_engine(["pred", "label"])``.
            save_details: whether to save the per-image values to ``engine.state.metric_details``.
        """
        super().__init__(
            metric_fn=PerImageIoUMetric(empty_score=empty_score),
            output_transform=output_transform,
            save_details=save_details,
        )


class PerImageDice(IgniteMetricHandler):
    """Per-image Dice of binary masks, averaged over images. See :class:`PerImageDiceMetric`."""

    def __init__(
        self, empty_score: float = 1.0, output_transform: Callable = lambda x: x, save_details: bool = True
    ) -> None:
        """
        Args:
            empty_score: score of an image whose prediction and ground truth are both empty.
            output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``, e.g.
                ``from_engine(["pred", "label"])``.
            save_details: whether to save the per-image values to ``engine.state.metric_details``.
        """
        super().__init__(
            metric_fn=PerImageDiceMetric(empty_score=empty_score),
            output_transform=output_transform,
            save_details=save_details,
        )


class PresentClassMeanIoU(IgniteMetricHandler):
    """Per-image mean IoU over the ground-truth classes, averaged over images. See
    :class:`PresentClassMeanIoUMetric`."""

    def __init__(
        self,
        num_classes: int | None = None,
        include_background: bool = True,
        empty_score: float = 1.0,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            num_classes: number of classes including background; needed when both inputs are class indices.
            include_background: whether class 0 takes part in the per-image mean.
            empty_score: score of an image with no ground-truth class and an empty prediction.
            output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``, e.g.
                ``from_engine(["pred", "label"])``.
            save_details: whether to save the per-image values to ``engine.state.metric_details``.
        """
        super().__init__(
            metric_fn=PresentClassMeanIoUMetric(
                num_classes=num_classes, include_background=include_background, empty_score=empty_score
            ),
            output_transform=output_transform,
            save_details=save_details,
        )


class ChannelMeanIoU(IgniteMetricHandler):
    """Per-image, per-channel IoU of multi-label masks, averaged over images and the selected channels.
    See :class:`ChannelIoUMetric`."""

    def __init__(
        self,
        channels: Sequence[int] | None = None,
        empty_score: float = 1.0,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            channels: channels to average, e.g. ``(0, 1)`` for HeLa alive and dead; ``None`` for all.
            empty_score: score of a channel whose prediction and ground truth are both empty.
            output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``, e.g.
                ``from_engine(["pred", "label"])``.
            save_details: whether to save the per-image values to ``engine.state.metric_details``.
        """
        super().__init__(
            metric_fn=ChannelIoUMetric(channels=channels, empty_score=empty_score),
            output_transform=output_transform,
            save_details=save_details,
        )


class MeanCellCountError(IgniteMetricHandler):
    """Mean cell count error (MCCE) of HeLa masks; lower is better. See :class:`CellCountErrorMetric`.

    As the key metric of an evaluator, lower must count as better: pass
    ``metric_cmp_fn=lambda current, best: current < best`` to the evaluator (its default keeps the
    highest value) and ``key_metric_negative_sign=True`` to a :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(
        self,
        window: int = 6,
        channels: Sequence[int] = HELA_CHANNELS,
        connectivity: int | None = None,
        spatial_dims: int = 2,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            window: side of the alive/dead comparison window around each cell centroid.
            channels: indices of the (alive, dead, position) channels.
            connectivity: connected-component neighbourhood; ``None`` is full connectivity.
            spatial_dims: 2 or 3.
            output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``, e.g.
                ``from_engine(["pred", "label"])``.
            save_details: whether to save the per-image values to ``engine.state.metric_details``.
        """
        super().__init__(
            metric_fn=CellCountErrorMetric(
                window=window, channels=channels, connectivity=connectivity, spatial_dims=spatial_dims
            ),
            output_transform=output_transform,
            save_details=save_details,
        )
