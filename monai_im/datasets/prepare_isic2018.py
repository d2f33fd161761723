"""Prepare the ISIC 2018 Task 1 (lesion boundary segmentation) dataset for monai_im.

Input: the six official Task 1 archives (training, validation and test; input images
``ISIC_<id>.jpg`` and ground truth ``ISIC_<id>_segmentation.png`` with 0/255 masks), either
already on disk (``archives_dir``; their extracted folders are accepted too) or downloaded from
the official ISIC challenge bucket.

Output (``out_dir``)::

    images/{train,validation,test}/ISIC_<id>.png   RGB, resized bilinear to size x size
    labels/{train,validation,test}/ISIC_<id>.png   0/255, resized nearest
    datalist.json   labeled / unlabeled (seeded split of the official training set; unlabeled
                    entries keep their label for evaluation and full-data training) /
                    validation / test (the official sets)
    dataset.json    source, licence, citation, size, counts, seed, archive SHA-256s

Checksums: the ISIC challenge does not publish checksums of these archives (none could be found
publicly), so the built-in table is empty. Pass ``--sha256 NAME=HEX`` or ``--checksum-file``
to verify against hashes you trust. A download with no known hash has its SHA-256 printed and
recorded in ``<archives_dir>/SHA256SUMS`` (trust on first use): later runs verify the file
against that record, and the hashes of the archives used are stored in ``dataset.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_im import __version__
from monai_im.data.datalist import split_labeled
from monai_im.datasets.archives import ExtractionLimits, parse_checksum_overrides
from monai_im.datasets.prepare import (
    ArchiveSpec,
    DataPreparationError,
    add_common_arguments,
    binarize,
    check_pair_sizes,
    check_same_size,
    extract_sources,
    find_files,
    limits_from_args,
    load_image,
    obtain_archives,
    output_folder,
    parallel_map,
    resize,
    run_cli,
    save_image,
    write_dataset,
)

__all__ = ["ARCHIVES", "KNOWN_SHA256", "OFFICIAL_BASE_URL", "build_parser", "main", "prepare_isic2018"]

OFFICIAL_BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2018/"
DATA_PAGE = "https://challenge.isic-archive.com/data/#2018"

#: split -> (input image archive, ground-truth archive), official file names.
ARCHIVES: dict[str, tuple[str, str]] = {
    "train": ("ISIC2018_Task1-2_Training_Input.zip", "ISIC2018_Task1_Training_GroundTruth.zip"),
    "validation": ("ISIC2018_Task1-2_Validation_Input.zip", "ISIC2018_Task1_Validation_GroundTruth.zip"),
    "test": ("ISIC2018_Task1-2_Test_Input.zip", "ISIC2018_Task1_Test_GroundTruth.zip"),
}

#: Known SHA-256 of the official archives. ISIC publishes none; add entries only for values
#: verified against an authoritative source (or use --sha256 / --checksum-file / SHA256SUMS).
KNOWN_SHA256: dict[str, str] = {}

#: Number of image/mask pairs of the official release, to warn about incomplete archives.
EXPECTED_COUNTS = {"train": 2594, "validation": 100, "test": 1000}

LICENCE = "CC BY-NC 4.0"
CITATION = (
    "Use of the ISIC 2018 data requires citing: (1) N. Codella, V. Rotemberg, P. Tschandl, M. E. Celebi, "
    "S. Dusza, D. Gutman, B. Helba, A. Kalloo, K. Liopyris, M. Marchetti, H. Kittler, A. Halpern, "
    "'Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the International Skin "
    "Imaging Collaboration (ISIC)', arXiv:1902.03368 (2019); (2) P. Tschandl, C. Rosendahl, H. Kittler, "
    "'The HAM10000 dataset, a large collection of multi-source dermatoscopic images of common pigmented "
    "skin lesions', Sci. Data 5, 180161 (2018), doi:10.1038/sdata.2018.161."
)

IMAGE_PATTERN = r"(ISIC_\d+)\.jpe?g"
MASK_PATTERN = r"(ISIC_\d+)_segmentation\.png"
MASK_THRESHOLD = 127


def _archive_specs(base_url: str) -> list[ArchiveSpec]:
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    return [
        ArchiveSpec(name, url=base_url + name, sha256=KNOWN_SHA256.get(name))
        for pair in ARCHIVES.values()
        for name in pair
    ]


def _pairs(
    image_root: Path, mask_root: Path, image_archive: str, mask_archive: str
) -> list[tuple[str, Path, Path]]:
    """``(id, image, mask)`` for one split; every image needs its mask and vice versa."""
    images = find_files(image_root, IMAGE_PATTERN)
    masks = find_files(mask_root, MASK_PATTERN)
    if not images:
        raise DataPreparationError(
            f"{image_archive}: no ISIC_<id>.jpg images found (is it the right archive?)"
        )
    for key, path in images.items():
        if key not in masks:
            raise DataPreparationError(
                f"{image_archive}: image {path.name} has no mask {key}_segmentation.png in {mask_archive}"
            )
    for key, path in masks.items():
        if key not in images:
            raise DataPreparationError(
                f"{mask_archive}: mask {path.name} has no image {key}.jpg in {image_archive}"
            )
    return [(key, images[key], masks[key]) for key in sorted(images)]


def _process_pair(task: tuple[Path, Path, Path, Path, int]) -> None:
    """Worker: decode, check, resize and write one image and its mask."""
    image_path, mask_path, out_image, out_label, size = task
    image, image_hw = load_image(image_path, "RGB", draft=2 * size)
    mask, mask_hw = load_image(mask_path, "L")
    check_same_size(image_path, image_hw, mask_path, mask_hw)
    save_image(out_image, resize(image, (size, size), "bilinear"))
    # nearest resizing creates no new values, so thresholding afterwards is the same and cheaper
    save_image(out_label, binarize(resize(mask, (size, size), "nearest"), MASK_THRESHOLD))


def prepare_isic2018(
    out_dir: str | Path,
    archives_dir: str | Path | None = None,
    *,
    download: bool = False,
    size: int = 256,
    labeled_fraction: float = 0.1,
    seed: int = 42,
    sha256: Mapping[str, str] | None = None,
    checksum_file: str | Path | None = None,
    base_url: str = OFFICIAL_BASE_URL,
    overwrite: bool = False,
    workers: int | None = None,
    work_dir: str | Path | None = None,
    limits: ExtractionLimits | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the ISIC 2018 Task 1 dataset folder ``out_dir`` (see the module docstring).

    Args:
        out_dir: the dataset folder to create; it appears complete or not at all.
        archives_dir: folder with the six official archives (or their extracted folders); with
            ``download`` the missing ones are downloaded there (default with ``download``:
            ``<out_dir parent>/isic2018_archives``).
        download: download missing archives from ``base_url`` (resumable).
        size: output side length in pixels.
        labeled_fraction: share of the official training set that stays labeled.
        seed: seed of the labeled/unlabeled split.
        sha256: expected SHA-256 per archive file name (overrides other sources).
        checksum_file: a ``sha256sum``-style file with expected hashes.
        base_url: folder URL of the archives (the official ISIC bucket, or a mirror of it).
        overwrite: replace an existing ``out_dir``.
        workers: worker processes (``None``: CPU count up to 8; 1: no pool).
        work_dir: parent of the temporary extraction folder (default: next to ``out_dir``).
        limits: bounds on what the archives may unpack to (default: :class:`ExtractionLimits`).
        progress: show progress bars.

    Returns:
        a summary ``{"out_dir", "counts", "archives"}``.

    The parameters are the command line's options one by one (:func:`build_parser`), called by keyword
    from the script and the tests; they stay flat, as for the other preparations, rather than be grouped.
    """
    out_dir = Path(out_dir)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    if archives_dir is None:
        if not download:
            raise ValueError("give the folder with the official archives (--archives-dir) or use --download")
        archives_dir = out_dir.parent / "isic2018_archives"
    sources = obtain_archives(
        _archive_specs(base_url),
        archives_dir,
        download_missing=download,
        sha256=sha256,
        checksum_file=checksum_file,
        progress=progress,
    )

    with output_folder(out_dir, overwrite=overwrite, work_dir=work_dir) as (staging, scratch):
        roots = extract_sources(
            {name: path for name, (path, _) in sources.items()}, scratch, progress=progress, limits=limits
        )
        entries, tasks = _resize_tasks(roots, staging, size, progress)
        parallel_map(_process_pair, tasks, workers=workers, desc="resize ISIC 2018", progress=progress)

        labeled, unlabeled = split_labeled(entries["train"], labeled_fraction=labeled_fraction, seed=seed)
        datalist = {
            "labeled": labeled,
            "unlabeled": unlabeled,
            "validation": entries["validation"],
            "test": entries["test"],
        }
        counts = {key: len(rows) for key, rows in datalist.items()}
        info = _dataset_info(sources, base_url, size, counts, labeled_fraction, seed)
        write_dataset(staging, datalist, info)
    return {"out_dir": str(out_dir), "counts": counts, "archives": info["archives"]}


