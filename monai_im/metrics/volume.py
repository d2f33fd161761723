"""Per-organ Dice and normalised surface Dice (NSD) of multi-class 3D segmentations, for MONAI evaluators.

The scores come from MONAI (:func:`monai.metrics.compute_dice`, :func:`monai.metrics.compute_surface_dice`);
this module prepares the inputs (class indices or one-hot, an ignore value, FLARE22's labelled-slice rule),
keeps one value per case and organ, and reports the organ means to the engine.

Inputs (batch-first ``(B, C, *spatial)`` tensors, or lists of channel-first tensors):

- ``y_pred``: the post-processed prediction, either a class-index map ``(B, 1, ...)`` (``argmax``) or a
  one-hot / probability map ``(B, num_classes, ...)`` (its ``argmax`` over channels is used).
- ``y``: the label, class indices ``(B, 1, ...)`` where the value ``ignore_index`` (default 255) marks
  voxels to leave out, or one-hot ``(B, num_classes, ...)`` where voxels without any class are left out.

Conventions, per case and organ:

- ignored voxels count in neither metric: they are set to background in both the prediction and the label
  (for NSD an organ cut by an ignored region gets the same cut surface in both masks, which is within
  every tolerance);
- organ absent from both the label and the prediction: NaN, left out of that organ's mean;
- organ absent from the label but predicted (or the reverse): Dice 0 and NSD 0.

Each organ's value is the mean over the cases where it is present (label or prediction); the key value is
the macro mean over the organs that have a value (NaN when none has). The official FLARE22 script instead
scores an organ absent from both as 1; on its validation and test cases every organ is annotated, so the
two agree there.

NSD tolerances are in millimetres: distances are measured with the voxel ``spacing`` (mm per voxel along
each spatial axis; ``None`` is 1 mm). Example::

    from monai.handlers import from_engine

    pick = from_engine(["pred", "label"])
    key_val_metric = {"dice": PerClassDice(14, class_names=FLARE22_ORGANS, output_transform=pick)}
    additional_metrics = {
        "nsd": PerClassSurfaceDice(14, FLARE22_ORGANS, spacing=(2.5, 2.5, 4.0), output_transform=pick)
    }
    # engine.state.metrics: dice, dice_liver, ..., dice_left_kidney, nsd, nsd_liver, ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

from monai_im.metrics.volume_functional import (
    FLARE22_LABELLED_SLICES_ONLY,
    FLARE22_ORGANS,
    FLARE22_TOLERANCES,
    LABEL_IGNORE_VALUE,
    _check_spacing,
    _check_tolerances,
    macro_mean,
    per_class_dice,
    per_class_surface_dice,
    prepare_one_hot,
)

__all__ = [
    "FLARE22_LABELLED_SLICES_ONLY",
    "FLARE22_ORGANS",
    "FLARE22_TOLERANCES",
    "LABEL_IGNORE_VALUE",
    "PerClassDice",
    "PerClassDiceMetric",
    "PerClassSurfaceDice",
    "PerClassSurfaceDiceMetric",
    "macro_mean",
    "per_class_dice",
    "per_class_surface_dice",
    "prepare_one_hot",
]


class _PerClassMetric(CumulativeIterationMetric):
    """Buffers the per-case, per-class values ``(B, K)`` of ``score(y_pred, y)``; :meth:`aggregate` averages
    each class over its cases."""

    def __init__(self, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.score = score

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{self.__class__.__name__} needs the label y.")
        return self.score(y_pred, y)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Per-class mean ``(K,)`` over the cases where the class is present (NaN where it never is)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError(
                f"{self.__class__.__name__}: nothing to aggregate, call the metric on some data first."
            )
        return data.float().nanmean(dim=0)


class PerClassDiceMetric(_PerClassMetric):
    """
    Per-case, per-class Dice (:func:`per_class_dice`), buffered; arguments as :class:`PerClassDice`.
    """

    def __init__(
        self,
        num_classes: int,
        include_background: bool = False,
        ignore_index: int | None = LABEL_IGNORE_VALUE,
        labelled_slices_only: Sequence[int] = (),
        slice_axis: int = -1,
    ) -> None:
        super().__init__(
            partial(
                per_class_dice,
                num_classes=int(num_classes),
                include_background=include_background,
                ignore_index=ignore_index,
                labelled_slices_only=tuple(int(c) for c in labelled_slices_only),
                slice_axis=slice_axis,
            )
        )


class PerClassSurfaceDiceMetric(_PerClassMetric):
    """
    Per-case, per-class normalised surface Dice (:func:`per_class_surface_dice`), buffered; arguments as
    :class:`PerClassSurfaceDice`.
    """

    def __init__(
        self,
        num_classes: int,
        tolerances: float | Sequence[float] = FLARE22_TOLERANCES,
        spacing: float | Sequence[float] | None = None,
        use_subvoxels: bool = True,
        ignore_index: int | None = LABEL_IGNORE_VALUE,
        labelled_slices_only: Sequence[int] = (),
        slice_axis: int = -1,
    ) -> None:
        _check_spacing(spacing)  # bad values fail here; the number of axes is checked on the data
        super().__init__(
            partial(
                per_class_surface_dice,
                num_classes=int(num_classes),
                tolerances=_check_tolerances(tolerances, int(num_classes) - 1),
                spacing=spacing,
                use_subvoxels=use_subvoxels,
                ignore_index=ignore_index,
                labelled_slices_only=tuple(int(c) for c in labelled_slices_only),
                slice_axis=slice_axis,
            )
        )


class _PerClassHandler(IgniteMetricHandler):
    """Reports the macro mean under the metric's name and each class under ``<name>_<class>``."""

    def __init__(
        self,
        metric_fn: _PerClassMetric,
        class_names: Sequence[str],
        output_transform: Callable,
        save_details: bool,
    ) -> None:
        self.class_names = [str(c) for c in class_names]
        self._per_class: dict[str, float] = {}
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

    def compute(self) -> float:
        """The macro mean over classes; the per-class means are kept for :meth:`completed`."""
        per_class = self.metric_fn.aggregate()
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("please call the attach() function to connect expected engine first.")
            self._engine.state.metric_details[self._name] = self.metric_fn.get_buffer()  # type: ignore
        if per_class.numel() != len(self.class_names):
            raise ValueError(
                f"{self.__class__.__name__}: {len(self.class_names)} class names for {per_class.numel()} classes."
            )
        self._per_class = {c: float(v) for c, v in zip(self.class_names, per_class.tolist())}
        return macro_mean(per_class)

    def completed(self, engine: Any, name: str) -> None:
        """Put the mean into ``engine.state.metrics[name]`` and each class into ``[f"{name}_{class}"]``."""
        super().completed(engine, name)
        for cls, value in self._per_class.items():
            engine.state.metrics[f"{name}_{cls}"] = value


