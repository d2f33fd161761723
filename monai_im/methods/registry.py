"""The methods a bundle's ``method`` key selects, by name, and how one is built from bundle options.

A method's options are its constructor's arguments (following ``**kwargs`` to the classes they are passed
on to); their meaning is the ``Args:`` section of the class docstrings. ``python -m monai_im.methods`` lists
them.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any, NoReturn

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

__all__ = [
    "METHODS",
    "COMMON_OPTIONS",
    "build_method",
    "method_options",
    "method_summary",
    "option_defaults",
    "option_help",
]

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


#: Options every method is given (a bundle's ``task_mode`` and ``threshold``); a method that does not use
#: one is built without it, and they are never refused.
COMMON_OPTIONS: tuple[str, ...] = ("mode", "threshold")


def _signature_chain(cls: type[Method]) -> list[list[inspect.Parameter]]:
    """The named constructor parameters of ``cls`` and of the classes its ``**kwargs`` go to, one list per
    class, most derived class first."""
    chain = []
    for c in (c for c in cls.__mro__ if "__init__" in vars(c) and c is not object):
        params = inspect.signature(c.__init__).parameters
        skipped = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        chain.append([p for n, p in params.items() if n != "self" and p.kind not in skipped])
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return chain


def method_options(cls: type[Method]) -> set[str]:
    """The constructor arguments of ``cls``, following ``**kwargs`` to the classes it forwards them to."""
    return {p.name for params in _signature_chain(cls) for p in params}


def option_defaults(cls: type[Method]) -> dict[str, Any]:
    """The options of ``cls`` besides :data:`COMMON_OPTIONS` with their defaults, base-class options first."""
    chain = _signature_chain(cls)
    default = {}
    for p in (p for params in chain for p in params):  # the most derived class's default wins
        default.setdefault(p.name, None if p.default is p.empty else p.default)
    names = dict.fromkeys(
        p.name for params in reversed(chain) for p in params if p.name not in COMMON_OPTIONS
    )
    return {n: default[n] for n in names}


_ROLE = re.compile(r":\w+:`~?([^`]+)`")


def _plain(text: str) -> str:
    """``text`` without reStructuredText markup (roles become their target's last name)."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return " ".join(text.replace("``", "").split())


def _docstring_args(cls: type) -> dict[str, str]:
    """The entries of the ``Args:`` section of ``cls``'s own docstring (``a, b: text`` gives both names)."""
    lines = inspect.cleandoc(vars(cls).get("__doc__") or "").splitlines()
    if "Args:" not in lines:
        return {}
    entries: dict[str, str] = {}
    names: list[str] = []
    for line in lines[lines.index("Args:") + 1 :]:
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent < 4:
            break
        if indent == 4 and ":" in line:
            head, text = line.strip().split(":", 1)
            names = [n.strip() for n in head.split(",")]
            entries.update(dict.fromkeys(names, text.strip()))
        else:
            entries.update({n: f"{entries[n]} {line.strip()}" for n in names})
    return entries


def option_help(cls: type[Method]) -> dict[str, str]:
    """What each option of :func:`option_defaults` means, from the ``Args:`` sections along ``cls``'s MRO
    (an entry that only refers to another class, "see ...", gives way to that class's own entry)."""
    found: dict[str, list[str]] = {}
    for c in cls.__mro__:
        for name, text in _docstring_args(c).items():
            found.setdefault(name, []).append(text)
    meaning = {}
    for name in option_defaults(cls):
        texts = found.get(name, [""])
        meaning[name] = _plain(next((t for t in texts if not t.startswith("see ")), texts[0]))
    return meaning


def method_summary(cls: type[Method]) -> str:
    """The first paragraph of ``cls``'s own docstring, on one line, without markup."""
    return _plain(inspect.cleandoc(vars(cls).get("__doc__") or "").split("\n\n", 1)[0])


def _fail(message: str, exit_on_error: bool) -> NoReturn:
    if exit_on_error:
        raise SystemExit(f"error: {message}")
    raise ValueError(message)


def _check_defaults(defaults: Mapping[str, Any], exit_on_error: bool) -> None:
    known = set(COMMON_OPTIONS).union(*(method_options(c) for c in METHODS.values()))
    stray = sorted(set(defaults) - known)
    if stray:
        _fail(f"method defaults {', '.join(stray)}: no method takes such an option", exit_on_error)


def build_method(
    method: str, exit_on_error: bool = False, defaults: Mapping[str, Any] | None = None, **options: Any
) -> Method:
    """The method called ``method`` (a key of :data:`METHODS`), given the options it takes.

    Bundles pass every option key they define, null unless the user sets it; an option the method does
    not take is refused only when it is set (not None). ``defaults`` are a bundle's own values for its kind
    of data: each is given to the methods that take it and silently left out for the others.

    Args:
        method: the method's name.
        exit_on_error: an unknown method, an option the method does not take or a bad option value ends
            the program with a one-line message (``SystemExit``), as bundles want, instead of raising
            ``ValueError``.
        defaults: option values used where ``options`` leave them None, for the methods that take them.
        options: constructor arguments; None means the method's default (or the one in ``defaults``).
            :data:`COMMON_OPTIONS` are given to the methods that take them and never refused.

    Raises:
        ValueError: an unknown method (naming the known ones), an option the method does not take (naming
            the ones it takes), or a bad option value.
    """
    cls = METHODS.get(str(method))
    if cls is None:
        _fail(f"unknown method {method!r}; choose one of: {', '.join(sorted(METHODS))}", exit_on_error)
    _check_defaults(defaults or {}, exit_on_error)
    accepted = method_options(cls)
    given = {k: v for k, v in options.items() if v is not None}
    foreign = [k for k in given if k not in accepted and k not in COMMON_OPTIONS]
    if foreign:
        own = ", ".join(option_defaults(cls)) or "none"
        _fail(
            f"--method {method} takes no option {', '.join(foreign)}; its options: {own} "
            f"(python -m monai_im.methods {method} explains them)",
            exit_on_error,
        )
    kwargs = {k: v for k, v in (defaults or {}).items() if k in accepted and v is not None}
    kwargs.update({k: v for k, v in given.items() if k in accepted})
    try:
        return cls(**kwargs)
    except ValueError as e:
        if exit_on_error:
            raise SystemExit(f"error: --method {method}: {e}") from e
        raise
