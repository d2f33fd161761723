"""Self-training methods: small subclasses of :class:`Method` over the one study loop.

``--method NAME`` of a bundle picks one of :data:`METHODS` (see ``docs/methods.md``).
"""

from __future__ import annotations

from monai_im.methods.base import GenerationContext, Method, PseudoLabels, StudentContext
from monai_im.methods.consistency import ConsistencyLoss
from monai_im.methods.continuous import (
    ContinuousMethod,
    CrossPseudoSupervision,
    CrossPseudoSupervisionIM,
    FixMatch,
    FixMatchIM,
    MeanTeacher,
    MeanTeacherIM,
)
from monai_im.methods.evalnet import AIMPlusPlus, EvalNetFilter, IMPlusPlus, QualityScored, as_masks
from monai_im.methods.labeled import AugmentedFullData, AugmentedLabeled, FullData, LabeledOnly
from monai_im.methods.noisy import AIMPlus, IMPlus, NoisySchedule, NoisyStudent
from monai_im.methods.pseudo import (
    AugmentedInconsistencyMask,
    InconsistencyMask,
    InputEnsemble,
    ModelEnsemble,
    consensus,
)
from monai_im.methods.registry import METHODS, build_method, method_options

__all__ = [
    "Method",
    "GenerationContext",
    "StudentContext",
    "PseudoLabels",
    "LabeledOnly",
    "AugmentedLabeled",
    "FullData",
    "AugmentedFullData",
    "ModelEnsemble",
    "InputEnsemble",
    "InconsistencyMask",
    "AugmentedInconsistencyMask",
    "NoisySchedule",
    "NoisyStudent",
    "IMPlus",
    "AIMPlus",
    "QualityScored",
    "EvalNetFilter",
    "IMPlusPlus",
    "AIMPlusPlus",
    "ConsistencyLoss",
    "ContinuousMethod",
    "FixMatch",
    "FixMatchIM",
    "MeanTeacher",
    "MeanTeacherIM",
    "CrossPseudoSupervision",
    "CrossPseudoSupervisionIM",
    "consensus",
    "as_masks",
    "METHODS",
    "build_method",
    "method_options",
]
