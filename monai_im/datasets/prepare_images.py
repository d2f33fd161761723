"""Reading, checking and writing the images and masks of a dataset preparation, with errors that name the
file, and a process pool with a progress bar for the per-image work."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from monai_im.io import save_png
from monai_im.runtime.progress import progress_bar

__all__ = [
    "CorruptImageError",
    "DataPreparationError",
    "SizeMismatchError",
    "binarize",
    "check_pair_sizes",
    "check_same_size",
    "default_workers",
    "find_files",
    "image_shape",
    "load_image",
    "parallel_map",
    "resize",
    "save_image",
]

T = TypeVar("T")
R = TypeVar("R")


class DataPreparationError(ValueError):
    """Bad input data: the message names the file(s) and what is wrong."""


class CorruptImageError(DataPreparationError):
    """An image (or mask) file cannot be decoded."""


class SizeMismatchError(DataPreparationError):
    """A mask does not have the size of its image."""


# --------------------------------------------------------------------------- images


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL raises several types for bad files
        raise CorruptImageError(f"{path}: not a readable image ({e})") from e


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header only (fast; no full decode)."""
    path = Path(path)
    with _open(path) as img:
        return img.height, img.width


def load_image(
    path: str | os.PathLike, mode: str = "RGB", draft: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image file into a ``uint8`` array in ``(H, W[, C])`` order.

    Args:
        path: the file.
        mode: ``"RGB"`` or ``"L"``. 16-bit grayscale images are scaled to 8 bit (divided by 256).
        draft: for JPEG files, let the decoder shrink the image by a power of two while keeping
            both sides at least this large (much faster for large photographs); ``None`` decodes
            at full size.

    Returns:
        ``(array, (height, width))`` where the shape is the size stored in the file (before any
        draft reduction), for checking that a mask fits its image.

    Raises:
        CorruptImageError: the file cannot be decoded; the message names it.
    """
    path = Path(path)
    with _open(path) as img:
        shape = (img.height, img.width)
        try:
            if draft is not None and img.format == "JPEG":
                scale = min(img.width, img.height) / float(draft)
                if scale >= 2:
                    img.draft(mode, (max(1, int(img.width / scale)), max(1, int(img.height / scale))))
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I") and mode == "L":
                arr = (np.asarray(img, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
                return arr, shape
            out = img.convert(mode)
        except Exception as e:
            raise CorruptImageError(f"{path}: cannot decode the image ({e})") from e
    return np.asarray(out, dtype=np.uint8), shape


def resize(array: np.ndarray, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Resize an ``(H, W[, C])`` ``uint8`` array to ``size = (height, width)``.

    Args:
        resample: ``"bilinear"`` (images; PIL's antialiased bilinear filter) or ``"nearest"``
            (masks: no new values are created).
    """
    filters = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    if resample not in filters:
        raise ValueError(f"resample must be one of {sorted(filters)}, got {resample!r}")
    if tuple(array.shape[:2]) == tuple(size):
        return array
    img = Image.fromarray(np.ascontiguousarray(array))
    return np.asarray(img.resize((size[1], size[0]), filters[resample]), dtype=np.uint8)


def binarize(mask: np.ndarray, threshold: int = 127) -> np.ndarray:
    """Return ``255`` where ``mask > threshold`` and ``0`` elsewhere, as ``uint8``."""
    return np.where(np.asarray(mask) > threshold, 255, 0).astype(np.uint8)


def check_same_size(
    image_path: Path, image_hw: tuple[int, int], mask_path: Path, mask_hw: tuple[int, int]
) -> None:
    """Raise :class:`SizeMismatchError` naming both files when the sizes differ."""
    if tuple(image_hw) != tuple(mask_hw):
        raise SizeMismatchError(
            f"{mask_path} has size {mask_hw[1]}x{mask_hw[0]} (WxH) but its image {image_path} has size "
            f"{image_hw[1]}x{image_hw[0]}"
        )


def check_pair_sizes(pairs: Sequence[tuple[Path, Path]], progress: bool = True) -> None:
    """Compare the sizes of ``(image, mask)`` files from their headers (fast), before long work.

    Raises:
        SizeMismatchError: naming both files; CorruptImageError: a header cannot be read.
    """
    for image, mask in progress_bar(pairs, desc="check sizes", disable=not progress, leave=False):
        check_same_size(image, image_shape(image), mask, image_shape(mask))


def save_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write an ``(H, W)`` or ``(H, W, 3)`` ``uint8`` array as PNG (atomic), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_png(path, array, channel_first=False, reverse_indexing=False)


def find_files(root: Path, pattern: str) -> dict[str, Path]:
    """Files under ``root`` whose name fully matches the regex ``pattern``, keyed by its first group.

    Hidden files and macOS ``__MACOSX`` folders are skipped; a key found twice is an error.
    """
    regex = re.compile(pattern, re.IGNORECASE)
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(p.startswith(".") or p == "__MACOSX" for p in rel) or not path.is_file():
            continue
        m = regex.fullmatch(path.name)
        if m:
            key = m.group(1)
            if key in out:
                raise DataPreparationError(f"{root}: '{key}' is there twice: {out[key]} and {path}")
            out[key] = path
    return out


# --------------------------------------------------------------------------- parallel work


def default_workers() -> int:
    """A sensible number of worker processes: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def parallel_map(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    workers: int | None = None,
    desc: str = "",
    progress: bool = True,
) -> list[R]:
    """``[fn(t) for t in tasks]`` in a process pool, with a progress bar; results in task order.

    ``fn`` must be a module-level function. The first exception cancels the remaining tasks and
    is raised again here. ``workers`` of 0 or 1 runs in this process.
    """
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in progress_bar(tasks, desc=desc, disable=not progress)]
    results: list[Any] = [None] * len(tasks)
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        futures = {pool.submit(fn, t): i for i, t in enumerate(tasks)}
        pending = set(futures)
        with progress_bar(total=len(tasks), desc=desc, disable=not progress) as bar:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    exc = fut.exception()
                    if exc is not None:
                        for other in pending:
                            other.cancel()
                        raise exc
                    results[futures[fut]] = fut.result()
                    bar.update(1)
    return results
