"""Prepare the FLARE22 abdominal CT dataset (13 organs, MICCAI FLARE 2022) for monai_im.

The data cannot be downloaded by a script: it is given out after a registration at
https://flare22.grand-challenge.org/. Source layout (the release, or its nnU-Net-style copy)::

    DATA_DIR/[Training/FLARE22_LabeledCase50/]
        imagesTr/ (or images/)   FLARE22_Tr_0001_0000.nii.gz ...   CT, one channel (suffix _0000)
        labelsTr/ (or labels/)   FLARE22_Tr_0001.nii.gz ...        labels 0..13
    DATA_DIR/**/*unlabeled*/     Case_00001_0000.nii.gz ...        e.g. FLARE22_UnlabeledCase1-1000/

An image and its label are matched by the case id (the file name without ``.nii.gz`` and without
``_0000``). Unlabeled folders are every folder under ``DATA_DIR`` (two levels deep) whose name holds
"unlabeled", or those named explicitly; the challenge's validation images can be added that way.

Every check runs before any file is written, each failing with one line naming the file: missing
folders, an image without its label or a label without its image, a label whose shape or affine
differs from its image's (headers only), label values outside 0..13, files that are not 3D NIfTI, and an
unsafe output folder (inside an input folder, holding one, or existing without ``overwrite``).

Output (``out_dir``, built under a temporary name and moved into place when complete, under a lock)::

    images/<case id>.nii.gz   copies (or hard links) of the inputs, or resampled to ``spacing``
    labels/<case id>.nii.gz
    datalist.json   labeled / unlabeled / validation / test; validation and test are a seeded split of
                    the labelled cases, ``labeled_fraction`` of the rest stay labelled (the others join
                    ``unlabeled`` keeping a hidden label), followed by the unlabeled cases
    dataset.json    source, labels, split, spacing, counts, seed

The input files are only read: never changed, moved or deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_im import __version__
from monai_im.datasets.flare_like import FLARE22_LABELS
from monai_im.datasets.prepare import (
    DataPreparationError,
    output_folder,
    parallel_map,
    run_cli,
    write_dataset,
)
from monai_im.datasets.prepare_flare22_cases import (
    Flare22Case,
    case_id,
    check_headers,
    check_label_values,
    check_output_dir,
    find_labeled_folders,
    find_unlabeled_folders,
    list_labeled_cases,
    list_unlabeled_cases,
    split_cases,
)

__all__ = [
    "Flare22Case",
    "build_parser",
    "case_id",
    "check_output_dir",
    "find_labeled_folders",
    "find_unlabeled_folders",
    "list_labeled_cases",
    "list_unlabeled_cases",
    "main",
    "prepare_flare22",
    "resample_case",
    "split_cases",
]

URL = "https://flare22.grand-challenge.org/"
NO_DOWNLOAD = (
    f"FLARE22 cannot be downloaded by this script: the data is given out after a registration at {URL}; "
    "download it there and pass the extracted folder with --data-dir"
)
FILE_MODES = ("copy", "hardlink")
AIR_HU = -1024.0


# --------------------------------------------------------------------------- writing


def resample_case(
    image: Path, label: Path | None, image_out: Path, label_out: Path | None, spacing: Sequence[float]
) -> tuple[int, ...]:
    """Resample an image (linear) and its label (nearest, onto the same grid) to ``spacing`` mm.

    The origin and direction are kept and the size is ``round(size * old_spacing / spacing)``; an
    integer image stays of its type (values rounded), the label is written as uint8. Returns the new
    size in voxel order (X, Y, Z).
    """
    import SimpleITK as sitk

    src = sitk.ReadImage(str(image))
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(src.GetSize(), src.GetSpacing(), spacing)]
    new_spacing = tuple(float(s) for s in spacing)

    def resample(img: sitk.Image, interpolator: int, default: float, pixel: int) -> sitk.Image:
        return sitk.Resample(
            img,
            size,
            sitk.Transform(),
            interpolator,
            src.GetOrigin(),
            new_spacing,
            src.GetDirection(),
            default,
            pixel,
        )

    out = resample(src, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(out)
    dtype = sitk.GetArrayViewFromImage(src).dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        rounded = sitk.GetImageFromArray(np.clip(np.rint(arr), info.min, info.max).astype(dtype))
        rounded.CopyInformation(out)
        out = rounded
    sitk.WriteImage(out, str(image_out), useCompression=True)
    if label is not None and label_out is not None:
        lab = sitk.Cast(sitk.ReadImage(str(label)), sitk.sitkUInt8)
        lab.CopyInformation(src)  # same grid (checked within 1e-3 mm): resample both onto one grid
        sitk.WriteImage(
            resample(lab, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), str(label_out), useCompression=True
        )
    return tuple(size)


def _transfer(src: Path, dst: Path, mode: str) -> None:
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not supported: copy
            pass
    shutil.copyfile(src, dst)


def _out_name(case: str, src: Path, resampled: bool) -> str:
    return f"{case}.nii.gz" if resampled or src.name.lower().endswith(".gz") else f"{case}.nii"


def _write_case(task: tuple[Flare22Case, Path, tuple[float, ...] | None, str]) -> dict[str, str]:
    """Worker: write one case into the staging folder; returns its datalist entry."""
    case, staging, spacing, mode = task
    entry = {"image": f"images/{_out_name(case.case_id, case.image, spacing is not None)}"}
    if case.label is not None:
        entry["label"] = f"labels/{_out_name(case.case_id, case.label, spacing is not None)}"
    label_out = staging / entry["label"] if case.label is not None else None
    if spacing is not None:
        resample_case(case.image, case.label, staging / entry["image"], label_out, spacing)
    else:
        _transfer(case.image, staging / entry["image"], mode)
        if case.label is not None and label_out is not None:
            _transfer(case.label, label_out, mode)
    return entry


# --------------------------------------------------------------------------- main function


def _description(
    counts: dict[str, int],
    labelled_cases: int,
    split: dict[str, Any],
    spacing: Sequence[float] | None,
    files: str,
    folders: Sequence[Path],
) -> dict[str, Any]:
    """The contents of ``dataset.json``."""
    return {
        "name": "FLARE22",
        "kind": "flare",
        "description": "MICCAI FLARE 2022: abdominal CT, 13 organs; labelled and unlabeled cases",
        "source": URL,
        "licence": f"see the data agreement of the challenge ({URL}); no redistribution",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i + 1): n for i, n in enumerate(FLARE22_LABELS)}},
        "spacing": list(spacing) if spacing is not None else "original",
        "files": "resampled (image linear, label nearest)" if spacing is not None else files,
        "counts": counts,
        "labelled_cases": labelled_cases,
        "split": split,
        "unlabeled_folders": [str(f) for f in folders],
        "created_with": f"monai_im {__version__} (monai_im.datasets.prepare_flare22)",
    }


def _check_options(
    files: str, spacing: Sequence[float] | None, num_unlabeled: int | None, labeled_fraction: float
) -> tuple[float, ...] | None:
    """Refuse bad options of :func:`prepare_flare22` before any work; ``spacing`` as a tuple of floats."""
    if files not in FILE_MODES:
        raise ValueError(f"files must be one of {FILE_MODES}, got {files!r}")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be three positive sizes in mm, got {spacing}")
    if num_unlabeled is not None and num_unlabeled < 0:
        raise ValueError(f"num_unlabeled must not be negative, got {num_unlabeled}")
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    return spacing


def prepare_flare22(
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    unlabeled_dirs: Sequence[str | os.PathLike] | None = None,
    num_val: int = 5,
    num_test: int = 10,
    num_unlabeled: int | None = None,
    labeled_fraction: float = 1.0,
    spacing: Sequence[float] | None = None,
    files: str = "copy",
    images_folder: Sequence[str] = ("imagesTr", "images"),
    labels_folder: Sequence[str] = ("labelsTr", "labels"),
    seed: int = 42,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the FLARE22 dataset folder ``out_dir`` from ``data_dir`` (see the module docstring).

    Args:
        out_dir: the dataset folder to create, outside every input folder.
        data_dir: the FLARE22 training data (holding ``imagesTr``/``labelsTr``, maybe a level or two down).
        unlabeled_dirs: folders of unlabeled images; ``None`` finds the folders named ``*unlabeled*``.
        num_val: labelled cases for validation (seeded).
        num_test: labelled cases for testing (seeded).
        num_unlabeled: use at most this many unlabeled images (a seeded choice; the choices for N and
            a larger N are nested); ``None`` uses all.
        labeled_fraction: share of the remaining labelled cases that keep their labels.
        spacing: resample to this voxel size in mm (X, Y, Z voxel order); ``None`` keeps the files as they are.
        files: without ``spacing``, ``"copy"`` the inputs or ``"hardlink"`` them (copied where a link
            cannot be made; only safe as long as nobody edits the output files in place).
        images_folder: names of the image folder, tried in order.
        labels_folder: names of the label folder, tried in order.
        seed: seed of the splits and of the unlabeled choice.
        overwrite: replace an existing, non-empty ``out_dir``.
        workers: worker processes (``None``: CPU count up to 8; 1: no pool).
        progress: show progress bars.

    Returns:
        a summary ``{"out_dir", "counts"}``.

    The parameters are the command line's options one by one (:func:`build_parser`), called by keyword
    from the script and the tests; they stay flat, as for the other preparations, rather than be grouped.
    """
    spacing = _check_options(files, spacing, num_unlabeled, labeled_fraction)
    data_dir = Path(data_dir)
    images_dir, labels_dir = find_labeled_folders(data_dir, images_folder, labels_folder)
    labeled = list_labeled_cases(images_dir, labels_dir)
    splits = split_cases([c.case_id for c in labeled], num_val, num_test, labeled_fraction, seed)
    folders = (
        find_unlabeled_folders(data_dir) if unlabeled_dirs is None else [Path(d) for d in unlabeled_dirs]
    )
    unlabeled = list_unlabeled_cases(folders, exclude={c.case_id for c in labeled})
    if num_unlabeled is not None and num_unlabeled < len(unlabeled):
        chosen = np.random.default_rng(seed).permutation(len(unlabeled))[:num_unlabeled]
        unlabeled = [unlabeled[i] for i in sorted(chosen)]
    replace = check_output_dir(out_dir, [data_dir, images_dir, labels_dir, *folders], overwrite)
    check_headers([*labeled, *unlabeled], progress)
    check_label_values(labeled, workers, progress)

    by_id = {c.case_id: c for c in labeled}
    with output_folder(out_dir, overwrite=replace) as (staging, _scratch):
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        ordered = [(key, by_id[i]) for key, ids in splits.items() for i in ids] + [
            ("unlabeled", c) for c in unlabeled
        ]
        tasks = [(case, staging, spacing, files) for _, case in ordered]
        desc = "resample FLARE22" if spacing is not None else f"{files} FLARE22"
        entries = parallel_map(_write_case, tasks, workers=workers, desc=desc, progress=progress)
        datalist: dict[str, list[dict[str, str]]] = {key: [] for key in splits}
        for (key, _), entry in zip(ordered, entries):
            datalist[key].append(entry)
        counts = {key: len(rows) for key, rows in datalist.items()}
        settings = {"num_val": num_val, "num_test": num_test, "labeled_fraction": labeled_fraction}
        settings.update(num_unlabeled=num_unlabeled, seed=seed)
        info = _description(counts, len(labeled), settings, spacing, files, folders)
        write_dataset(staging, datalist, info)
    return {"out_dir": str(out_dir), "counts": counts}


