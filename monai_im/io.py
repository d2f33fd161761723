"""Safe file output: every writer goes through a temporary file and an atomic rename.

A reader (or a study resumed after an interruption) therefore sees either the old
file or the complete new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_directory",
    "save_png",
    "load_json",
]


def _umask() -> int:
    """The process's file-creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the folder of ``path``; remove it if still there afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    with _temporary_sibling(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialise ``obj`` as JSON and write it atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent, sort_keys=False) + "\n").encode("utf-8"))


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is not valid JSON."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from e


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``path`` only on success.

    On an exception the partial directory is removed and ``path`` is left untouched.

    Args:
        path: the final directory.
        overwrite: replace an existing ``path``; otherwise an existing one is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); a dataset is for everyone
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_png(
    path: str | os.PathLike,
    array: np.ndarray,
    channel_first: bool = True,
    reverse_indexing: bool = True,
    compress_level: int = 6,
) -> Path:
    """Save an image array as an 8-bit PNG, atomically.

    Args:
        path: output file (``.png``).
        array: ``(C, *spatial)`` when ``channel_first`` else ``(*spatial, C)`` or ``(*spatial)``;
            values are cast to ``uint8`` (clip to 0..255 first if needed). C is 1 or 3.
        channel_first: whether the channel axis comes first.
        reverse_indexing: the spatial axes are in MONAI's ``PILReader`` order (width first), as
            produced by ``LoadImage``; they are swapped back so that a PNG read with MONAI again
            has the same orientation.
        compress_level: zlib level 0 (none) to 9; PNG is lossless at every level. 6 is Pillow's
            default; 1 writes natural images about 5x faster for files about 20% larger, which
            suits files that are written once per generation, such as pseudo-labels.
    """
    if not 0 <= int(compress_level) <= 9:
        raise ValueError(f"save_png: compress_level must be 0..9, got {compress_level}")
    arr = np.asarray(array)
    if channel_first and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"save_png: cannot write an array of shape {np.shape(array)} as PNG")
    if reverse_indexing:
        arr = np.swapaxes(arr, 0, 1)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    path = Path(path)
    with _temporary_sibling(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG", compress_level=int(compress_level))
        os.replace(tmp, path)
    return path
