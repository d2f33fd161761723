"""The self-training loop: the study, its students, checkpoints, pseudo-labelling, folder layout and events.

Imports :mod:`monai_im.methods` (the contract and the methods it runs), :mod:`monai_im.runtime` and
:mod:`monai_im.data`; never a handler, an application or a dataset generator.
"""

from __future__ import annotations

from monai_im.methods.context import StudentResult
from monai_im.selftrain.events import StudyEventRegistry, StudyEvents, replay_student
from monai_im.selftrain.layout import StudyLayout, StudyMismatchError, dataset_fingerprint, study_identity
from monai_im.selftrain.loaders import StudyLoaders
from monai_im.selftrain.pseudo_label import (
    FigureSample,
    PseudoLabeler,
    PseudoLabelResult,
    PseudoLabelSettings,
)
from monai_im.selftrain.settings import Evaluation, StudentTraining, StudyData, StudyProtocol
from monai_im.selftrain.student import (
    build_metrics,
    build_network,
    load_weights,
    make_evaluator,
    train_student,
)
from monai_im.selftrain.study import TEACHER_POOLS, SelfTrainingStudy

__all__ = [
    "SelfTrainingStudy",
    "TEACHER_POOLS",
    "StudyProtocol",
    "StudyData",
    "Evaluation",
    "StudentTraining",
    "StudyLoaders",
    "StudyEvents",
    "StudyEventRegistry",
    "replay_student",
    "StudyLayout",
    "StudyMismatchError",
    "dataset_fingerprint",
    "study_identity",
    "FigureSample",
    "PseudoLabeler",
    "PseudoLabelResult",
    "PseudoLabelSettings",
    "StudentResult",
    "build_metrics",
    "build_network",
    "load_weights",
    "make_evaluator",
    "train_student",
]
