"""The methods a bundle's ``method`` key selects, by name, and how one is built from bundle options."""

from __future__ import annotations

import inspect
from typing import Any

from monai_im.methods.base import Method
from monai_im.methods.consistency import ConsistencyLoss
from monai_im.methods.continuous import (
    CrossPseudoSupervision,
    CrossPseudoSupervisionIM,
    FixMatch,
    FixMatchIM,
    MeanTeacher,
    MeanTeacherIM,
)
from monai_im.methods.evalnet import AIMPlusPlus, EvalNetFilter, IMPlusPlus
from monai_im.methods.labeled import AugmentedFullData, AugmentedLabeled, FullData, LabeledOnly
from monai_im.methods.noisy import AIMPlus, IMPlus, NoisyStudent
from monai_im.methods.pseudo import (
    AugmentedInconsistencyMask,
    InconsistencyMask,
    InputEnsemble,
    ModelEnsemble,
)

__all__ = ["METHODS", "build_method", "method_options"]

#: Every method, by the name ``--method`` takes.
METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        LabeledOnly,
        AugmentedLabeled,
        FullData,
        AugmentedFullData,
        ModelEnsemble,
        InputEnsemble,
        ConsistencyLoss,
        NoisyStudent,
        EvalNetFilter,
        InconsistencyMask,
        AugmentedInconsistencyMask,
        IMPlus,
        AIMPlus,
        IMPlusPlus,
        AIMPlusPlus,
        FixMatch,
        FixMatchIM,
        MeanTeacher,
        MeanTeacherIM,
        CrossPseudoSupervision,
        CrossPseudoSupervisionIM,
    )
}


def method_options(cls: type[Method]) -> set[str]:
    """The constructor arguments of ``cls``, following ``**kwargs`` to the classes it forwards them to."""
    accepted: set[str] = set()
    for c in (c for c in cls.__mro__ if "__init__" in vars(c) and c is not object):
        params = inspect.signature(c.__init__).parameters
        accepted |= {
            n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return accepted


def build_method(method: str, exit_on_error: bool = False, **options: Any) -> Method:
    """The method called ``method`` (a key of :data:`METHODS`), given the options it takes.

    Bundles pass every option they define (``mode``, ``threshold``, ``copies``, ``dilation``, ...); each
    method takes those its constructor names, so that one JSON block serves every method.

    Args:
        method: the method's name.
        exit_on_error: an unknown method or a bad option value ends the program with a one-line message
            (``SystemExit``), as bundles want, instead of raising ``ValueError``.
        options: constructor arguments; those the method does not take are ignored.

    Raises:
        ValueError: an unknown method (naming the known ones) or a bad option value.
    """
    cls = METHODS.get(str(method))
    if cls is None:
        message = f"unknown method {method!r}; choose one of: {', '.join(sorted(METHODS))}"
        if exit_on_error:
            raise SystemExit(f"error: {message}")
        raise ValueError(message)
    try:
        accepted = method_options(cls)
        return cls(**{k: v for k, v in options.items() if k in accepted})
    except ValueError as e:
        if exit_on_error:
            raise SystemExit(f"error: --method {method}: {e}") from e
        raise
