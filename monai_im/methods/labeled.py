"""Methods without pseudo-labels: labeled-only (LDT), augmented (ALDT), full data (FDT, AFDT)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai_im.methods.base import Method

__all__ = ["LabeledOnly", "AugmentedLabeled", "FullData", "AugmentedFullData", "augmented_copies"]


def augmented_copies(items: Sequence[Mapping[str, Any]], copies: int) -> list[dict[str, Any]]:
    """Every item ``copies + 1`` times (each appearance becomes a fresh random view online)."""
    return [dict(it) for it in items for _ in range(copies + 1)]


def _paper_augmentation(augmentation: Callable | None) -> Callable:
    if augmentation is not None:
        return augmentation
    from monai_im.transforms.presets import paper_augmentation

    return paper_augmentation()


def _check_copies(copies: int) -> int:
    if int(copies) < 0:
        raise ValueError(f"augmented_copies must be >= 0, got {copies}")
    return int(copies)


class LabeledOnly(Method):
    """LDT: students see the labeled images only; no generations after the first."""

    name = "ldt"


class AugmentedLabeled(Method):
    """ALDT: the labeled images plus ``augmented_copies`` augmented views of each; no pseudo-labels.

    Every labeled entry appears ``augmented_copies + 1`` times in an epoch and each appearance is a fresh
    random view through ``augmentation`` (default :func:`monai_im.transforms.paper_augmentation`:
    flips, 90-degree rotations, brightness/contrast, blur, noise).

    Args:
        mode: "binary", "multiclass" or "multilabel".
        augmented_copies: augmented views per labeled image besides the image itself (the paper: 9).
        augmentation: random dictionary transforms for ``image`` and ``label``.
    """

    name = "aldt"

    def __init__(
        self, mode: str = "binary", augmented_copies: int = 9, augmentation: Callable | None = None
    ) -> None:
        super().__init__(mode=mode)
        self.copies = _check_copies(augmented_copies)
        self.default_augmentation = _paper_augmentation(augmentation)

    def training_items(self, datalist, pseudo_items, generation=0):  # noqa: D102
        return augmented_copies(datalist["labeled"], self.copies)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "augmented_copies": self.copies}


class FullData(Method):
    """FDT: the upper reference; students see every training label (labeled + unlabeled with labels)."""

    name = "fdt"

    def training_items(self, datalist, pseudo_items, generation=0):  # noqa: D102
        missing = [it["image"] for it in datalist.get("unlabeled", []) if "label" not in it]
        if missing:
            raise ValueError(
                f"full-data training needs labels for every unlabeled image; {len(missing)} have none, "
                f"e.g. {missing[0]}"
            )
        items = list(datalist["labeled"]) + list(datalist.get("unlabeled", []))
        return [{k: v for k, v in it.items() if k in ("image", "label")} for it in items]


class AugmentedFullData(FullData):
    """AFDT: full-data training with ``augmented_copies`` augmented views of every image (the paper's best
    reference).

    Args:
        mode: "binary", "multiclass" or "multilabel".
        augmented_copies: augmented views per image besides the image itself (the paper: 9, as ALDT).
        augmentation: random dictionary transforms (default :func:`monai_im.transforms.paper_augmentation`).
    """

    name = "afdt"

    def __init__(
        self, mode: str = "binary", augmented_copies: int = 9, augmentation: Callable | None = None
    ) -> None:
        super().__init__(mode=mode)
        self.copies = _check_copies(augmented_copies)
        self.default_augmentation = _paper_augmentation(augmentation)

    def training_items(self, datalist, pseudo_items, generation=0):  # noqa: D102
        return augmented_copies(super().training_items(datalist, pseudo_items, generation), self.copies)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "augmented_copies": self.copies}
