"""FLARE22-like synthetic abdominal CT volumes with the 13 FLARE22 organ labels.

One volume is an ``(X, Y, Z)`` array in Hounsfield units (HU) with voxel axes in RAS order: the first
axis runs from the patient's left to the patient's right, the second from posterior to anterior, the
third from inferior to superior. It holds air outside the body (-1000 HU), an elliptic body section
extruded along z (subcutaneous fat, abdominal wall muscle, a mix of mesenteric fat and bowel inside),
the spine at the back (vertebral bodies with discs, canal, posterior elements, paraspinal muscles),
and the 13 organs of FLARE22 in their usual places, each with its own shape, mean intensity and
texture. Size, position and intensity of every structure vary from volume to volume; a volume is
blurred slightly and gets Gaussian CT noise. Organs occupy z ranges, so most are absent from some
slices. Everything is vectorised numpy and seeded by the generator passed in.

A dataset folder in the layout of the 2D demos (NIfTI instead of PNG)::

    OUT_DIR/
      datalist.json   # labeled, unlabeled, validation, test: {"image": "images/x.nii.gz", "label": "labels/x.nii.gz"}
      dataset.json    # name, kind "flare", shape, spacing, orientation, labels, counts, seed, licence
      images/*.nii.gz # int16 HU
      labels/*.nii.gz # uint8, 0 background, 1 .. num_organs as in FLARE22_LABELS

is written by :func:`make_flare_like_dataset` (or ``python -m monai_im.datasets.flare_like OUT_DIR``). The
NIfTI affine is diagonal, ``diag(spacing)`` with the volume centred on the origin, so the voxel axes are
RAS (nibabel's ``aff2axcodes`` gives ``("R", "A", "S")``) and ``Orientationd(axcodes="RAS")`` leaves
them unchanged. Every volume is drawn from its own generator seeded by ``(seed, split, index)``; the
same arguments give byte-identical files (the gzip streams carry no time stamp).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from monai_im.data.datalist import split_labeled, write_datalist
from monai_im.datasets.drawing import _resample, bezier, image_rng, smooth_noise
from monai_im.datasets.synthetic import (
    dataset_arguments,
    dataset_options,
    ensure_dataset,
    run_dataset_command,
)
from monai_im.io import atomic_directory, atomic_write_bytes, atomic_write_json
from monai_im.runtime.progress import progress_bar

__all__ = [
    "FLARE22_LABELS",
    "ensure_flare_like_dataset",
    "flare_affine",
    "flare_like_sample",
    "main",
    "make_flare_like_dataset",
    "save_nifti",
    "smooth_field_3d",
]

logger = logging.getLogger(__name__)

#: The 13 FLARE22 organs in label order (label ``i + 1`` is ``FLARE22_LABELS[i]``; 0 is background).
FLARE22_LABELS = (
    "liver",
    "right_kidney",
    "spleen",
    "pancreas",
    "aorta",
    "inferior_vena_cava",
    "right_adrenal_gland",
    "left_adrenal_gland",
    "gallbladder",
    "esophagus",
    "stomach",
    "duodenum",
    "left_kidney",
)

AIR, FAT, MUSCLE, BONE_CORTEX, BONE_CANCELLOUS, DISC, CSF = -1000.0, -100.0, 50.0, 800.0, 450.0, 90.0, 10.0
HU_RANGE = (-1024.0, 3071.0)


def smooth_field_3d(rng: np.random.Generator, shape: tuple[int, int, int], scale: float) -> np.ndarray:
    """A smooth 3D random field (zero mean, unit standard deviation) with correlation length ``scale`` voxels.

    Coarse white noise (one node every ``scale`` voxels) resampled with separable cubic B-splines.
    """
    scale = max(float(scale), 1.0)
    out = rng.standard_normal(tuple(int(np.ceil(n / scale)) + 5 for n in shape))
    for axis, n in enumerate(shape):
        out = _resample(out, n, scale, 1.5 + float(rng.uniform()), axis=axis)
    out -= out.mean()
    return out / (out.std() + 1e-8)


class _Grid:
    """Normalised coordinates: ``u`` (to the patient's right) and ``v`` (anterior) in units of half the
    smaller in-plane side, ``w`` in [0, 1] from the lowest (inferior) to the highest slice."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        nx, ny, nz = shape
        self.shape = shape
        self.s = min(nx, ny) / 2.0
        self.u = ((np.arange(nx) - (nx - 1) / 2) / self.s)[:, None, None]
        self.v = ((np.arange(ny) - (ny - 1) / 2) / self.s)[None, :, None]
        self.w = (np.arange(nz) / max(nz - 1, 1))[None, None, :]
        self.dw = 1.0 / max(nz - 1, 1)

    def min_radius(self, voxels: float = 1.4) -> float:
        """An in-plane radius of ``voxels`` voxels, in grid units (keeps small organs visible)."""
        return voxels / self.s


def _ellipsoid(
    g: _Grid, centre: tuple[float, float, float], radii: tuple[float, float, float], angle: float
) -> np.ndarray:
    """Ellipsoidal radial coordinate (< 1 inside), rotated by ``angle`` in the axial plane."""
    du, dv = g.u - centre[0], g.v - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    a, b = (
        (du * c + dv * s) / max(radii[0], g.min_radius()),
        (dv * c - du * s) / max(radii[1], g.min_radius()),
    )
    return np.sqrt(a * a + b * b + ((g.w - centre[2]) / max(radii[2], 1.5 * g.dw)) ** 2)


def _tube_z(
    g: _Grid,
    rng: np.random.Generator,
    centre: tuple[float, float],
    radii: tuple[float, float],
    z: tuple[float, float],
) -> np.ndarray:
    """Radial coordinate of a tube along z with a gently winding centre line; > 1 outside ``z``."""
    amp, phase = rng.uniform(0.0, 0.03, 2), rng.uniform(0, 2 * np.pi, 2)
    cu = centre[0] + amp[0] * np.sin(2 * np.pi * g.w + phase[0])
    cv = centre[1] + amp[1] * np.sin(2 * np.pi * g.w + phase[1])
    rho = np.hypot((g.u - cu) / max(radii[0], g.min_radius()), (g.v - cv) / max(radii[1], g.min_radius()))
    return np.where((g.w >= z[0]) & (g.w <= z[1]), rho, np.inf)


def _tube_xy(
    g: _Grid,
    points: tuple[tuple[float, float], ...],
    radius: tuple[float, float],
    z_centre: tuple[float, float],
    z_radius: float,
) -> np.ndarray:
    """Radial coordinate of a curved tube in the axial plane (a quadratic Bezier through ``points``).

    The radius goes from ``radius[0]`` at the start of the curve to ``radius[1]`` at its end, the
    z centre from ``z_centre[0]`` to ``z_centre[1]``; the z extent is ``z_radius`` (rounded ends).
    """
    curve = bezier(*points, step=0.01)
    du = g.u[:, :, 0, None] - curve[None, None, :, 0]
    dv = g.v[:, :, 0, None] - curve[None, None, :, 1]
    dist2 = du * du + dv * dv
    nearest = np.argmin(dist2, axis=-1)
    dist = np.sqrt(np.take_along_axis(dist2, nearest[..., None], axis=-1))
    t = nearest[..., None] / max(len(curve) - 1, 1)
    r = np.maximum(radius[0] + (radius[1] - radius[0]) * t, g.min_radius())
    zc = z_centre[0] + (z_centre[1] - z_centre[0]) * t
    dz = (g.w - zc) / max(z_radius, 1.5 * g.dw)
    return np.sqrt((dist / r) ** 2 + dz * dz)


def _body(g: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Body radial coordinate ``(X, Y, 1)`` (< 1 inside), fat thickness and the spine centre ``(u, v)``."""
    a, b = rng.uniform(0.80, 0.92), rng.uniform(0.58, 0.70)
    cu, cv = rng.normal(0.0, 0.02), rng.normal(-0.02, 0.02)
    back = np.where(g.v < cv, rng.uniform(0.82, 0.92), 1.0)  # the back is flatter than the belly
    outline = 1.0 + 0.025 * smooth_noise(rng, g.shape[:2], g.s / 2)[:, :, None]
    rho = np.hypot((g.u - cu) / a, (g.v - cv) / (b * back)) * outline
    return rho, float(rng.uniform(0.08, 0.16)), float(cu), float(cv - 0.6 * b)


def _spine(
    g: _Grid, rng: np.random.Generator, su: float, sv: float, fine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """HU values of the spine region and its mask: vertebral bodies and discs, canal, posterior elements."""
    r = rng.uniform(0.10, 0.13)
    body = np.hypot(g.u - su, (g.v - sv) / 0.9)
    period, phase = rng.uniform(0.17, 0.24), rng.uniform(0, 1)
    disc = ((g.w / period + phase) % 1.0) < rng.uniform(0.18, 0.26)
    vertebra = np.where(body > 0.8 * r, BONE_CORTEX, BONE_CANCELLOUS) + rng.uniform(-80, 80) + 60 * fine
    hu = np.where(disc, DISC, vertebra)
    canal_v = sv - r - 0.05
    canal = np.hypot(g.u - su, g.v - canal_v)
    arch = (canal < 0.08) | ((np.abs(g.u - su) < 0.025) & (g.v < canal_v) & (g.v > canal_v - 0.14))
    muscles = np.hypot((np.abs(g.u - su) - 0.13) / 0.09, (g.v - canal_v + 0.05) / 0.08) < 1.0
    hu = np.where(body < r, hu, np.where(canal < 0.04, CSF, np.where(arch, BONE_CORTEX + 100 * fine, MUSCLE)))
    mask = (body < r) | arch | muscles
    return np.broadcast_to(hu, g.shape), np.broadcast_to(mask, g.shape)


def _organs(
    g: _Grid, rng: np.random.Generator, fine: np.ndarray, coarse: np.ndarray, wobble: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(label, mask, HU values)`` of each organ, in painting order (later organs cover earlier ones)."""

    def j(value: float, sd: float = 0.03) -> float:
        return float(value + rng.normal(0.0, sd))

    def k() -> float:  # size factor of one organ
        return float(rng.uniform(0.85, 1.15))

    def rough(rho: np.ndarray, amount: float) -> np.ndarray:
        phi = rng.uniform(0, 2 * np.pi)
        return rho * (1.0 + amount * (np.cos(phi) * wobble + np.sin(phi) * coarse))

    def hu(mean: float, spread: float, texture: float) -> np.ndarray:
        return j(mean, spread) + texture * fine

    # 1 liver: large, on the patient's right, from the upper abdomen to the top of the volume
    rho = rough(
        _ellipsoid(g, (j(0.42), j(0.02), j(0.74)), (0.40 * k(), 0.45 * k(), 0.36 * k()), j(0.2, 0.1)), 0.08
    )
    yield 1, rho < 1, hu(60, 8, 6) + 4 * coarse
    # 3 spleen: on the left, posterior and high, an oblique crescent-like ellipsoid
    rho = rough(
        _ellipsoid(g, (j(-0.56), j(-0.18), j(0.70)), (0.12 * k(), 0.22 * k(), 0.17 * k()), j(-0.6, 0.1)), 0.06
    )
    yield 3, rho < 1, hu(50, 8, 5)
    # 11 stomach: left upper quadrant; wall, fluid/food at the back, air at the front (supine patient)
    centre = (j(-0.28), j(0.18), j(0.72))
    radii = (0.22 * k(), 0.20 * k(), 0.19 * k())
    rho = rough(_ellipsoid(g, centre, radii, j(0.3, 0.1)), 0.07)
    level = centre[1] + rng.uniform(0.0, 0.6) * radii[1]
    content = np.where(g.v > level, AIR + 30 * fine, hu(20, 10, 15) + 15 * coarse)
    yield 11, rho < 1, np.where(rho > 0.75, hu(45, 5, 5), content)
    # 2 right and 13 left kidney: beside the spine at the back, brighter cortex around the medulla
    for label, side, cw in ((2, 1.0, 0.32), (13, -1.0, 0.37)):
        rho = rough(
            _ellipsoid(
                g, (j(0.33 * side), j(-0.30), j(cw)), (0.10 * k(), 0.14 * k(), 0.17 * k()), j(0.5 * side, 0.1)
            ),
            0.04,
        )
        medulla = j(30, 5)
        yield label, rho < 1, np.where(rho > 0.65, medulla + rng.uniform(40, 100), medulla) + 5 * fine
    # 12 duodenum: a C-shaped tube around the pancreatic head, below it; fluid inside a wall
    rho = _tube_xy(
        g,
        ((j(0.12), j(0.12)), (j(0.45), j(0.0)), (j(0.02), j(-0.10))),
        (0.05, 0.045),
        (j(0.40), j(0.34)),
        0.10,
    )
    yield 12, rho < 1, np.where(rho > 0.6, hu(45, 5, 5), hu(15, 8, 8))
    # 4 pancreas: an elongated lobulated curve from the head (right) to the tail (left, near the spleen)
    rho = _tube_xy(
        g,
        ((j(0.16), j(-0.02)), (j(-0.05), j(-0.06)), (j(-0.44), j(-0.12))),
        (0.07, 0.04),
        (j(0.46), j(0.53)),
        0.07,
    )
    yield 4, rough(rho, 0.1) < 1, hu(45, 8, 12)
    # 9 gallbladder: a small pear-shaped sac under the liver, near the front
    rho = rough(
        _ellipsoid(g, (j(0.32), j(0.30), j(0.47)), (0.06 * k(), 0.10 * k(), 0.09 * k()), j(0.8, 0.2)), 0.05
    )
    yield 9, rho < 1, hu(10, 5, 3)
    # 6 inferior vena cava: a flattened tube on the right of the aorta, from the bottom to the liver
    contrast = rng.uniform(0.0, 1.0)  # arterial (0) to portal venous (1) phase
    yield (
        6,
        _tube_z(g, rng, (j(0.14, 0.02), j(-0.17, 0.02)), (0.075, 0.055), (0.0, j(0.85))) < 1,
        hu(90 + 60 * contrast, 10, 4),
    )
    # 5 aorta: a round contrast-filled tube in front of the spine, slightly to the left, along all slices
    yield (
        5,
        _tube_z(g, rng, (j(-0.07, 0.02), j(-0.20, 0.02)), (0.065, 0.065), (0.0, 1.0)) < 1,
        hu(220 - 60 * contrast, 15, 4),
    )
    # 7 right and 8 left adrenal gland: small thin bodies just above the kidneys
    for label, side in ((7, 1.0), (8, -1.0)):
        rho = _ellipsoid(
            g, (j(0.22 * side, 0.015), j(-0.23, 0.015), j(0.56)), (0.035, 0.075, 0.06), j(0.9 * side, 0.2)
        )
        yield label, rho < 1, hu(40, 6, 3)
    # 10 esophagus: a thin tube in front of the aorta at the top of the volume, sometimes with air inside
    rho = _tube_z(g, rng, (j(-0.04, 0.01), j(-0.10, 0.01)), (0.04, 0.035), (j(0.84), 1.0))
    yield 10, rho < 1, np.where(rho < 0.35 * rng.integers(0, 2), AIR + 30 * fine, hu(40, 5, 4))


def flare_like_sample(
    shape: tuple[int, int, int], rng: np.random.Generator, num_organs: int = 13
) -> tuple[np.ndarray, np.ndarray]:
    """One FLARE22-like CT volume and its organ labels.

    Args:
        shape: ``(X, Y, Z)``, voxel axes in RAS order (patient's left to right, posterior to anterior,
            inferior to superior); each side at least 8 voxels.
        rng: the random generator of this volume.
        num_organs: keep labels ``1 .. num_organs`` of :data:`FLARE22_LABELS` (1 to 13); the other
            organs are still drawn in the image, but labelled background. The image does not depend on it.

    Returns:
        ``(image, label)``: ``image`` is float32 HU in [-1024, 3071] and ``label`` uint8 in ``0 .. num_organs``,
        both ``(X, Y, Z)``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sides of at least 8 voxels, got {shape}")
    if not 1 <= num_organs <= len(FLARE22_LABELS):
        raise ValueError(f"num_organs must be 1 .. {len(FLARE22_LABELS)}, got {num_organs}")
    g = _Grid(shape)
    fine = smooth_field_3d(rng, shape, 1.5)
    coarse = smooth_field_3d(rng, shape, g.s / 4)
    wobble = smooth_field_3d(rng, shape, g.s / 6)

    body_rho, fat, su, sv = _body(g, rng)
    wall = 1.0 - fat
    cavity_edge = wall - rng.uniform(0.04, 0.07)
    bowel = np.where(coarse > rng.uniform(-0.3, 0.3), rng.uniform(20, 45) + 10 * fine, FAT + 15 * fine)
    image = np.where(
        body_rho < cavity_edge, bowel, np.where(body_rho < wall, MUSCLE + 8 * fine, FAT + 10 * fine)
    )
    image = np.where(body_rho < 1.0, image, AIR)
    spine_hu, spine = _spine(g, rng, su, sv, fine)
    image = np.where(spine, spine_hu, image)

    cavity = (body_rho < cavity_edge) & ~ndimage.binary_dilation(spine[:, :, :1], iterations=1)
    label = np.zeros(shape, dtype=np.uint8)
    for organ, mask, values in _organs(g, rng, fine, coarse, wobble):
        mask = mask & cavity
        label[mask] = organ
        image = np.where(mask, values, image)

    sigma_xy = rng.uniform(0.4, 0.8)
    image = ndimage.gaussian_filter(image, (sigma_xy, sigma_xy, rng.uniform(0.2, 0.5)))
    image = image + rng.uniform(6.0, 14.0) * rng.standard_normal(shape)
    image = np.clip(image, *HU_RANGE).astype(np.float32)
    label[label > num_organs] = 0
    return image, label


# --------------------------------------------------------------------------- dataset folder

_SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))


def flare_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """The RAS affine of a synthetic volume: ``diag(spacing)`` in mm, the volume centred on the origin."""
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1) / 2 * affine.diagonal()[:3]
    return affine


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, dtype: Any) -> Path:
    """Write ``array`` as NIfTI-1 of ``dtype`` (values rounded) with ``affine``, atomically and reproducibly.

    The qform and sform both hold ``affine`` (code 1, scanner) and the units are mm; a ``.gz`` path is
    gzipped without a time stamp, so the same array gives the same bytes.
    """
    import nibabel as nib

    arr = np.asarray(array)
    if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    image = nib.Nifti1Image(np.ascontiguousarray(arr.astype(dtype)), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    if str(path).lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, data)


def _check_args(
    num_train: int, num_val: int, num_test: int, shape: Sequence[int], spacing: Sequence[float], seed: int
) -> None:
    if num_train < 1:
        raise ValueError(f"num_train must be at least 1, got {num_train}")
    if num_val < 0 or num_test < 0:
        raise ValueError(f"num_val and num_test must not be negative, got {num_val} and {num_test}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sides of at least 8 voxels, got {tuple(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def make_flare_like_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 24,
    num_val: int = 4,
    num_test: int = 4,
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] = (2.5, 2.5, 4.0),
    labeled_fraction: float = 0.25,
    num_organs: int = 13,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a FLARE22-like synthetic CT dataset to ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: the dataset folder to create.
        num_train: training volumes, split into ``labeled`` and ``unlabeled`` (which keep their label
            for evaluation, as in the 2D demos).
        num_val: validation volumes.
        num_test: test volumes.
        shape: ``(X, Y, Z)`` voxels of every volume.
        spacing: voxel size in mm along X, Y, Z (the diagonal of the affine).
        labeled_fraction: share of the training volumes in ``labeled`` (seeded split, at least one).
        num_organs: labels ``1 .. num_organs`` of :data:`FLARE22_LABELS` are kept.
        seed: seed of the volumes and of the split.
        overwrite: replace an existing ``out_dir``; otherwise an existing one is an error.
        progress: show a progress bar.

    Returns:
        The dataset folder.
    """
    shape, spacing = tuple(int(n) for n in shape), tuple(float(s) for s in spacing)
    _check_args(num_train, num_val, num_test, shape, spacing, seed)
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    if not 1 <= num_organs <= len(FLARE22_LABELS):
        raise ValueError(f"num_organs must be 1 .. {len(FLARE22_LABELS)}, got {num_organs}")
    out_dir = Path(out_dir)
    affine = flare_affine(shape, spacing)
    counts = {"train": num_train, "validation": num_val, "test": num_test}
    entries: dict[str, list[dict[str, str]]] = {split: [] for split in counts}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        with progress_bar(
            total=sum(counts.values()), desc="flare_like data", unit="vol", disable=not progress
        ) as bar:
            for split, prefix in _SPLITS:
                for index in range(counts[split]):
                    image, label = flare_like_sample(shape, image_rng(seed, split, index), num_organs)
                    name = f"{prefix}_{index:04d}.nii.gz"
                    save_nifti(tmp / "images" / name, image, affine, np.int16)
                    save_nifti(tmp / "labels" / name, label, affine, np.uint8)
                    entries[split].append({"image": f"images/{name}", "label": f"labels/{name}"})
                    bar.update()
        labeled, unlabeled = split_labeled(entries["train"], labeled_fraction=labeled_fraction, seed=seed)
        datalist = {
            "labeled": labeled,
            "unlabeled": unlabeled,
            "validation": entries["validation"],
            "test": entries["test"],
        }
        write_datalist(tmp / "datalist.json", datalist)
        atomic_write_json(
            tmp / "dataset.json", _description(shape, spacing, num_organs, seed, labeled_fraction, datalist)
        )
    logger.info(
        "wrote flare_like to %s: %d labeled, %d unlabeled, %d validation, %d test volumes of %s voxels",
        out_dir,
        len(labeled),
        len(unlabeled),
        num_val,
        num_test,
        "x".join(map(str, shape)),
    )
    return out_dir


def _description(
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    num_organs: int,
    seed: int,
    labeled_fraction: float,
    datalist: dict[str, list[Any]],
) -> dict[str, Any]:
    return {
        "name": "flare_like",
        "kind": "flare",
        "description": "FLARE22-like synthetic abdominal CT volumes (HU, int16) with organ labels (uint8)",
        "modality": {"0": "CT"},
        "seed": seed,
        "shape": list(shape),
        "spacing": list(spacing),
        "orientation": "RAS",
        "labels": {
            "0": "background",
            **{str(i + 1): name for i, name in enumerate(FLARE22_LABELS[:num_organs])},
        },
        "num_organs": num_organs,
        "labeled_fraction": labeled_fraction,
        "counts": {key: len(value) for key, value in datalist.items()},
        "license": "synthetic: generated by monai_im.datasets.flare_like, no real patient data; free to use",
    }


def ensure_flare_like_dataset(root: str | os.PathLike, **kwargs: Any) -> str:
    """Return ``root``, creating a FLARE22-like dataset there first if it has no ``datalist.json``.

    An existing dataset is reused as it is (``kwargs`` are not compared with it), so that a bundle
    config can call this on every run: ``"$monai_im.datasets.ensure_flare_like_dataset(@dataset_dir)"``.

    Args:
        root: the dataset folder; an existing folder that is not empty and holds no ``datalist.json``
            is refused.
        kwargs: passed to :func:`make_flare_like_dataset` (``num_train``, ``shape``, ``seed`` ...).
    """
    return ensure_dataset(root, make_flare_like_dataset, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_im.datasets.flare_like",
        description="Write a seeded FLARE22-like synthetic CT dataset (NIfTI volumes, 13 organs) with a datalist.json.",
    )
    dataset_arguments(parser, "volumes", num_train=24, num_val=4, num_test=4, labeled_fraction=0.25)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48], metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 2.5, 4.0], metavar=("X", "Y", "Z"))
    parser.add_argument("--num-organs", type=int, default=13, help="keep labels 1..N (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    return run_dataset_command(
        lambda: make_flare_like_dataset(
            args.out_dir,
            shape=args.shape,
            spacing=args.spacing,
            num_organs=args.num_organs,
            **dataset_options(args),
        ),
        "flare_like volumes",
    )


if __name__ == "__main__":
    raise SystemExit(main())
