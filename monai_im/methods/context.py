"""The typed contract between the study loop and its methods.

A method never sees the study: the loop hands it a :class:`GenerationContext` before a generation's
pseudo-labels are made and a :class:`StudentContext` for each student it trains; what a trained student
left behind is a :class:`StudentResult`. These records are all a method may rely on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # the method the context prepares; base.py imports this module
    from monai_im.methods.base import Method

__all__ = ["PseudoLabels", "GenerationContext", "StudentContext", "StudentResult"]


@dataclass
class StudentResult:
    """The outcome of one student, saved as ``result.json`` beside its checkpoint."""

    generation: int
    index: int
    best_metric: float
    best_epoch: int
    checkpoint: str
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudentResult:
        return cls(
            **{
                k: d[k]
                for k in ("generation", "index", "best_metric", "best_epoch", "checkpoint", "history")
                if k in d
            }
        )


@dataclass
class PseudoLabels:
    """Pseudo-labels of one batch.

    Attributes:
        label: (B, Cp, *spatial) pseudo-labels (0/1 masks, or class indices for multiclass).
        im: (B, 1, *spatial) Inconsistency Mask (1 = cut out), or None for methods without one.
        accepted: (B,) bool, which images are kept.
        score: (B,) float quality estimate of each pseudo-label in [0, 1] (EvalNet), or None. It is written
            into the pseudo-label datalist (``score``) where :meth:`Method.training_items` can use it.
        certainty: (B,) float agreement of the teachers on each image in [0, 1] (the IM methods'
            ``case_agreement`` rule), or None. It is written into the datalist (``certainty``) and its mean
            into the statistics.
    """

    label: torch.Tensor
    im: torch.Tensor | None
    accepted: torch.Tensor
    score: torch.Tensor | None = None
    certainty: torch.Tensor | None = None


@dataclass
class GenerationContext:
    """What a method may use to prepare a generation: the teachers, the data and how networks run.

    Attributes:
        generation: the generation being prepared (>= 1).
        teachers: the teacher networks (prepared, in eval mode), best first.
        teacher_results: their :class:`StudentResult` records, in the same order.
        datalist: the study's datalist (``labeled``, ``validation``, ``unlabeled``, ...).
        eval_transforms: dictionary transforms giving ``image`` and ``label`` of labeled items.
        device: where networks run.
        inferer: how a network is applied to a batch (None = a direct call).
        batch_size: images per forward pass.
        seed: a seed for anything random the method does in this generation.
        output_dir: a folder of the generation the method may write to (its own files only).
        progress: whether to show progress bars.
        run_settings: the speed policy (:class:`monai_im.engines.RunSettings`).
        method: the method being prepared (for its activation and thresholds).
    """

    generation: int
    teachers: Sequence[torch.nn.Module]
    teacher_results: Sequence[StudentResult]
    datalist: Mapping[str, Sequence[Mapping[str, Any]]]
    eval_transforms: Callable
    device: torch.device
    inferer: Callable | None
    batch_size: int
    seed: int
    output_dir: Any
    progress: bool = False
    run_settings: Any = None
    method: Method | None = None

    def labeled_batches(self, split: str = "labeled") -> Any:
        """A DataLoader over the ``split`` items (``image`` and ``label``) through ``eval_transforms``."""
        from monai.data import DataLoader, Dataset

        items = [dict(it) for it in self.datalist.get(split, [])]
        return DataLoader(Dataset(items, transform=self.eval_transforms), batch_size=self.batch_size)


@dataclass(frozen=True)
class StudentContext:
    """What a method may use to make the training step of one student (:meth:`Method.iteration`).

    Everything random in the step is derived from ``seed``; a method never reads the global random state.

    Attributes:
        generation: the student's generation (0 = labeled-only students).
        index: the student's index in its generation.
        seed: the student's seed (see :meth:`monai_im.selftrain.StudyProtocol.student_seed`).
        new_network: a factory of a new network of this generation's students, prepared for the device and
            randomly initialised from the global random state (seed it, e.g. inside
            :func:`torch.random.fork_rng`).
        unlabeled_loader: ``unlabeled_loader(seed)`` is a loader over the unlabeled images (``image``),
            shuffled by a generator seeded with ``seed``; the images are read once per study.
    """

    generation: int
    index: int
    seed: int
    new_network: Callable[[], torch.nn.Module]
    unlabeled_loader: Callable[[int], Any]
