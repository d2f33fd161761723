"""The cases of an nnU-Net export (:mod:`monai_im.apps.nnunet`): one image and its label map each.

A labeled case is its image and ground truth as the dataset stores them (the label written on the
image's own header). A pseudo-labeled case is its source image with the pseudo-label and IM of a study
brought onto that image's grid by nearest neighbour: volumes through the scanner coordinates of both
affines (:func:`nearest_on_grid`; voxels outside the training grid are ignored), 2D images by resizing
the label back to the image size. IM pixels get the ignore label.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from monai_im.data.preflight_rules import geometry_difference

__all__ = [
    "GRAY_MODES",
    "IGNORE",
    "ExportCase",
    "ExportLabels",
    "fail",
    "nearest_on_grid",
    "write_image_case",
    "write_volume_case",
]

#: nnU-Net's name of the ignore label (its value is the highest label).
IGNORE = "ignore"
#: 2D image modes written as they are read (one channel); any other mode is written as RGB or L.
GRAY_MODES = ("L", "I;16", "I")


def fail(message: str) -> NoReturn:
    """End the export with the one-line message ``error: <message>``."""
    raise SystemExit(f"error: {message}")


@dataclass
class ExportCase:
    """One training case: its name, source image, label file (and IM file), and where it comes from."""

    name: str
    image: str
    label: str
    pseudo: bool
    im: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportLabels:
    """The classes of the export and how a stored label file becomes nnU-Net label values."""

    mode: str
    names: tuple[str, ...]  # foreground classes, label values 1..N
    threshold: float  # binary ground truth: foreground where label > threshold

    @property
    def ignore(self) -> int:
        return len(self.names) + 1

    def as_dict(self) -> dict[str, int]:
        return {"background": 0, **{n: i + 1 for i, n in enumerate(self.names)}, IGNORE: self.ignore}

    def values(self, array: np.ndarray, pseudo: bool, where: str) -> np.ndarray:
        """``array`` (one channel) as uint8 labels: binary masks as 0/1, class maps checked against the classes."""
        if self.mode == "binary":
            return (array > (0 if pseudo else self.threshold)).astype(np.uint8)
        top = len(self.names)
        if array.dtype.kind == "f" and np.any(array != np.round(array)):
            fail(f"{where}: label values outside the class range 0..{top}: not class indices")
        if array.size and (array.min() < 0 or array.max() > top):
            bad = np.unique(array[(array < 0) | (array > top)])[:5]
            fail(f"{where}: label values outside the class range 0..{top}: {bad.tolist()}")
        return array.astype(np.uint8)


def _one_channel(array: np.ndarray, axis: int, labels: ExportLabels, where: str) -> np.ndarray:
    """``array`` without its channel axis ``axis``: identical channels are one; binary masks join by max."""
    first = np.take(array, [0], axis=axis)
    if array.shape[axis] > 1 and not np.array_equal(array, np.broadcast_to(first, array.shape)):
        if labels.mode != "binary":
            fail(f"{where}: a class map needs one channel, found {array.shape[axis]}")
        first = array.max(axis=axis, keepdims=True)
    return np.squeeze(first, axis=axis)


def _read_png(path: str, labels: ExportLabels) -> np.ndarray:
    """A 2D label or IM file as a ``(H, W)`` array (alpha dropped; palette images as their indices)."""
    from PIL import Image

    with Image.open(path) as f:
        raw = np.asarray(f.convert(f.mode[:-1]) if f.mode in ("LA", "RGBA") else f)
    return raw if raw.ndim == 2 else _one_channel(raw, -1, labels, path)


# ---------------------------------------------------------------------- volumes
def _load_volume(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(C, X, Y, Z)`` array and RAS affine of a volume read as training reads it (MONAI, VolumeReader)."""
    from monai.transforms import LoadImage

    from monai_im.transforms import VolumeReader

    volume = LoadImage(reader=VolumeReader(), image_only=True, ensure_channel_first=True, dtype=None)(path)
    return np.asarray(volume.array), np.asarray(volume.affine, dtype=np.float64)


def _volume_image(src: str, images: Path, name: str) -> tuple[np.ndarray, tuple[int, ...], Any, int]:
    """Write a case's image channels; returns its affine, spatial shape, NIfTI header (when copied) and channels."""
    import nibabel as nib

    lower = src.lower()
    if lower.endswith((".nii", ".nii.gz")):
        img = nib.load(src)
        if len(img.shape) == 3:  # copied as it is: nnU-Net sees the file the dataset holds
            target = images / f"{name}_0000.nii.gz"
            if lower.endswith(".gz"):
                shutil.copyfile(src, target)
            else:
                target.write_bytes(gzip.compress(Path(src).read_bytes(), compresslevel=1))
            return np.asarray(img.affine, dtype=np.float64), tuple(img.shape), img.header, 1
    array, affine = _load_volume(src)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    for c in range(array.shape[0]):
        nib.save(nib.Nifti1Image(array[c], affine), images / f"{name}_{c:04d}.nii.gz")
    return affine, tuple(array.shape[1:]), None, array.shape[0]


