"""Small helpers shared across the package."""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool"]

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
