"""The former name of :mod:`monai_im.engines.methods` (bundles of version 0.3.0 and older call it).

Every class here is the method of the same meaning; new code uses :mod:`monai_im.engines.methods`.
"""

from __future__ import annotations

from monai_im.engines.methods import (
    METHODS,
    AugmentedInconsistencyMask,
    AugmentedLabeled,
    FullData,
    InconsistencyMask,
    LabeledOnly,
    Method,
    ModelEnsemble,
    PseudoLabels,
    build_method,
)

__all__ = [
    "PseudoLabels",
    "PseudoLabelStrategy",
    "LabeledOnlyStrategy",
    "FullDataStrategy",
    "AugmentedLabeledStrategy",
    "InconsistencyMaskStrategy",
    "AugmentedInconsistencyMaskStrategy",
    "ModelEnsembleStrategy",
    "STRATEGIES",
    "build_strategy",
]

PseudoLabelStrategy = Method
LabeledOnlyStrategy = LabeledOnly
FullDataStrategy = FullData
AugmentedLabeledStrategy = AugmentedLabeled
InconsistencyMaskStrategy = InconsistencyMask
AugmentedInconsistencyMaskStrategy = AugmentedInconsistencyMask
ModelEnsembleStrategy = ModelEnsemble
STRATEGIES = METHODS
build_strategy = build_method
