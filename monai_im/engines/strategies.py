"""Pseudo-labelling strategies: the one place where the methods of a study differ.

The self-training workflow (:class:`monai_im.engines.SelfTrainingStudy`) is the same for
every method: students are trained, ranked, the top ones become teachers, the teachers
predict the unlabeled images, and new students are trained. A strategy decides

- which items the students of a generation train on (:meth:`PseudoLabelStrategy.training_items`),
- whether pseudo-labels are made at all (:attr:`PseudoLabelStrategy.makes_pseudo_labels`),
- and how the stacked teacher probabilities become pseudo-labels (:meth:`PseudoLabelStrategy.__call__`).

Methods of IM_METHOD section 4 (Noisy Student, EvalNet filtering, ...) are added as
further subclasses that override these hooks, not as copies of the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from monai_im.constants import IM_MODES
from monai_im.transforms import accept_pseudo_labels, inconsistency_mask

__all__ = [
    "PseudoLabels",
    "PseudoLabelStrategy",
    "LabeledOnlyStrategy",
    "FullDataStrategy",
    "AugmentedLabeledStrategy",
    "InconsistencyMaskStrategy",
    "ModelEnsembleStrategy",
    "STRATEGIES",
    "build_strategy",
]


@dataclass
class PseudoLabels:
    """Pseudo-labels of one batch.

    Attributes:
        label: (B, Cp, *spatial) pseudo-labels (0/1 masks, or class indices for multiclass).
        im: (B, 1, *spatial) Inconsistency Mask (1 = cut out), or None for strategies without one.
        accepted: (B,) bool, which images are kept.
    """

    label: torch.Tensor
    im: torch.Tensor | None
    accepted: torch.Tensor


class PseudoLabelStrategy:
    """Base class: labeled-only training, no pseudo-labels.

    Args:
        mode: "binary", "multiclass" or "multilabel"; decides the activation (sigmoid or softmax).
        threshold: probability above which a pixel is foreground (binary and multilabel).
    """

    name: str = "base"
    makes_pseudo_labels: bool = False
    #: random transforms appended to the study's training transforms (None: no online augmentation)
    augmentation: Callable | None = None

    def __init__(self, mode: str = "binary", threshold: float = 0.5) -> None:
        if mode not in IM_MODES:
            raise ValueError(f"mode must be one of {IM_MODES}, got {mode!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.mode = mode
        self.threshold = threshold

    def activation(self, logits: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Turn network logits into probabilities (softmax over ``channel_dim`` for multiclass)."""
        if self.mode == "multiclass":
            return torch.softmax(logits.float(), dim=channel_dim)
        return torch.sigmoid(logits.float())

    def training_items(
        self, datalist: Mapping[str, Sequence[Mapping[str, Any]]], pseudo_items: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """The items the students of a generation train on."""
        return [dict(it) for it in datalist["labeled"]] + [dict(it) for it in pseudo_items]

    def __call__(self, probs: torch.Tensor) -> PseudoLabels:
        """Make pseudo-labels from stacked teacher probabilities of shape (E, B, C, *spatial)."""
        raise NotImplementedError(f"{type(self).__name__} makes no pseudo-labels")

    def describe(self) -> dict[str, Any]:
        """Parameters of the strategy, for tracking."""
        return {"method": self.name, "mode": self.mode, "threshold": self.threshold}


class LabeledOnlyStrategy(PseudoLabelStrategy):
    """LDT: students see the labeled images only; no generations after the first."""

    name = "ldt"


class FullDataStrategy(PseudoLabelStrategy):
    """FDT: the upper reference; students see every training label (labeled + unlabeled with labels)."""

    name = "fdt"

    def training_items(self, datalist, pseudo_items):  # noqa: D102
        missing = [it["image"] for it in datalist.get("unlabeled", []) if "label" not in it]
        if missing:
            raise ValueError(
                f"full-data training needs labels for every unlabeled image; {len(missing)} have none, "
                f"e.g. {missing[0]}"
            )
        items = list(datalist["labeled"]) + list(datalist.get("unlabeled", []))
        return [{k: v for k, v in it.items() if k in ("image", "label")} for it in items]


class AugmentedLabeledStrategy(PseudoLabelStrategy):
    """ALDT: the labeled images plus ``copies`` augmented views of each; no pseudo-labels.

    Every labeled entry appears ``copies + 1`` times in an epoch and each appearance is a fresh
    random view through ``augmentation`` (default :func:`monai_im.transforms.paper_augmentation`:
    flips, 90-degree rotations, brightness/contrast, blur, noise).

    Args:
        mode: "binary", "multiclass" or "multilabel".
        copies: augmented views per labeled image besides the image itself (the paper: 9).
        augmentation: random dictionary transforms for ``image`` and ``label``.
    """

    name = "aldt"

    def __init__(self, mode: str = "binary", copies: int = 9, augmentation: Callable | None = None) -> None:
        super().__init__(mode=mode)
        if copies < 0:
            raise ValueError(f"copies must be >= 0, got {copies}")
        self.copies = copies
        if augmentation is None:
            from monai_im.transforms.presets import paper_augmentation

            augmentation = paper_augmentation()
        self.augmentation = augmentation

    def training_items(self, datalist, pseudo_items):  # noqa: D102
        return [dict(it) for it in datalist["labeled"] for _ in range(self.copies + 1)]

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "augmented_copies": self.copies}


