"""MONAI-style datalists: reading, checking, splitting and writing ``datalist.json``.

A dataset folder holds a ``datalist.json`` with the keys ``labeled``, ``unlabeled``,
``validation`` and ``test``; each is a list of entries such as
``{"image": "images/a.png", "label": "labels/a.png"}`` whose paths are relative to
the folder. Unlabeled entries may carry a ``label`` that is only used for evaluation
(and by full-data training, FDT).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_im.io import atomic_write_json, load_json

__all__ = [
    "DATALIST_KEYS",
    "DatasetNotFoundError",
    "entry_problems",
    "load_datalist",
    "write_datalist",
    "split_labeled",
    "list_images",
    "IMAGE_EXTENSIONS",
]

DATALIST_KEYS = ("labeled", "unlabeled", "validation", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PATH_FIELDS = ("image", "label", "im")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder or its ``datalist.json`` is missing."""


def load_datalist(
    dataset_dir: str | os.PathLike,
    filename: str = "datalist.json",
    required: Sequence[str] = ("labeled", "validation"),
    check_files: bool = True,
    hint: str = "",
    exit_on_missing: bool = False,
    check_images: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Read ``<dataset_dir>/<filename>`` and return it with absolute paths.

    Every key of :data:`DATALIST_KEYS` is present in the result (missing optional keys
    become empty lists). Errors name the file and the entry that is wrong, and are raised
    before any long work starts.

    Args:
        dataset_dir: the dataset folder.
        filename: the datalist file inside it.
        required: keys that must hold at least one entry.
        check_files: check that every referenced file exists.
        hint: appended to the error when the folder or datalist is missing (how to make one).
        exit_on_missing: a missing folder or datalist ends the program with the message alone
            (``SystemExit``) instead of an exception with a traceback; bundles use this so that a
            wrong ``dataset_dir`` stops the run at once with instructions.
        check_images: read the header of every 2D image file (PNG, JPG, BMP, TIFF) and check that
            it decodes and that a label has the size of its image; cheap (no pixel data is read)
            and done before any training starts.
    """
    root = Path(dataset_dir).expanduser()
    path = root / filename
    missing = None
    if not root.is_dir():
        missing = f"dataset folder {root} does not exist."
    elif not path.is_file():
        missing = f"{path} does not exist: a dataset folder needs a {filename}."
    if missing is not None:
        message = f"{missing} {hint}".strip()
        if exit_on_missing:
            raise SystemExit(f"error: {message}")
        raise DatasetNotFoundError(message)
    raw = load_json(path)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a JSON object with keys {list(DATALIST_KEYS)}")
    unknown = sorted(set(raw) - set(DATALIST_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; expected some of {list(DATALIST_KEYS)}")
    out: dict[str, list[dict[str, Any]]] = {}
    for key in DATALIST_KEYS:
        entries = raw.get(key, [])
        if not isinstance(entries, list):
            raise ValueError(f"{path}: '{key}' must be a list of entries")
        resolved = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, Mapping) or "image" not in entry:
                raise ValueError(f"{path}: {key}[{i}] must be an object with an 'image' path")
            if key != "unlabeled" and "label" not in entry:
                raise ValueError(f"{path}: {key}[{i}] ({entry['image']}) has no 'label'")
            item = dict(entry)
            for field in PATH_FIELDS:
                if field in item:
                    p = Path(item[field])
                    item[field] = str(p if p.is_absolute() else (root / p))
                    if check_files and not Path(item[field]).is_file():
                        raise FileNotFoundError(f"{path}: {key}[{i}] refers to a missing file {item[field]}")
            if check_files and check_images:
                _check_image_pair(item, f"{path}: {key}[{i}]")
            resolved.append(item)
        out[key] = resolved
    for key in required:
        if not out[key]:
            raise ValueError(f"{path}: '{key}' must hold at least one entry")
    return out


def _image_size(file: str, where: str) -> tuple[int, int] | None:
    """(width, height) from a 2D image's header, None for formats PIL does not handle here."""
    if Path(file).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    from PIL import UnidentifiedImageError

    from monai_im.transforms.readers import read_header

    try:  # the header only, without PIL's refusal of large images
        header = read_header(file)
        return None if header is None else (int(header.shape[0]), int(header.shape[1]))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}: {file} is not a readable image ({e})") from e


