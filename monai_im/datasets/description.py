"""What a dataset folder says about itself: the name a study logs and the names of its classes.

A dataset folder may hold a ``dataset.json`` next to its ``datalist.json`` (the preparation scripts and
the synthetic generators write one; so does the Medical Segmentation Decathlon format) with a ``name``
and ``labels``, e.g. ``{"name": "my CT", "labels": {"0": "background", "1": "tumour", "2": "cyst"}}``.
A bundle's documented name and class names describe its documented data folder only: for the user's
own data the folder's description is used, and generic names where it has none, so that a study of
other data is never logged under the bundle's dataset or organ names.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_im.datasets.flare_anatomy import FLARE22_LABELS
from monai_im.io import load_json
from monai_im.metrics.volume_functional import FLARE22_ORGANS

__all__ = ["DESCRIPTION_FILE", "dataset_class_names", "dataset_label", "read_description"]

logger = logging.getLogger("monai_im")

DESCRIPTION_FILE = "dataset.json"
#: Class names of descriptions that have a shorter name in the metric keys (FLARE22's, so that FLARE22
#: data prepared here keep the keys ``dice_ivc``, ``dice_right_adrenal``, ...).
_METRIC_ALIASES = dict(zip(FLARE22_LABELS, FLARE22_ORGANS))


def read_description(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """``<dataset_dir>/dataset.json``; ``{}`` when there is none, or (with a warning) when it is not a JSON object.

    Args:
        dataset_dir: the dataset folder.
    """
    path = Path(dataset_dir).expanduser() / DESCRIPTION_FILE
    if not path.is_file():
        return {}
    try:
        description = load_json(path)
    except (OSError, ValueError) as e:
        logger.warning(f"{path} is not read ({e}); the dataset's name and class names are not taken from it")
        return {}
    if not isinstance(description, Mapping):
        logger.warning(
            f"{path} is not a JSON object; the dataset's name and class names are not taken from it"
        )
        return {}
    return dict(description)


def _is_folder(path: str | os.PathLike, folder: str | os.PathLike | None) -> bool:
    if folder is None:
        return False
    return Path(path).expanduser().resolve() == Path(folder).expanduser().resolve()


def dataset_label(
    dataset_dir: str | os.PathLike,
    name: str | None = None,
    default_dir: str | os.PathLike | None = None,
    default_name: str | None = None,
) -> str:
    """The dataset's name as a study logs it (the ``dataset`` parameter, the MLflow dataset's name).

    The first of: ``name`` when given (``--dataset_name``); ``default_name`` when ``dataset_dir`` is the
    bundle's documented data folder ``default_dir``; the ``name`` in the folder's ``dataset.json``; the
    folder's own name.

    Args:
        dataset_dir: the dataset folder.
        name: the name the user chose, if any.
        default_dir: the bundle's documented data folder (relative paths are resolved from the current folder).
        default_name: the name of the dataset documented to be in ``default_dir``.
    """
    if name:
        return str(name)
    if default_name and _is_folder(dataset_dir, default_dir):
        return str(default_name)
    described = read_description(dataset_dir).get("name")
    if isinstance(described, str) and described.strip():
        return described.strip()
    return Path(dataset_dir).expanduser().resolve().name


def _metric_name(label: Any) -> str:
    """A class name as a metric key part: lower case, runs of other characters than letters and digits as ``_``."""
    name = re.sub(r"[^0-9a-z]+", "_", str(label).strip().lower()).strip("_")
    return _METRIC_ALIASES.get(name, name)


def _described_classes(labels: Any) -> dict[int, str]:
    """``{class index: name}`` from a description's ``labels``: ``{"1": "liver"}``, ``{"liver": 1}`` or a list."""
    if isinstance(labels, Sequence) and not isinstance(labels, str):
        return {i: str(n) for i, n in enumerate(labels)}
    if not isinstance(labels, Mapping):
        return {}
    out: dict[int, str] = {}
    for key, value in labels.items():
        index, name = (key, value) if str(key).strip().isdigit() else (value, key)
        if str(index).strip().isdigit():
            out[int(str(index).strip())] = str(name)
    return out


def dataset_class_names(
    dataset_dir: str | os.PathLike,
    num_classes: int,
    default: Sequence[str] | None = None,
    default_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Names of the classes ``1 .. num_classes - 1`` in per-class metric keys (``dice_<name>``).

    The names of the ``labels`` of the folder's ``dataset.json`` (``{"1": "liver", ...}``, ``{"liver": 1,
    ...}`` or a list indexed by class) when it has them; else ``default`` when ``dataset_dir`` is the
    bundle's documented data folder ``default_dir``; else none. A class left without a name (or with the
    name of an earlier class) is ``class_<c>``. Names are made key-safe (``"Right Kidney"`` ->
    ``right_kidney``); FLARE22's class names keep their established metric names (``ivc``, ...).

    Args:
        dataset_dir: the dataset folder.
        num_classes: the number of classes, background included.
        default: names of classes 1, 2, ... of the dataset documented to be in ``default_dir``.
        default_dir: the bundle's documented data folder (relative paths are resolved from the current folder).
    """
    described = _described_classes(read_description(dataset_dir).get("labels"))
    if described:
        given = {c: _metric_name(n) for c, n in described.items()}
    elif default is not None and _is_folder(dataset_dir, default_dir):
        given = {c: _metric_name(n) for c, n in enumerate(default, start=1)}
    else:
        given = {}
    names: list[str] = []
    for c in range(1, int(num_classes)):
        name = given.get(c) or f"class_{c}"
        names.append(f"class_{c}" if name in names else name)
    return names
