"""Constants shared across monai_im."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "IM_MODES", "LABEL_POLICIES"]

#: Label value that marks pixels the loss must skip (the "ignore" IM policy).
IGNORE_INDEX: int = -1

#: The three kinds of segmentation task an Inconsistency Mask can be built for.
IM_MODES: tuple[str, ...] = ("binary", "multiclass", "multilabel")

#: How the IM is cut out of a pseudo-label: skipped by the loss, set to background,
#: or set to a dedicated IM class.
LABEL_POLICIES: tuple[str, ...] = ("ignore", "background", "im_class")