class InconsistencyMaskStrategy(PseudoLabelStrategy):
    """IM: keep what all teachers agree on, cut the disagreement out of image and pseudo-label.

    Args:
        mode: "binary", "multiclass" or "multilabel" (IM_METHOD section 1).
        threshold: foreground threshold of each teacher (binary, multilabel).
        dilation: kernel size of an optional IM dilation (0 = none, as in the paper).
        min_foreground: an image is kept only with at least this many agreed foreground pixels.
        foreground_exceeds_im: the paper's rule: keep only if the agreed foreground is larger than the IM.
        max_im_fraction: also reject images whose IM covers more than this fraction.
    """

    name = "im"
    makes_pseudo_labels = True

    def __init__(
        self,
        mode: str = "binary",
        threshold: float = 0.5,
        dilation: int = 0,
        min_foreground: int = 1,
        foreground_exceeds_im: bool = True,
        max_im_fraction: float | None = None,
    ) -> None:
        super().__init__(mode=mode, threshold=threshold)
        self.dilation = dilation
        self.min_foreground = min_foreground
        self.foreground_exceeds_im = foreground_exceeds_im
        self.max_im_fraction = max_im_fraction

    def __call__(self, probs: torch.Tensor) -> PseudoLabels:
        label, im = inconsistency_mask(
            probs, mode=self.mode, threshold=self.threshold, dilation=self.dilation
        )
        accepted = accept_pseudo_labels(
            label,
            im,
            mode=self.mode,
            min_foreground=self.min_foreground,
            foreground_exceeds_im=self.foreground_exceeds_im,
            max_im_fraction=self.max_im_fraction,
        )
        return PseudoLabels(label=label, im=im, accepted=accepted)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().describe(),
            "im_dilation": self.dilation,
            "min_foreground": self.min_foreground,
            "foreground_exceeds_im": self.foreground_exceeds_im,
            "max_im_fraction": self.max_im_fraction,
        }


class AugmentedInconsistencyMaskStrategy(InconsistencyMaskStrategy):
    """AIM: Inconsistency Masks on augmented training pairs, starting from ALDT teachers.

    The augmented variant of IM (the paper's AIM+ without the widening students): generation 0 is
    ALDT (each labeled image plus ``copies`` augmented views), and every later generation trains on
    the labeled images and the IM pseudo-labeled pairs, every item through ``augmentation`` (fresh
    random views each epoch; an IM pair is flipped and rotated together with its pseudo-label).
    A generation whose teachers have no accepted pseudo-label falls back to the generation-0 set.

    Args:
        copies: augmented views per labeled image besides the image itself in generation 0.
        augmentation: random dictionary transforms for ``image`` and ``label`` (default
            :func:`monai_im.transforms.paper_augmentation`).
        kwargs: the options of :class:`InconsistencyMaskStrategy`.
    """

    name = "aim"

    def __init__(
        self, mode: str = "binary", copies: int = 9, augmentation: Callable | None = None, **kwargs
    ) -> None:
        super().__init__(mode=mode, **kwargs)
        self._aldt = AugmentedLabeledStrategy(mode=mode, copies=copies, augmentation=augmentation)
        self.copies = copies
        self.augmentation = self._aldt.augmentation

    def training_items(self, datalist, pseudo_items):  # noqa: D102
        if not pseudo_items:
            return self._aldt.training_items(datalist, pseudo_items)
        return super().training_items(datalist, pseudo_items)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "augmented_copies": self.copies}


class ModelEnsembleStrategy(PseudoLabelStrategy):
    """Model Ensemble: pseudo-labels from the teachers' consensus, nothing cut out.

    Binary: foreground where all teachers agree (IM_METHOD section 4); multiclass: argmax of the
    mean softmax; multilabel: mean probability above the threshold. Images with no foreground
    are dropped.
    """

    name = "model_ensemble"
    makes_pseudo_labels = True

    def __call__(self, probs: torch.Tensor) -> PseudoLabels:
        if self.mode == "binary":
            label = (probs > self.threshold).all(dim=0).to(probs.dtype)
        elif self.mode == "multiclass":
            label = probs.mean(dim=0).argmax(dim=1, keepdim=True).to(probs.dtype)
        else:
            label = (probs.mean(dim=0) > self.threshold).to(probs.dtype)
        accepted = label.flatten(1).gt(0).any(dim=1)
        return PseudoLabels(label=label, im=None, accepted=accepted)


#: The methods a bundle's ``method`` selects, by name.
STRATEGIES: dict[str, type[PseudoLabelStrategy]] = {
    cls.name: cls
    for cls in (
        LabeledOnlyStrategy,
        AugmentedLabeledStrategy,
        FullDataStrategy,
        ModelEnsembleStrategy,
        InconsistencyMaskStrategy,
        AugmentedInconsistencyMaskStrategy,
    )
}


def build_strategy(method: str, exit_on_error: bool = False, **options: Any) -> PseudoLabelStrategy:
    """The strategy of ``method`` (a key of :data:`STRATEGIES`), given the options it takes.

    Bundles pass every option they define (``mode``, ``threshold``, ``dilation``, ...); each strategy
    takes those its constructor names, so that one JSON block serves every method.

    Args:
        method: the method's name.
        exit_on_error: an unknown method ends the program with a one-line message (``SystemExit``), as
            bundles want, instead of raising ``ValueError``.
        options: constructor arguments; those the strategy does not take are ignored.

    Raises:
        ValueError: an unknown method, naming the known ones.
    """
    import inspect

    cls = STRATEGIES.get(str(method))
    if cls is None:
        message = f"unknown method {method!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        if exit_on_error:
            raise SystemExit(f"error: {message}")
        raise ValueError(message)
    # a constructor that forwards **kwargs to its base takes the base's arguments too
    accepted: set[str] = set()
    for c in (c for c in cls.__mro__ if "__init__" in vars(c) and c is not object):
        params = inspect.signature(c.__init__).parameters
        accepted |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return cls(**{k: v for k, v in options.items() if k in accepted})
