"""The self-training workflow: student training, ranking, pseudo-labelling, and the methods plugged into it."""

from __future__ import annotations

from monai_im.engines.acceleration import PRECISIONS, RunSettings, cpu_supports_bf16, reuse_freed_cpu_memory
from monai_im.engines.concurrency import run_concurrently, student_dataset
from monai_im.engines.distributed import DistributedContext, replay_student
from monai_im.engines.events import StudyEventRegistry, StudyEvents
from monai_im.engines.inferers import AdaptiveInferer, ensemble_predict
from monai_im.engines.layout import StudyLayout, StudyMismatchError, dataset_fingerprint, study_identity
from monai_im.engines.methods import METHODS, GenerationContext, Method, build_method
from monai_im.engines.pseudo_label import FigureSample, PseudoLabeler, PseudoLabelResult
from monai_im.engines.quality import QualityEstimator, QualityReport, mask_iou
from monai_im.engines.strategies import (
    AugmentedInconsistencyMaskStrategy,
    AugmentedLabeledStrategy,
    FullDataStrategy,
    InconsistencyMaskStrategy,
    LabeledOnlyStrategy,
    ModelEnsembleStrategy,
    PseudoLabels,
    PseudoLabelStrategy,
)
from monai_im.engines.student import (
    StudentResult,
    build_metrics,
    build_network,
    load_weights,
    make_evaluator,
    train_student,
)
from monai_im.engines.study import TEACHER_POOLS, SelfTrainingStudy
from monai_im.engines.suggest import SCORES, Suggester, SuggestionError, disagreement_scores

__all__ = [
    "DistributedContext",
    "replay_student",
    "PRECISIONS",
    "RunSettings",
    "reuse_freed_cpu_memory",
    "cpu_supports_bf16",
    "AdaptiveInferer",
    "ensemble_predict",
    "FigureSample",
    "PseudoLabeler",
    "PseudoLabelResult",
    "PseudoLabels",
    "PseudoLabelStrategy",
    "LabeledOnlyStrategy",
    "FullDataStrategy",
    "AugmentedLabeledStrategy",
    "InconsistencyMaskStrategy",
    "AugmentedInconsistencyMaskStrategy",
    "ModelEnsembleStrategy",
    "StudentResult",
    "build_metrics",
    "build_network",
    "load_weights",
    "make_evaluator",
    "train_student",
    "SelfTrainingStudy",
    "TEACHER_POOLS",
    "StudyEvents",
    "StudyEventRegistry",
    "run_concurrently",
    "student_dataset",
    "Method",
    "GenerationContext",
    "METHODS",
    "build_method",
    "QualityEstimator",
    "QualityReport",
    "mask_iou",
    "SCORES",
    "Suggester",
    "SuggestionError",
    "disagreement_scores",
    "StudyLayout",
    "StudyMismatchError",
    "dataset_fingerprint",
    "study_identity",
]
