"""The self-training workflow: student training, ranking, pseudo-labelling and method strategies."""

from __future__ import annotations

from monai_im.engines.acceleration import PRECISIONS, RunSettings, cpu_supports_bf16
from monai_im.engines.inferers import AdaptiveInferer, ensemble_predict
from monai_im.engines.layout import StudyLayout, StudyMismatchError, dataset_fingerprint, study_identity
from monai_im.engines.pseudo_label import FigureSample, PseudoLabeler, PseudoLabelResult
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
from monai_im.engines.study import OBSERVER_HOOKS, SelfTrainingStudy

__all__ = [
    "PRECISIONS",
    "RunSettings",
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
    "OBSERVER_HOOKS",
    "StudyLayout",
    "StudyMismatchError",
    "dataset_fingerprint",
    "study_identity",
]
