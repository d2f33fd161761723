"""The method interface: the hooks by which self-training methods differ over the one study loop.

:class:`monai_im.selftrain.SelfTrainingStudy` runs every method the same way: students are trained,
ranked, teachers chosen, the unlabeled set pseudo-labelled, new students trained. A :class:`Method`
answers, for each generation, the questions in which methods differ; each hook has a default that
is plain labeled-only training, and a method is a small subclass overriding one or two hooks
(the way nnU-Net's trainer variants override one step of one trainer):

==============================  ===============================================================
hook                            used by
==============================  ===============================================================
:meth:`teacher_count`           Noisy Student, Input Ensemble (one teacher)
:meth:`prepare_generation`      EvalNet, IM++ (train a quality estimator with the teachers)
:meth:`predict`                 Input Ensemble (one teacher on several views of the input)
:meth:`__call__`                every pseudo-labelling method: teacher probabilities -> labels
:meth:`training_items`          ALDT/AIM (augmented copies), FDT (all labels), IM++ (replication)
:meth:`augmentation`            ALDT, AIM, Noisy Student (noise growing per generation)
:meth:`student_network`         Noisy Student (wider students every generation)
:meth:`initial_weights`         Consistency Loss (starts from the best model so far)
:meth:`iteration`               Consistency Loss, and continuous methods (their own training step)
:meth:`finetune_items`          the IM methods' ``finetune_epochs`` (a labeled-only second phase)
==============================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from monai_im.constants import IM_MODES
from monai_im.methods.context import GenerationContext, PseudoLabels, StudentContext, StudentResult

__all__ = ["PseudoLabels", "GenerationContext", "StudentContext", "Method"]


class Method:
    """Base class of all methods: labeled-only training, no pseudo-labels, no later generations.

    Args:
        mode: "binary", "multiclass" or "multilabel"; decides the activation (sigmoid or softmax).
        threshold: probability above which a pixel is foreground (binary and multilabel).
    """

    name: str = "base"
    #: whether teachers pseudo-label the unlabeled set in generations >= 1
    makes_pseudo_labels: bool = False
    #: whether generations >= 1 run at all (True for every method with pseudo-labels)
    runs_generations: bool | None = None
    #: random transforms appended to the training transforms in every generation (None: none)
    default_augmentation: Callable | None = None
    #: epochs of the second training phase of a student on :meth:`finetune_items` (0: none)
    finetune_epochs: int = 0
    #: the fewest teachers (:meth:`teacher_count`) whose pseudo-labels mean anything: an Inconsistency Mask
    #: is where teachers disagree, and one teacher agrees with itself everywhere
    min_teachers: int = 1

    def __init__(self, mode: str = "binary", threshold: float = 0.5) -> None:
        if mode not in IM_MODES:
            raise ValueError(f"mode must be one of {IM_MODES}, got {mode!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.mode = mode
        self.threshold = threshold

    # ------------------------------------------------------------------ generations and teachers
    @property
    def has_generations(self) -> bool:
        """Whether generations after the first run (default: when the method makes pseudo-labels)."""
        return self.makes_pseudo_labels if self.runs_generations is None else bool(self.runs_generations)

    @property
    def augmentation(self) -> Callable | None:
        """The augmentation of generation 0 (kept for callers of the former strategy attribute)."""
        return self.augmentation_for(0)

    def teacher_count(self, num_teachers: int) -> int:
        """How many teachers the method uses, given the study's ``num_teachers``."""
        return num_teachers

    def prepare_generation(self, context: GenerationContext) -> dict[str, float]:
        """Called with the teachers before a generation's pseudo-labels are made; returns statistics
        (logged with the pseudo-label statistics). Default: nothing to prepare."""
        return {}

    # ------------------------------------------------------------------ pseudo-labels
    def activation(self, logits: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Turn network logits into probabilities (softmax over ``channel_dim`` for multiclass)."""
        if self.mode == "multiclass":
            return torch.softmax(logits.float(), dim=channel_dim)
        return torch.sigmoid(logits.float())

    def predict(
        self, teachers: Sequence[torch.nn.Module], images: torch.Tensor, inferer: Callable | None = None
    ) -> torch.Tensor:
        """Stacked teacher logits (E, B, C, *spatial) of a batch: one call per teacher on the whole batch."""
        from monai_im.runtime.inferers import ensemble_predict

        return ensemble_predict(teachers, images, inferer)

    def __call__(self, probs: torch.Tensor, images: torch.Tensor | None = None) -> PseudoLabels:
        """Make pseudo-labels from stacked probabilities (E, B, C, *spatial) of the batch ``images``."""
        raise NotImplementedError(f"{type(self).__name__} makes no pseudo-labels")

    # ------------------------------------------------------------------ students
    def training_items(
        self,
        datalist: Mapping[str, Sequence[Mapping[str, Any]]],
        pseudo_items: Sequence[Mapping[str, Any]],
        generation: int = 0,
    ) -> list[dict[str, Any]]:
        """The items the students of ``generation`` train on (an item may appear several times)."""
        return [dict(it) for it in datalist["labeled"]] + [dict(it) for it in pseudo_items]

    def augmentation_for(self, generation: int) -> Callable | None:
        """Random dictionary transforms (``image``, ``label``, ``im``) for the students of ``generation``."""
        return self.default_augmentation

    def student_network(self, generation: int, template: Any) -> Any:
        """The network (a template module or a factory) of the students of ``generation``."""
        return template

    def initial_weights(self, generation: int, teachers: Sequence[StudentResult]) -> StudentResult | None:
        """A checkpoint the students of ``generation`` start from (None: random initialisation)."""
        return None

    def iteration(self, context: StudentContext) -> Callable | None:
        """A custom training step for MONAI's ``SupervisedTrainer`` (``iteration_update``) of the student
        described by ``context``, or None for the standard supervised step. Everything random in the step
        is seeded from ``context.seed``."""
        return None

    def finetune_items(
        self, generation: int, datalist: Mapping[str, Sequence[Mapping[str, Any]]]
    ) -> list[dict[str, Any]] | None:
        """The items a student of ``generation`` trains on for :attr:`finetune_epochs` more epochs after its
        normal training, starting from its best weights (the best of both phases is kept); None: no second
        phase (the default)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Parameters of the method, for tracking and ``study.json``."""
        return {"method": self.name, "mode": self.mode, "threshold": self.threshold}