def nearest_on_grid(
    arrays: Sequence[np.ndarray], src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: Sequence[int]
) -> tuple[list[np.ndarray], np.ndarray]:
    """The values of ``arrays`` (on the grid ``src_affine``) at the voxel centres of the grid
    ``(dst_affine, dst_shape)``, nearest neighbour, and where those centres fall inside the source grid.

    Computed one slice of the destination at a time, so memory stays that of the outputs."""
    src_shape = arrays[0].shape
    if tuple(src_shape) == tuple(dst_shape) and np.allclose(src_affine, dst_affine, atol=1e-6):
        return [a.copy() for a in arrays], np.ones(dst_shape, dtype=bool)
    m = np.linalg.inv(src_affine) @ dst_affine
    i, j = np.meshgrid(np.arange(dst_shape[0]), np.arange(dst_shape[1]), indexing="ij")
    out = [np.zeros(dst_shape, dtype=a.dtype) for a in arrays]
    inside = np.zeros(dst_shape, dtype=bool)
    for k in range(dst_shape[2]):
        idx = [
            np.rint(m[r, 0] * i + m[r, 1] * j + (m[r, 2] * k + m[r, 3])).astype(np.int64) for r in range(3)
        ]
        ok = np.logical_and.reduce([(x >= 0) & (x < n) for x, n in zip(idx, src_shape)])
        inside[..., k] = ok
        for o, a in zip(out, arrays):
            o[..., k][ok] = a[idx[0][ok], idx[1][ok], idx[2][ok]]
    return out, inside


def write_volume_case(case: ExportCase, folder: Path, labels: ExportLabels) -> dict[str, Any]:
    """Write a volume case into ``folder/imagesTr`` and ``folder/labelsTr``; returns its channels and the
    fraction of ignored voxels. The label is written with the image's affine (and header, when copied)."""
    import nibabel as nib

    affine, shape, header, channels = _volume_image(case.image, folder / "imagesTr", case.name)
    raw, label_affine = _load_volume(case.label)
    label = labels.values(_one_channel(raw, 0, labels, case.label), case.pseudo, case.label)
    if case.pseudo:
        maps = [label]
        if case.im is not None:
            im, im_affine = _load_volume(case.im)
            if im.shape[1:] != label.shape or geometry_difference(im_affine, label_affine):
                fail(f"{case.im}: mismatched shapes: the IM does not lie on its pseudo-label {case.label}")
            maps.append((im[0] > 0.5).astype(np.uint8))
        maps, inside = nearest_on_grid(maps, label_affine, affine, shape)
        ignored = ~inside if len(maps) == 1 else ~inside | (maps[1] > 0)
        label = np.where(ignored, labels.ignore, maps[0]).astype(np.uint8)
    elif label.shape != shape:
        fail(f"{case.label}: mismatched shapes: label {label.shape} vs image {shape} ({case.image})")
    elif difference := geometry_difference(label_affine, affine):
        fail(f"{case.label}: the label does not lie on its image {case.image}: {difference}")
    if header is not None:
        header = header.copy()
        header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(label, affine, header=header), folder / "labelsTr" / f"{case.name}.nii.gz")
    return {"channels": channels, "ignored_fraction": round(float(np.mean(label == labels.ignore)), 6)}


# ---------------------------------------------------------------------- 2D images
def write_image_case(case: ExportCase, folder: Path, labels: ExportLabels, rgb: bool) -> dict[str, Any]:
    """Write a 2D case as PNG files (the image as RGB when ``rgb``, else one channel); returns as
    :func:`write_volume_case`."""
    from PIL import Image

    with Image.open(case.image) as img:
        img.load()
        if rgb and img.mode != "RGB":
            img = img.convert("RGB")
        elif not rgb and img.mode not in GRAY_MODES:
            img = img.convert("L")
        img.save(folder / "imagesTr" / f"{case.name}_0000.png")
        size = img.size  # (width, height)
    label = labels.values(_read_png(case.label, labels), case.pseudo, case.label)
    if case.pseudo:  # the pseudo-label lies on the resized training grid: back to the image's size

        def resized(a: np.ndarray) -> np.ndarray:
            return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.NEAREST))

        label = resized(label)
        if case.im is not None:
            im = (_read_png(case.im, labels) > 0.5).astype(np.uint8)
            label = np.where(resized(im) > 0, labels.ignore, label).astype(np.uint8)
    elif label.shape != (size[1], size[0]):
        fail(f"{case.label}: mismatched shapes: label {label.shape} vs image {size[::-1]} ({case.image})")
    Image.fromarray(label).save(folder / "labelsTr" / f"{case.name}.png")
    return {"channels": 3 if rgb else 1, "ignored_fraction": round(float(np.mean(label == labels.ignore)), 6)}
