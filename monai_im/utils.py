"""Small helpers shared across the package."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["as_bool", "find_on_stack"]

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "none", ""}


def as_bool(value: Any, name: str = "value") -> bool:
    """``value`` as a bool, also from the strings a command line gives (``--overwrite false``).

    ``python -m monai.bundle run --flag false`` passes the *string* ``'false'``, which Python would
    take as true; an option such as ``overwrite`` must never read it that way.

    Raises:
        ValueError: a value that is neither a bool, 0/1, nor one of true/false/yes/no/on/off.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def find_on_stack(pick: Callable[[Any], T | None]) -> T | None:
    """The first non-None ``pick(value)`` over the local variables of the callers, innermost first.

    Bundle code uses it to find the running ``monai.bundle`` workflow or its config parser, which
    MONAI does not hand to the components it builds.
    """
    frame = inspect.currentframe()
    try:
        frame = frame.f_back if frame is not None else None
        while frame is not None:
            for value in list(frame.f_locals.values()):
                found = pick(value)
                if found is not None:
                    return found
            frame = frame.f_back
    finally:
        del frame
    return None
