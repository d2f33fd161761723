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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_im.data.datalist import split_labeled, write_datalist
from monai_im.datasets.demo_tools import (
    dataset_arguments,
    dataset_options,
    ensure_dataset,
    run_dataset_command,
)
from monai_im.datasets.drawing import image_rng
from monai_im.datasets.flare_anatomy import FLARE22_LABELS, flare_like_sample, smooth_field_3d
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

    The parameters are the demo command's options one by one, set by keyword from the bundles' demo
    configs and the command line; they stay flat rather than be grouped.

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
