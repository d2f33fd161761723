"""Shared building blocks of the dataset preparation scripts (ISIC 2018, HeLa, FLARE22), and their command line.

- getting the source archives (already on disk, or downloaded resumably and checked against a
  SHA-256 table), and extracting them safely into a scratch folder (:mod:`.prepare_sources`);
- loading, checking, resizing and thresholding images and masks, with errors that name the file, and
  a process pool with a progress bar for the per-image work (:mod:`.prepare_images`);
- building the output folder atomically: it appears complete or not at all; leftovers of an
  interrupted run into the same folder are removed by the next run (:mod:`.prepare_output`).

Every name of those modules is importable from here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_im.data.datalist import IMAGE_EXTENSIONS
from monai_im.datasets.archives import (
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_SIZE,
    ExtractionLimits,
    format_size,
    parse_size,
)
from monai_im.datasets.prepare_images import (
    CorruptImageError,
    DataPreparationError,
    SizeMismatchError,
    binarize,
    check_pair_sizes,
    check_same_size,
    default_workers,
    find_files,
    image_shape,
    load_image,
    parallel_map,
    resize,
    save_image,
)
from monai_im.datasets.prepare_output import output_folder, remove_stale_partials, write_dataset
from monai_im.datasets.prepare_sources import CHECKSUM_FILE, ArchiveSpec, extract_sources, obtain_archives

__all__ = [
    "IMAGE_EXTENSIONS",
    "CHECKSUM_FILE",
    "ArchiveSpec",
    "CorruptImageError",
    "DataPreparationError",
    "SizeMismatchError",
    "add_common_arguments",
    "binarize",
    "check_pair_sizes",
    "check_same_size",
    "default_workers",
    "extract_sources",
    "find_files",
    "image_shape",
    "limits_from_args",
    "load_image",
    "obtain_archives",
    "output_folder",
    "parallel_map",
    "remove_stale_partials",
    "resize",
    "run_cli",
    "save_image",
    "write_dataset",
]


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ratio_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a ratio of at least 1, such as 100, got {text!r}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the preparation scripts: split, checksums, workers, overwrite, progress."""
    parser.add_argument(
        "--labeled-fraction",
        type=float,
        default=0.1,
        help="share of the training set that keeps its labels (default: 0.1)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the labeled/unlabeled split (default: 42)"
    )
    parser.add_argument(
        "--sha256",
        action="append",
        default=[],
        metavar="NAME=HEX",
        help="expected SHA-256 of the archive whose file name is NAME; may be repeated",
    )
    parser.add_argument(
        "--checksum-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="a sha256sum-style file ('<hex>  <name>' lines) with expected SHA-256s",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes for the image work (default: the CPU count, at most 8; 1 = no pool)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the temporary folder for extracted archives goes (default: next to OUT_DIR); "
        "it is removed afterwards",
    )
    parser.add_argument(
        "--max-extract-size",
        type=_size_arg,
        default=DEFAULT_MAX_TOTAL_SIZE,
        metavar="SIZE",
        help="refuse an archive that unpacks to more than SIZE, e.g. 64G or 500M "
        f"(default: {format_size(DEFAULT_MAX_TOTAL_SIZE)})",
    )
    parser.add_argument(
        "--max-compression-ratio",
        type=_ratio_arg,
        default=DEFAULT_MAX_RATIO,
        metavar="RATIO",
        help="refuse an archive (or member) that is compressed more than RATIO:1, as zip bombs are "
        f"(default: {DEFAULT_MAX_RATIO:.0f}; images compress about 1:1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def limits_from_args(args: argparse.Namespace) -> ExtractionLimits:
    """The :class:`ExtractionLimits` of ``--max-extract-size`` and ``--max-compression-ratio``."""
    return ExtractionLimits(max_total_size=args.max_extract_size, max_ratio=args.max_compression_ratio)


def run_cli(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Mapping[str, Any]],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, call ``run(args)`` and turn expected errors into a one-line message (exit 1)."""
    args = parser.parse_args(argv)
    try:
        summary = run(args)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(
        f"dataset written to {summary['out_dir']}\n  datalist: {Path(summary['out_dir']) / 'datalist.json'} ({counts})"
    )
    return 0