def _resize_tasks(
    roots: Mapping[str, Path], staging: Path, size: int, progress: bool
) -> tuple[dict[str, list[dict[str, str]]], list[tuple[Path, Path, Path, Path, int]]]:
    """The datalist rows of every split and the resize task of each image/mask pair (sizes checked first)."""
    entries: dict[str, list[dict[str, str]]] = {}
    tasks = []
    for split, (image_archive, mask_archive) in ARCHIVES.items():
        pairs = _pairs(roots[image_archive], roots[mask_archive], image_archive, mask_archive)
        check_pair_sizes([(image, mask) for _, image, mask in pairs], progress)
        if len(pairs) != EXPECTED_COUNTS[split]:
            print(
                f"note: {split}: {len(pairs)} image/mask pairs, the official release has "
                f"{EXPECTED_COUNTS[split]}",
                file=sys.stderr,
            )
        rows = []
        for key, image, mask in pairs:
            rel_image, rel_label = f"images/{split}/{key}.png", f"labels/{split}/{key}.png"
            tasks.append((image, mask, staging / rel_image, staging / rel_label, size))
            rows.append({"image": rel_image, "label": rel_label})
        entries[split] = rows
    return entries, tasks


def _dataset_info(
    sources: Mapping[str, tuple[Path, str | None]],
    base_url: str,
    size: int,
    counts: Mapping[str, int],
    labeled_fraction: float,
    seed: int,
) -> dict[str, Any]:
    """``dataset.json``: the source, its archives and their SHA-256, licence, and the preparation's settings."""
    return {
        "name": "ISIC 2018 Task 1: lesion boundary segmentation",
        "task": "binary",
        "source": DATA_PAGE,
        "archives": {
            spec.name: {"url": spec.url, "sha256": sources[spec.name][1]} for spec in _archive_specs(base_url)
        },
        "licence": LICENCE,
        "citation": CITATION,
        "size": [size, size],
        "image": "RGB PNG, resized with a bilinear filter",
        "label": "grayscale PNG, 0 = background, 255 = lesion (mask > 127, resized nearest)",
        "counts": counts,
        "labeled_fraction": labeled_fraction,
        "seed": seed,
        "split": "seeded labeled/unlabeled split of the official training set; official validation and test sets",
        "created_with": f"monai_im {__version__} (monai_im.datasets.prepare_isic2018)",
    }


