"""Per-image segmentation metrics of the IM studies, as functions, MONAI metrics and ignite handlers.

- :mod:`.functional`: per-image IoU / Dice, per-channel IoU, present-class mean IoU (and the empty-mask
  convention), all from one implementation on MONAI's ``compute_iou`` / ``compute_dice`` (:func:`overlap_scores`).
- :mod:`.cell_count`: HeLa cell counts and the cell count error (MCCE).
- :mod:`.classes`: :class:`monai.metrics.CumulativeIterationMetric` subclasses.
- :mod:`.handlers`: :class:`monai.handlers.IgniteMetricHandler` subclasses for MONAI engines.
- :mod:`.volume`: per-organ Dice and NSD of multi-class 3D segmentations (FLARE22 tolerances and organ names).
"""

from __future__ import annotations

from .cell_count import cell_count_error, cell_counts
from .classes import (
    CellCountErrorMetric,
    ChannelIoUMetric,
    PerImageDiceMetric,
    PerImageIoUMetric,
    PresentClassMeanIoUMetric,
)
from .functional import binary_dice, binary_iou, channel_dice, channel_iou, overlap_scores, present_class_miou
from .handlers import ChannelMeanIoU, MeanCellCountError, PerImageDice, PerImageIoU, PresentClassMeanIoU
from .volume import (
    FLARE22_LABELLED_SLICES_ONLY,
    FLARE22_ORGANS,
    FLARE22_TOLERANCES,
    PerClassDice,
    PerClassDiceMetric,
    PerClassSurfaceDice,
    PerClassSurfaceDiceMetric,
    per_class_dice,
    per_class_surface_dice,
)

__all__ = [
    "FLARE22_LABELLED_SLICES_ONLY",
    "FLARE22_ORGANS",
    "FLARE22_TOLERANCES",
    "PerClassDice",
    "PerClassDiceMetric",
    "PerClassSurfaceDice",
    "PerClassSurfaceDiceMetric",
    "per_class_dice",
    "per_class_surface_dice",
    "CellCountErrorMetric",
    "ChannelIoUMetric",
    "ChannelMeanIoU",
    "MeanCellCountError",
    "PerImageDice",
    "PerImageDiceMetric",
    "PerImageIoU",
    "PerImageIoUMetric",
    "PresentClassMeanIoU",
    "PresentClassMeanIoUMetric",
    "binary_dice",
    "binary_iou",
    "cell_count_error",
    "cell_counts",
    "channel_dice",
    "channel_iou",
    "overlap_scores",
    "present_class_miou",
]
