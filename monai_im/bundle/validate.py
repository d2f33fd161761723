"""A bundle's settings, checked in its ``initialize`` before any work, one line per refusal.

Without these checks a bad value surfaces late and long: ``--epochs 0`` or an image size the network
cannot take after the data are cached (a traceback at the first training step), a datalist without
unlabeled images at the study's start (a 66-line traceback). Each check names the option as given on the
command line and what to do, as ``error: --<key> <value>: ...``, and ends the program (``SystemExit``
passes through MONAI's config parser unwrapped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from pydoc import locate
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from monai_im.methods.base import Method

__all__ = ["SETTING_RULES", "check_unlabeled", "refuse", "validate_settings"]


def _show(value: Any) -> str:
    """``value`` as it is written on the command line."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def refuse(key: str, value: Any, problem: str) -> NoReturn:
    """End the program with ``error: --<key> <value>: <problem>``.

    Raises:
        SystemExit: always.
    """
    raise SystemExit(f"error: --{key} {_show(value)}: {problem}")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _at_least(minimum: int, meaning: str) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if _whole(value) and value >= minimum:
            return None
        return f"{meaning}: pass a whole number, {minimum} or more"

    return rule


def _positive(meaning: str) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return None
        return f"{meaning}: pass a number above 0"

    return rule


def _fraction(meaning: str) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
            return None
        return f"{meaning}: pass a number from 0 to 1"

    return rule


#: The checks of single settings, by bundle key: each gives the problem with a value, or None.
SETTING_RULES: dict[str, Callable[[Any], str | None]] = {
    "epochs": _at_least(1, "every student trains at least one epoch"),
    "num_generations": _at_least(0, "the generations after the first (0: the first generation only)"),
    "num_students": _at_least(1, "each generation trains at least one student"),
    "num_teachers": _at_least(1, "the students that pseudo-label for the next generation"),
    "batch_size": _at_least(1, "images per training step"),
    "eval_batch_size": _at_least(1, "images per evaluation step"),
    "val_interval": _at_least(1, "epochs between validations"),
    "min_steps": _at_least(0, "the fewest training steps per student (0: no minimum)"),
    "num_workers": _at_least(0, "data loading processes (0: in the main process)"),
    "patches_per_volume": _at_least(1, "training patches drawn from each volume"),
    "sw_batch_size": _at_least(1, "sliding-window patches per step"),
    "learning_rate": _positive("the optimizer's step size"),
    "cache_rate": _fraction("the share of the data cached in memory"),
}


def _check_size(key: str, size: Any, spatial_dims: int | None, network: str | None) -> None:
    """The network input size: ``spatial_dims`` whole numbers, each a multiple of the network's divisor."""
    dims = spatial_dims if spatial_dims is not None else len(size) if isinstance(size, Sequence) else 0
    if (
        not isinstance(size, Sequence)
        or isinstance(size, str)
        or len(size) != dims
        or not all(map(_whole, size))
    ):
        refuse(key, size, f"a {dims}D network takes {dims} whole sizes, e.g. {_show([64] * max(dims, 1))}")
    if any(s < 1 for s in size):
        refuse(key, size, "every size must be 1 or more")
    cls = locate(network) if network else None
    divisor = getattr(cls, "divisor", None)
    if isinstance(divisor, int) and any(s % divisor for s in size):
        below = [max(divisor, s // divisor * divisor) for s in size]
        above = [-(-s // divisor) * divisor for s in size]
        name = getattr(cls, "__name__", network)
        options = _show(below) if below == above else f"{_show(below)} or {_show(above)}"
        refuse(key, size, f"{name} takes only multiples of {divisor} (its 2x poolings): try {options}")


def _inside(inner: str | os.PathLike, outer: str | os.PathLike) -> bool:
    a, b = Path(inner).expanduser().resolve(), Path(outer).expanduser().resolve()
    return a == b or b in a.parents


def validate_settings(
    method: Method | None = None,
    network: str | None = None,
    spatial_dims: int | None = None,
    **settings: Any,
) -> None:
    """Refuse, in one line, the first setting that cannot work, before any work is done.

    Called from a bundle's ``initialize`` with the settings it has, by their bundle keys, e.g.
    ``"$monai_im.bundle.validate_settings(method=@self_training_method, network=@network_def#_target_,
    spatial_dims=@spatial_dims, epochs=@epochs, image_size=@image_size, output_dir=@output_dir, ...)"``.
    A setting that is None (null: its default elsewhere) is not checked.

    Args:
        method: the built method; with it ``num_teachers`` must not exceed ``num_students`` when the method
            has generations (their teachers are students).
        network: the network class (``@network_def#_target_``); its ``divisor`` class attribute, when it has
            one, must divide every input size.
        spatial_dims: 2 or 3: the number of sizes in ``image_size`` / ``patch_size``.
        settings: the settings of :data:`SETTING_RULES`, ``image_size`` / ``patch_size`` (the network's input
            size), ``output_dir`` and ``dataset_dir`` (the study is not written inside the data folder).

    Raises:
        SystemExit: ``error: --<key> <value>: <what to do>``.
        TypeError: a setting this function does not know (a bundle's mistake, not the user's).
    """
    foreign = sorted(
        set(settings) - set(SETTING_RULES) - {"image_size", "patch_size", "output_dir", "dataset_dir"}
    )
    if foreign:
        raise TypeError(f"validate_settings knows no setting {', '.join(foreign)}")
    given = {k: v for k, v in settings.items() if v is not None}
    for key, value in given.items():
        problem = SETTING_RULES[key](value) if key in SETTING_RULES else None
        if problem:
            refuse(key, value, problem)
    students, teachers = given.get("num_students"), given.get("num_teachers")
    if method is not None and method.has_generations and students is not None and teachers is not None:
        if teachers > students:
            refuse(
                "num_teachers",
                teachers,
                f"the teachers are the best students of a generation, and there are --num_students {students}: "
                f"pass --num_teachers 1..{students} or more students",
            )
    for key in ("image_size", "patch_size"):
        if key in given:
            _check_size(key, given[key], spatial_dims, network)
    out, data = given.get("output_dir"), given.get("dataset_dir")
    if out is not None and data is not None and _inside(out, data):
        where = "is" if Path(out).resolve() == Path(data).resolve() else "lies inside"
        refuse(
            "output_dir",
            out,
            f"{where} the dataset folder (--dataset_dir {data}): the study would be written among the data; "
            "choose an output folder outside it",
        )


def check_unlabeled(
    method: Method, num_generations: int, datalist: Mapping[str, Any], dataset_dir: str | os.PathLike
) -> None:
    """Refuse a method that pseudo-labels unlabeled images when the datalist has none.

    Called in ``initialize`` right after the datalist is loaded (``@datalist``), before the study starts.

    Args:
        method: the built method.
        num_generations: the study's generations after the first; 0 pseudo-labels nothing.
        datalist: the loaded datalist.
        dataset_dir: the dataset folder, named in the message.

    Raises:
        SystemExit: ``error: --method <name> ...``.
    """
    if method.has_generations and num_generations > 0 and not datalist.get("unlabeled"):
        generations = f"generations 1..{num_generations}" if num_generations > 1 else "generation 1"
        refuse(
            "method",
            method.name,
            f"pseudo-labels unlabeled images in {generations}, but the datalist of "
            f"{dataset_dir} has no 'unlabeled' entries: add some (see docs/own_data.md), pass "
            "--num_generations 0, or choose a method without pseudo-labels (python -m monai_im.methods)",
        )