# --------------------------------------------------------------------------- command line


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_flare22.py",
        description=(
            "Prepare the FLARE22 abdominal CT dataset (13 organs) for monai_im: check the cases, split the "
            "labelled ones into labeled/validation/test, add the unlabeled ones, copy or resample the NIfTI "
            "files and write datalist.json and dataset.json. The inputs are only read."
        ),
        epilog=f"FLARE22 needs a registration: download it at {URL} (there is no --download).",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="dataset folder to create")
    parser.add_argument(
        "--data-dir",
        "--source",
        dest="data_dir",
        type=Path,
        metavar="DIR",
        help="the FLARE22 training data (with imagesTr/, labelsTr/); --source is the same option",
    )
    parser.add_argument("--download", action="store_true", help="not possible: FLARE22 needs a registration")
    parser.add_argument(
        "--unlabeled-dir",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help="a folder of unlabeled images; may be repeated (default: the folders named *unlabeled* in DATA_DIR)",
    )
    parser.add_argument("--num-val", type=int, default=5, help="labelled cases for validation (default: 5)")
    parser.add_argument("--num-test", type=int, default=10, help="labelled cases for testing (default: 10)")
    parser.add_argument(
        "--num-unlabeled", type=int, default=None, help="use at most N unlabeled images (default: all)"
    )
    parser.add_argument(
        "--labeled-fraction",
        type=float,
        default=1.0,
        help="share of the other labelled cases that keep their labels; the rest join unlabeled (default: 1.0)",
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="resample to this voxel size in mm (image linear, label nearest); default: keep the files",
    )
    parser.add_argument(
        "--files",
        choices=FILE_MODES,
        default="copy",
        help="without --spacing: copy the inputs, or hard-link them to save space (default: copy)",
    )
    parser.add_argument("--images-folder", type=_names, default=("imagesTr", "images"), metavar="NAMES")
    parser.add_argument("--labels-folder", type=_names, default=("labelsTr", "labels"), metavar="NAMES")
    parser.add_argument("--seed", type=int, default=42, help="seed of the splits (default: 42)")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: CPUs, at most 8)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.download:
        raise DataPreparationError(NO_DOWNLOAD)
    if args.data_dir is None:
        raise DataPreparationError(f"give the FLARE22 training data with --data-dir (download it at {URL})")
    return prepare_flare22(
        args.out_dir,
        args.data_dir,
        unlabeled_dirs=args.unlabeled_dir,
        num_val=args.num_val,
        num_test=args.num_test,
        num_unlabeled=args.num_unlabeled,
        labeled_fraction=args.labeled_fraction,
        spacing=args.spacing,
        files=args.files,
        images_folder=args.images_folder,
        labels_folder=args.labels_folder,
        seed=args.seed,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":  # python -m monai_im.datasets.prepare_flare22
    raise SystemExit(main())