def _check_image_pair(item: Mapping[str, Any], where: str) -> None:
    sizes = {field: _image_size(item[field], where) for field in PATH_FIELDS if field in item}
    image_size = sizes.get("image")
    for field, size in sizes.items():
        if field != "image" and image_size is not None and size is not None and size != image_size:
            raise ValueError(
                f"{where}: {field} {item[field]} is {size[0]}x{size[1]} but its image {item['image']} is "
                f"{image_size[0]}x{image_size[1]}"
            )


def _same_file_key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _entries(indices: Sequence[int]) -> str:
    return ("entry " if len(indices) == 1 else "entries ") + ", ".join(str(i) for i in indices)


def entry_problems(datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Images listed more than once where that silently skews a study, one line each naming the entries.

    - the same image twice in one list (it is trained or measured twice);
    - the same image in two of ``labeled``, ``validation`` and ``test`` (the metrics then measure
      training data, or validation data is reported as test);
    - a ``labeled`` image also ``unlabeled`` (its own pseudo-label competes with its label).

    Images are compared as files (links resolved), whatever the spelling of their paths.

    Args:
        datalist: the datalist (paths as from :func:`load_datalist`).
    """
    where: dict[str, dict[str, list[int]]] = {}
    names: dict[str, str] = {}
    for key in DATALIST_KEYS:
        for i, item in enumerate(datalist.get(key, [])):
            file = _same_file_key(str(item["image"]))
            names.setdefault(file, str(item["image"]))
            where.setdefault(file, {}).setdefault(key, []).append(i)
    problems = []
    for file, lists in where.items():
        name = names[file]
        for key, indices in lists.items():
            if len(indices) > 1:
                problems.append(
                    f"{name}: listed {len(indices)} times in {key} ({_entries(indices)}); list each image once"
                )
        split = [k for k in ("labeled", "validation", "test") if k in lists]
        if len(split) > 1:
            places = " and ".join(f"{k} ({_entries(lists[k])})" for k in split)
            problems.append(
                f"{name}: listed in {places}; an image belongs to one of labeled, validation and test, "
                "or the metrics measure images the network was trained or selected on"
            )
        if "labeled" in lists and "unlabeled" in lists:
            problems.append(
                f"{name}: listed in labeled ({_entries(lists['labeled'])}) and unlabeled "
                f"({_entries(lists['unlabeled'])}); remove it from unlabeled"
            )
    return problems


def write_datalist(path: str | os.PathLike, datalist: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Write a datalist atomically, with paths made relative to the file's folder where possible."""
    path = Path(path)
    root = path.parent.resolve()
    out: dict[str, list[dict[str, Any]]] = {}
    for key, entries in datalist.items():
        rows = []
        for entry in entries:
            row = dict(entry)
            for field in PATH_FIELDS:
                if field in row:
                    p = Path(row[field])
                    if p.is_absolute():
                        try:
                            p = p.resolve().relative_to(root)
                        except ValueError:
                            pass
                    row[field] = p.as_posix()
            rows.append(row)
        out[key] = rows
    return atomic_write_json(path, out)


def split_labeled(
    items: Sequence[Any], labeled_fraction: float = 0.1, seed: int = 0, min_labeled: int = 1
) -> tuple[list[Any], list[Any]]:
    """Split ``items`` into a labeled and an unlabeled part, reproducibly for a given seed.

    Args:
        items: the training entries.
        labeled_fraction: the share that keeps its labels, in (0, 1].
        seed: seed of the permutation.
        min_labeled: at least this many items are labeled.

    Returns:
        ``(labeled, unlabeled)``, each in the original order of ``items``.
    """
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    n = len(items)
    n_lab = min(n, max(min_labeled, int(round(labeled_fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    chosen = set(order[:n_lab].tolist())
    labeled = [it for i, it in enumerate(items) if i in chosen]
    unlabeled = [it for i, it in enumerate(items) if i not in chosen]
    return labeled, unlabeled


def list_images(
    folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[dict[str, str]]:
    """Datalist entries ``{"image": path}`` for every image file directly inside ``folder``, sorted by name."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {root} does not exist")
    exts = {e.lower() for e in extensions}
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(exts))}) in {root}")
    return [{"image": str(p)} for p in files]
