"""The per-image work of the HeLa preparation (see :mod:`monai_im.datasets.prepare_hela`): finding the
source images and masks, thresholding, redrawing the position markers as discs, and writing the crops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from monai_im.data.datalist import IMAGE_EXTENSIONS
from monai_im.datasets.prepare_images import (
    DataPreparationError,
    binarize,
    check_same_size,
    load_image,
    save_image,
)

__all__ = [
    "CHANNELS",
    "MASK_THRESHOLD",
    "MAX_RADIUS",
    "MIN_RADIUS",
    "RADIUS_DIVISOR",
    "SPLITS",
    "HelaLayout",
    "crop_starts",
    "disc_radii",
    "draw_position_discs",
    "find_root",
    "list_sources",
    "pick_folder",
    "position_points",
    "process_source",
]

MASK_THRESHOLD = 10
MIN_RADIUS, MAX_RADIUS, RADIUS_DIVISOR = 3, 8, 4
CHANNELS = ("alive", "dead", "position")
#: datalist key -> output folder name
SPLITS = {"train": "train", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class HelaLayout:
    """Folder and file names of the source data; a tuple lists alternatives, tried in order."""

    train: tuple[str, ...] = ("train_full", "train")
    val: tuple[str, ...] = ("val",)
    test: tuple[str, ...] = ("test",)
    image: tuple[str, ...] = ("brightfield",)
    alive: tuple[str, ...] = ("alive",)
    dead: tuple[str, ...] = ("dead",)
    position: tuple[str, ...] = ("position", "mod_position", "pos")
    mask_suffix: str = ".png"

    def split_names(self, split: str) -> tuple[str, ...]:
        return {"train": self.train, "validation": self.val, "test": self.test}[split]


# --------------------------------------------------------------------------- geometry


def crop_starts(length: int, crop: int, overlap: float) -> list[int]:
    """Start offsets of crops along one axis.

    The first crop starts at 0, the last ends at ``length``, and the crops are evenly spaced
    with a stride of at most ``crop * (1 - overlap)`` (so neighbours overlap by at least
    ``overlap``). A ``length <= crop`` gives ``[0]``.
    """
    if crop < 1:
        raise ValueError(f"crop size must be positive, got {crop}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= crop:
        return [0]
    stride = crop * (1.0 - overlap)
    n = math.ceil((length - crop) / stride - 1e-9) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - crop, n)})


def position_points(mask: np.ndarray) -> np.ndarray:
    """``(N, 2)`` integer ``(row, col)`` centroids of the 8-connected blobs of a boolean mask."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    centres = ndimage.center_of_mass(mask, labels, index=np.arange(1, n + 1))
    return np.rint(np.asarray(centres, dtype=np.float64)).astype(np.int64).reshape(-1, 2)


def disc_radii(
    points: np.ndarray,
    min_radius: int = MIN_RADIUS,
    max_radius: int = MAX_RADIUS,
    divisor: float = RADIUS_DIVISOR,
) -> np.ndarray:
    """Disc radius per point: ``clip(floor(d / divisor), min_radius, max_radius)``.

    ``d`` is the Euclidean distance to the nearest other point; a lone point gets ``max_radius``.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(points) == 1:
        return np.array([max_radius], dtype=np.int64)
    dist, _ = cKDTree(points).query(points, k=2)
    radii = np.floor(dist[:, 1] / divisor)
    return np.clip(radii, min_radius, max_radius).astype(np.int64)


def draw_position_discs(mask: np.ndarray, **radius_kwargs: Any) -> np.ndarray:
    """Redraw a boolean position mask as filled discs (see :func:`disc_radii`); returns booleans."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros_like(mask)
    points = position_points(mask)
    h, w = mask.shape
    for (cy, cx), r in zip(points, disc_radii(points, **radius_kwargs)):
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


# --------------------------------------------------------------------------- source data


