"""Progress bars that behave on a terminal and in a log file.

:func:`progress_bar` is the one factory of every bar of the package. On a terminal it is a
plain :class:`tqdm.auto.tqdm`. When the stream is not a terminal (a cluster job, ``> log 2>&1``)
tqdm would write every update as a new carriage-return segment, thousands of them in a whole
study; there the bar is redrawn at most once a minute (``mininterval``/``maxinterval``), does not
change its width and keeps its final state on a line of its own, so a log gets a handful of
lines per bar.

The environment variable ``MONAI_IM_PROGRESS`` overrides the detection: ``0`` (or ``off``)
switches all bars off, ``1`` (or ``on``) draws them as on a terminal, ``auto`` (the default)
decides from the stream.

:class:`monai_im.handlers.EpochProgressBar` builds its per-epoch bars with it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["NON_TTY_INTERVAL", "PROGRESS_ENV", "progress_bar", "progress_mode"]

#: Environment variable forcing the bars: ``0``/``off``, ``1``/``on`` or ``auto``.
PROGRESS_ENV = "MONAI_IM_PROGRESS"
#: Seconds between two redraws of a bar on a stream that is not a terminal.
NON_TTY_INTERVAL = 60.0

#: tqdm.auto draws widgets in a notebook: those need no throttling
_IN_NOTEBOOK = any(cls.__name__ == "tqdm_notebook" for cls in tqdm.__mro__)

_MODES = {
    "0": "off",
    "off": "off",
    "false": "off",
    "no": "off",
    "1": "on",
    "on": "on",
    "true": "on",
    "yes": "on",
    "auto": "auto",
    "": "auto",
}


def progress_mode() -> str:
    """``"off"``, ``"on"`` or ``"auto"`` from the environment variable :data:`PROGRESS_ENV`.

    Raises:
        ValueError: the variable has a value other than ``0/1/on/off/true/false/yes/no/auto``.
    """
    value = os.environ.get(PROGRESS_ENV, "auto").strip().lower()
    if value not in _MODES:
        raise ValueError(
            f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r}: expected 0 (no bars), "
            f"1 (bars as on a terminal) or auto"
        )
    return _MODES[value]


def _is_tty(stream: IO[str] | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, **tqdm_kwargs: Any) -> tqdm:
    """A tqdm bar that is quiet in log files; the arguments are those of :class:`tqdm.tqdm`.

    On a terminal (or a notebook, or with ``MONAI_IM_PROGRESS=1``) the bar is exactly
    ``tqdm(iterable, **tqdm_kwargs)``. On any other stream (``file``, default ``sys.stderr``) it
    is redrawn at most every :data:`NON_TTY_INTERVAL` seconds (or the larger ``mininterval``
    given), with a fixed width, and ``leave=True`` so that its final state ends with a newline.
    With ``MONAI_IM_PROGRESS=0`` the bar is disabled; iterating over it still yields the items.

    Args:
        iterable: what to iterate over, or ``None`` for a bar driven by ``update``.
        tqdm_kwargs: passed on to tqdm (``total``, ``desc``, ``unit``, ``disable``, ``leave``, ...).
    """
    mode = progress_mode()
    if mode == "off":
        tqdm_kwargs["disable"] = True
    elif mode == "auto" and not tqdm_kwargs.get("disable", False):
        stream = tqdm_kwargs.get("file")
        in_notebook = stream is None and _IN_NOTEBOOK
        if not in_notebook and not _is_tty(sys.stderr if stream is None else stream):
            interval = max(float(tqdm_kwargs.get("mininterval") or 0.0), NON_TTY_INTERVAL)
            tqdm_kwargs["mininterval"] = interval
            tqdm_kwargs["maxinterval"] = max(float(tqdm_kwargs.get("maxinterval") or 0.0), interval)
            tqdm_kwargs["dynamic_ncols"] = False
            tqdm_kwargs["leave"] = True
    return tqdm(iterable, **tqdm_kwargs)