def build_parser() -> argparse.ArgumentParser:
    names = [n for pair in ARCHIVES.values() for n in pair]
    parser = argparse.ArgumentParser(
        prog="prepare_isic2018.py",
        description=(
            "Prepare ISIC 2018 Task 1 (lesion segmentation) for monai_im: safe extraction, resizing "
            "(images bilinear, masks nearest, 0/255), a seeded labeled/unlabeled split of the official "
            "training set, the official validation and test sets, datalist.json and dataset.json. "
            f"Archives: {', '.join(names)}. Data licence {LICENCE}; see dataset.json for the required citation."
        ),
        epilog=(
            "Checksums: ISIC publishes no checksums for these archives, so none are built in. Give your own "
            "with --sha256 NAME=HEX or --checksum-file; a download with no known hash gets its SHA-256 printed "
            "and recorded in ARCHIVES_DIR/SHA256SUMS, which later runs verify against."
        ),
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="dataset folder to create")
    parser.add_argument(
        "--archives-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with the official archives (or their extracted folders); with --download, "
        "where missing archives are saved (default then: OUT_DIR/../isic2018_archives)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download missing archives (resumable; about 13 GB in all)"
    )
    parser.add_argument(
        "--base-url",
        default=OFFICIAL_BASE_URL,
        help=f"folder URL of the archives, e.g. a mirror (default: {OFFICIAL_BASE_URL})",
    )
    parser.add_argument("--size", type=int, default=256, help="output side length in pixels (default: 256)")
    add_common_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return prepare_isic2018(
        args.out_dir,
        args.archives_dir,
        download=args.download,
        size=args.size,
        labeled_fraction=args.labeled_fraction,
        seed=args.seed,
        sha256=parse_checksum_overrides(args.sha256),
        checksum_file=args.checksum_file,
        base_url=args.base_url,
        overwrite=args.overwrite,
        workers=args.workers,
        work_dir=args.work_dir,
        limits=limits_from_args(args),
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":  # python -m monai_im.datasets.prepare_isic2018
    raise SystemExit(main())