def pick_folder(parent: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` that is a folder of ``parent``."""
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    raise DataPreparationError(f"{parent}: no {what} folder (looked for {', '.join(names)})")


def find_root(base: Path, layout: HelaLayout, max_depth: int = 4) -> Path:
    """The folder under ``base`` (itself included) that holds the train, val and test folders.

    A folder whose split folders hold all four channel folders is preferred; failing that, one
    whose split folders hold the image folder (the missing channel folder is then reported).
    """

    def has(folder: Path, names: Sequence[str]) -> Path | None:
        return next((folder / n for n in names if (folder / n).is_dir()), None)

    def complete(folder: Path, channels: Sequence[str]) -> bool:
        for split in SPLITS:
            split_dir = has(folder, layout.split_names(split))
            if split_dir is None or any(has(split_dir, getattr(layout, c)) is None for c in channels):
                return False
        return True

    levels, level = [], [base]
    for _ in range(max_depth + 1):
        levels.append(level)
        level = sorted(
            p for f in level for p in f.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))
        )
    for channels in (("image", *CHANNELS), ("image",)):
        for level in levels:
            for folder in level:
                if complete(folder, channels):
                    return folder
    raise DataPreparationError(
        f"{base}: cannot find the HeLa split folders ({'/'.join(layout.train)}, {'/'.join(layout.val)}, "
        f"{'/'.join(layout.test)}) each with {'/'.join(layout.image)}/, {'/'.join(layout.alive)}/, "
        f"{'/'.join(layout.dead)}/ and {'/'.join(layout.position)}/ inside; use the folder options to name them"
    )


def list_sources(split_dir: Path, layout: HelaLayout) -> list[tuple[str, Path, Path, Path, Path]]:
    """``(stem, image, alive, dead, position)`` for every image of one split folder."""
    image_dir = pick_folder(split_dir, layout.image, "image")
    mask_dirs = [pick_folder(split_dir, getattr(layout, c), c) for c in CHANNELS]
    images: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in images:
                raise DataPreparationError(
                    f"{image_dir}: two images named {path.stem}: {images[path.stem].name} and {path.name}"
                )
            images[path.stem] = path
    if not images:
        raise DataPreparationError(f"{image_dir}: no images found")
    out = []
    for stem, image in images.items():
        masks = [d / f"{stem}{layout.mask_suffix}" for d in mask_dirs]
        for mask in masks:
            if not mask.is_file():
                raise DataPreparationError(f"{image}: its mask {mask} is missing")
        out.append((stem, image, *masks))
    return out


def process_source(task: tuple[str, str, Path, Path, Path, Path, Path, int, float]) -> list[dict[str, str]]:
    """Worker: load one source image and its masks, redraw positions, write the crops."""
    split, stem, image_path, alive_path, dead_path, pos_path, staging, crop, overlap = task
    image, image_hw = load_image(image_path, "L")
    channels = []
    for path in (alive_path, dead_path, pos_path):
        mask, mask_hw = load_image(path, "L")
        check_same_size(image_path, image_hw, path, mask_hw)
        channels.append(binarize(mask, MASK_THRESHOLD) > 0)
    channels[2] = draw_position_discs(channels[2])
    label = np.stack(channels, axis=-1).astype(np.uint8) * 255
    h, w = image.shape
    if h < crop or w < crop:
        pad = ((0, max(crop - h, 0)), (0, max(crop - w, 0)))
        image = np.pad(image, pad)
        label = np.pad(label, (*pad, (0, 0)))
    rows = []
    folder = SPLITS[split]
    for y in crop_starts(h, crop, overlap):
        for x in crop_starts(w, crop, overlap):
            name = f"{stem}_y{y:04d}_x{x:04d}.png"
            rel_image, rel_label = f"images/{folder}/{name}", f"labels/{folder}/{name}"
            save_image(staging / rel_image, image[y : y + crop, x : x + crop])
            save_image(staging / rel_label, label[y : y + crop, x : x + crop])
            rows.append({"image": rel_image, "label": rel_label, "source": f"{folder}/{stem}"})
    return rows
