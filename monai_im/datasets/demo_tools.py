"""The rules every seeded demo dataset shares (the 2D ones of :mod:`monai_im.datasets.synthetic` and the
volumes of :mod:`monai_im.datasets.flare_like`): reusing a finished dataset, and the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai_im.io import load_json

__all__ = ["dataset_arguments", "dataset_options", "ensure_dataset", "run_dataset_command"]

logger = logging.getLogger(__name__)


def ensure_dataset(root: str | os.PathLike, make: Callable[..., Any], **kwargs: Any) -> str:
    """Return ``root``, calling ``make(root, **kwargs)`` first if ``root`` holds no ``datalist.json``.

    The one rule of the demo datasets' ``ensure_*`` functions: an existing dataset is reused as it is
    (``kwargs`` are not compared with it); a folder that exists, is not empty and holds no datalist is
    refused; an empty one may be replaced; when another process made the dataset at the same time, its
    dataset is used.
    """
    path = Path(root)
    if (path / "datalist.json").is_file():
        logger.info("reusing the dataset in %s", path)
        return str(root)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"{path} exists but holds no datalist.json; refusing to write a demo dataset over it "
            "(point dataset_dir at an empty or new folder)"
        )
    kwargs.setdefault("overwrite", path.exists())  # an empty folder may be replaced
    try:
        make(path, **kwargs)
    except OSError:
        if (path / "datalist.json").is_file():  # another process made it at the same time
            return str(root)
        raise
    return str(root)


def dataset_arguments(
    parser: argparse.ArgumentParser,
    unit: str,
    num_train: int,
    num_val: int,
    num_test: int,
    labeled_fraction: float,
) -> argparse.ArgumentParser:
    """The options every demo dataset command shares: output folder, split sizes, labeled fraction, seed,
    ``--overwrite`` and ``--quiet`` (``unit``: "images" or "volumes", for the help texts)."""
    parser.add_argument("out_dir", type=Path, help="dataset folder to create")
    parser.add_argument(
        "--num-train", type=int, default=num_train, help=f"training {unit} (default: %(default)s)"
    )
    parser.add_argument(
        "--num-val", type=int, default=num_val, help=f"validation {unit} (default: %(default)s)"
    )
    parser.add_argument("--num-test", type=int, default=num_test, help=f"test {unit} (default: %(default)s)")
    parser.add_argument(
        "--labeled-fraction",
        type=float,
        default=labeled_fraction,
        help=f"share of labeled training {unit} (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a ``make_*_dataset`` function from the options of :func:`dataset_arguments`."""
    return {
        "num_train": args.num_train,
        "num_val": args.num_val,
        "num_test": args.num_test,
        "labeled_fraction": args.labeled_fraction,
        "seed": args.seed,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
    }


def run_dataset_command(make: Callable[[], Path], what: str) -> int:
    """Run a demo dataset command's ``make()``: a one-line error (exit status 2) for a bad option or an
    existing folder, else one line saying what was written where (``what``: e.g. "isic_like images")."""
    try:
        out = make()
    except (OSError, ValueError) as e:
        hint = " (pass --overwrite to replace it)" if isinstance(e, FileExistsError) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    counts = load_json(out / "dataset.json")["counts"]
    print(
        f"wrote {sum(counts.values())} {what} ("
        + ", ".join(f"{n} {key}" for key, n in counts.items())
        + f") to {out}; datalist: {out / 'datalist.json'}"
    )
    return 0