def _names(class_names: Sequence[str] | None, n: int, what: str) -> list[str]:
    names = [f"class_{i}" for i in range(1, n + 1)] if class_names is None else [str(c) for c in class_names]
    if len(names) != n or len(set(names)) != n:
        raise ValueError(
            f"{what}: class_names must be {n} distinct names (classes 1..{n}), got {class_names}."
        )
    return names


class PerClassDice(_PerClassHandler):
    """
    Per-organ Dice for MONAI evaluators: ``engine.state.metrics[name]`` is the mean over organs and
    ``[f"{name}_{organ}"]`` each organ's mean over cases. See the module conventions.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        include_background: bool = False,
        ignore_index: int | None = LABEL_IGNORE_VALUE,
        labelled_slices_only: Sequence[int] = (),
        slice_axis: int = -1,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            num_classes: number of classes including background (14 for FLARE22).
            class_names: names of classes 1..N used in the metric keys (default ``class_1..class_N``),
                e.g. :data:`FLARE22_ORGANS`.
            include_background: whether class 0 (named ``background``) takes part in the mean.
            ignore_index: label value of left-out voxels; ``None`` for none.
            labelled_slices_only: labels scored only on the slices where the label has them, e.g.
                :data:`FLARE22_LABELLED_SLICES_ONLY`.
            slice_axis: spatial axis of those slices.
            output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``, e.g.
                ``from_engine(["pred", "label"])``.
            save_details: whether to save the per-case, per-class values to ``engine.state.metric_details``.
        """
        names = _names(class_names, int(num_classes) - 1, "PerClassDice")
        super().__init__(
            PerClassDiceMetric(
                num_classes, include_background, ignore_index, labelled_slices_only, slice_axis
            ),
            ["background", *names] if include_background else names,
            output_transform,
            save_details,
        )


class PerClassSurfaceDice(_PerClassHandler):
    """
    Per-organ normalised surface Dice (tolerances in mm) for MONAI evaluators: ``engine.state.metrics[name]``
    is the mean over organs and ``[f"{name}_{organ}"]`` each organ's mean over cases.
    See the module conventions.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        tolerances: float | Sequence[float] = FLARE22_TOLERANCES,
        spacing: float | Sequence[float] | None = None,
        use_subvoxels: bool = True,
        ignore_index: int | None = LABEL_IGNORE_VALUE,
        labelled_slices_only: Sequence[int] = (),
        slice_axis: int = -1,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        """
        Args:
            num_classes: number of classes including background (14 for FLARE22).
            class_names: names of classes 1..N used in the metric keys (default ``class_1..class_N``).
            tolerances: boundary tolerance in mm, one for all organs or one per class 1..N (default: the
                FLARE22 tolerances, which need ``num_classes=14``).
            spacing: voxel size in mm along each spatial axis of the evaluated volumes; ``None`` is 1 mm.
            use_subvoxels: weight the boundary by surface-element areas (as the FLARE22 evaluation does).
            ignore_index: label value of left-out voxels; ``None`` for none.
            labelled_slices_only: labels scored only on the slices where the label has them.
            slice_axis: spatial axis of those slices.
            output_transform: callable to extract ``(y_pred, y)`` from ``engine.state.output``.
            save_details: whether to save the per-case, per-class values to ``engine.state.metric_details``.
        """
        names = _names(class_names, int(num_classes) - 1, "PerClassSurfaceDice")
        super().__init__(
            PerClassSurfaceDiceMetric(
                num_classes,
                tolerances,
                spacing,
                use_subvoxels,
                ignore_index,
                labelled_slices_only,
                slice_axis,
            ),
            names,
            output_transform,
            save_details,
        )
