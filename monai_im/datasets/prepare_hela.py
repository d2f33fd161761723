"""Prepare the HeLa multi-label brightfield dataset (released by the Inconsistency Masks authors).

Source layout (as read by the authors' public preparation code and shown in their HeLa README;
every folder name below is an option)::

    <archive root>/[original_data/]
        train_full/ (or train/)   val/   test/
            brightfield/<name>.<ext>   grayscale brightfield image
            alive/<name>.png           mask of alive cells
            dead/<name>.png            mask of dead cells
            position/<name>.png        cell position markers (also found as mod_position/ or pos/)

Processing, per source image:

- masks are thresholded at ``> 10``;
- position markers are redrawn as filled discs (:func:`draw_position_discs`): every 8-connected
  blob of the position mask gives one point (its centroid, rounded); ``d`` is the distance to
  the nearest other point of the same source image and the disc radius is
  ``clip(floor(d / 4), 3, 8)`` pixels, so close neighbours get small discs that stay apart; a
  point without any neighbour gets the largest radius, 8. Discs are drawn on the whole image
  before cropping, so a cell has the same disc in every crop it appears in;
- the image and the three masks are cut into ``crop_size`` squares overlapping by at least
  ``overlap`` (:func:`crop_starts`); a side shorter than ``crop_size`` is zero-padded.

Output (``out_dir``)::

    images/{train,val,test}/<name>_y<Y>_x<X>.png   grayscale crops
    labels/{train,val,test}/<name>_y<Y>_x<X>.png   RGB 0/255: R alive, G dead, B position
    datalist.json   labeled / unlabeled (split of the training SOURCE images, so all crops of one
                    image are on the same side) / validation (val) / test (test); every entry
                    has a "source" field naming its source image
    dataset.json    source, licence (ODC-BY), citation, crop settings, counts, seed
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_im import __version__
from monai_im.data.datalist import split_labeled
from monai_im.datasets.archives import ExtractionLimits, parse_checksum_overrides
from monai_im.datasets.prepare import (
    ArchiveSpec,
    add_common_arguments,
    check_pair_sizes,
    extract_sources,
    limits_from_args,
    obtain_archives,
    output_folder,
    parallel_map,
    run_cli,
    write_dataset,
)
from monai_im.datasets.prepare_hela_crops import (
    CHANNELS,
    MASK_THRESHOLD,
    MAX_RADIUS,
    MIN_RADIUS,
    RADIUS_DIVISOR,
    SPLITS,
    HelaLayout,
    crop_starts,
    disc_radii,
    draw_position_discs,
    find_root,
    list_sources,
    pick_folder,
    position_points,
    process_source,
)

__all__ = [
    "HelaLayout",
    "build_parser",
    "crop_starts",
    "disc_radii",
    "draw_position_discs",
    "main",
    "position_points",
    "prepare_hela",
]

#: Google Drive file of the authors' release (HeLa/README.md of MichaelVorndran/InconsistencyMasks).
DRIVE_FILE_ID = "1JRlgYDcxYdWUhCbLHrTVO8UizLhTnF1W"
DEFAULT_URL = f"https://drive.usercontent.google.com/download?id={DRIVE_FILE_ID}&export=download&confirm=t"
ARCHIVE_NAME = "hela_dataset.zip"
SOURCE = (
    "HeLa multi-label dataset released with 'Inconsistency Masks' (arXiv:2401.14387), "
    f"https://github.com/MichaelVorndran/InconsistencyMasks (HeLa/README.md; Google Drive file {DRIVE_FILE_ID})"
)
LICENCE = "ODC-BY (Open Data Commons Attribution License)"
CITATION = "The dataset authors ask to cite https://arxiv.org/abs/2401.14387 when using this dataset."

#: Known SHA-256 of the release archive; the authors publish none.
KNOWN_SHA256: dict[str, str] = {}

# --------------------------------------------------------------------------- main function


def prepare_hela(
    out_dir: str | Path,
    archive: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    archives_dir: str | Path | None = None,
    url: str = DEFAULT_URL,
    sha256: Mapping[str, str] | None = None,
    checksum_file: str | Path | None = None,
    layout: HelaLayout | None = None,
    crop_size: int = 256,
    overlap: float = 0.6,
    labeled_fraction: float = 0.1,
    seed: int = 42,
    overwrite: bool = False,
    workers: int | None = None,
    work_dir: str | Path | None = None,
    limits: ExtractionLimits | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the HeLa dataset folder ``out_dir`` (see the module docstring).

    Exactly one source: ``archive`` (the release zip/tar on disk, verified when its SHA-256 is
    known), ``data_dir`` (already extracted) or ``download`` (saved as
    ``<archives_dir>/hela_dataset.zip``, default ``archives_dir``: ``<out_dir parent>/hela_archives``).

    The parameters are the command line's options one by one (:func:`build_parser`), called by keyword
    from the script and the tests; they stay flat, as for the other preparations, rather than be grouped.

    Args:
        out_dir: the dataset folder to write.
        archive: the release archive on disk.
        data_dir: the release already extracted.
        download: download the release (resumable) into ``archives_dir``.
        archives_dir: where a downloaded archive goes.
        url: where to download it from.
        sha256: expected SHA-256 per archive file name.
        checksum_file: a ``sha256sum``-style file with expected hashes.
        layout: source folder names (default: the authors' layout).
        crop_size: side of the square crops.
        overlap: minimal overlap of neighbouring crops, in [0, 1).
        labeled_fraction: share of the training SOURCE images whose crops stay labeled.
        seed: seed of that split.
        overwrite: replace an existing ``out_dir``.
        workers: worker processes (``None``: CPU count up to 8; 1: no pool).
        work_dir: parent of the temporary extraction folder (default: next to ``out_dir``).
        limits: bounds on what the archives may unpack to (default: :class:`ExtractionLimits`).
        progress: show progress bars.

    Returns:
        a summary ``{"out_dir", "counts", "source_images"}``.
    """
    out_dir = Path(out_dir)
    layout = layout or HelaLayout()
    crop_starts(crop_size, crop_size, overlap)  # validates crop_size and overlap
    if not 0.0 < labeled_fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
    if (archive is not None) + (data_dir is not None) + bool(download) != 1:
        raise ValueError(
            "give exactly one source: an archive (--archive), an extracted folder (--data-dir) or --download"
        )
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    if data_dir is not None:
        source, archive_info = Path(data_dir), {}
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: data folder not found")
    else:
        base = Path(archives_dir) if archives_dir is not None else out_dir.parent / "hela_archives"
        source, archive_info = _obtain_release(archive, base, url, download, sha256, checksum_file, progress)

    with output_folder(out_dir, overwrite=overwrite, work_dir=work_dir) as (staging, scratch):
        root = find_root(
            extract_sources({"hela": source}, scratch, progress=progress, limits=limits)["hela"], layout
        )
        per_split, crops = _crop_sources(root, layout, staging, crop_size, overlap, workers, progress)
        train_stems = sorted(stem for stem, *_ in per_split["train"])
        labeled_stems, unlabeled_stems = split_labeled(
            train_stems, labeled_fraction=labeled_fraction, seed=seed
        )
        groups = {
            "labeled": [("train", s) for s in labeled_stems],
            "unlabeled": [("train", s) for s in unlabeled_stems],
        }
        for key in ("validation", "test"):
            groups[key] = [(key, stem) for stem, *_ in per_split[key]]
        datalist = {key: [row for k in keys for row in crops[k]] for key, keys in groups.items()}
        counts = {key: len(rows) for key, rows in datalist.items()}
        source_images = {key: len(keys) for key, keys in groups.items()}
        info = _dataset_info(archive_info, crop_size, overlap, labeled_fraction, seed)
        write_dataset(staging, datalist, {**info, "counts": counts, "source_images": source_images})
    return {"out_dir": str(out_dir), "counts": counts, "source_images": source_images}


def _crop_sources(
    root: Path,
    layout: HelaLayout,
    staging: Path,
    crop_size: int,
    overlap: float,
    workers: int | None,
    progress: bool,
) -> tuple[dict[str, list[tuple[str, Path, Path, Path, Path]]], dict[tuple[str, str], list[dict[str, str]]]]:
    """The source images of every split (sizes checked first), and the datalist rows of the crops of each,
    written into ``staging`` by the worker processes."""
    per_split = {s: list_sources(pick_folder(root, layout.split_names(s), s), layout) for s in SPLITS}
    check_pair_sizes([(src[1], m) for rows in per_split.values() for src in rows for m in src[2:]], progress)
    tasks = [(split, *src, staging, crop_size, overlap) for split, rows in per_split.items() for src in rows]
    results = parallel_map(process_source, tasks, workers=workers, desc="crop HeLa", progress=progress)
    crops: dict[tuple[str, str], list[dict[str, str]]] = {(t[0], t[1]): r for t, r in zip(tasks, results)}
    return per_split, crops


def _obtain_release(
    archive: str | Path | None,
    base: Path,
    url: str,
    download: bool,
    sha256: Mapping[str, str] | None,
    checksum_file: str | Path | None,
    progress: bool,
) -> tuple[Path, dict[str, Any]]:
    """The release archive (given, or found or downloaded in ``base``), verified; with its record for
    ``dataset.json``."""
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise FileNotFoundError(f"{archive}: archive not found")
        specs, base = [ArchiveSpec(archive.name, sha256=KNOWN_SHA256.get(archive.name))], archive.parent
    else:
        specs = [ArchiveSpec(ARCHIVE_NAME, url=url, sha256=KNOWN_SHA256.get(ARCHIVE_NAME))]
    found = obtain_archives(
        specs,
        base,
        download_missing=download,
        sha256=sha256,
        checksum_file=checksum_file,
        progress=progress,
    )
    ((name, (source, digest)),) = found.items()
    return source, {"file": name, "url": specs[0].url, "sha256": digest}


def _dataset_info(
    archive_info: Mapping[str, Any], crop_size: int, overlap: float, labeled_fraction: float, seed: int
) -> dict[str, Any]:
    """``dataset.json`` but the counts: the source, licence and the settings of the preparation."""
    return {
        "name": "HeLa brightfield multi-label (alive, dead, position)",
        "task": "multilabel",
        "source": SOURCE,
        "archive": dict(archive_info) or None,
        "licence": LICENCE,
        "citation": CITATION,
        "size": [crop_size, crop_size],
        "channels": list(CHANNELS),
        "image": "grayscale PNG crops of the brightfield images",
        "label": "RGB PNG, 0/255 per channel: R alive, G dead, B position",
        "crop": {
            "size": crop_size,
            "min_overlap": overlap,
            "rule": "evenly spaced crops, first at 0, last flush with the far edge; short sides zero-padded",
        },
        "mask_threshold": f"> {MASK_THRESHOLD}",
        "position_discs": (
            f"one disc per 8-connected position blob at its rounded centroid; radius = "
            f"clip(floor(d / {RADIUS_DIVISOR}), {MIN_RADIUS}, {MAX_RADIUS}) px with d the distance to the nearest "
            f"other centroid of the same source image ({MAX_RADIUS} px without neighbours); drawn before cropping"
        ),
        "counts": None,
        "source_images": None,
        "labeled_fraction": labeled_fraction,
        "seed": seed,
        "split": "labeled/unlabeled split of the training source images (all crops of an image on one side); "
        "official val and test folders",
        "created_with": f"monai_im {__version__} (monai_im.datasets.prepare_hela)",
    }


# --------------------------------------------------------------------------- command line


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    d = HelaLayout()
    parser = argparse.ArgumentParser(
        prog="prepare_hela.py",
        description=(
            "Prepare the HeLa brightfield dataset (alive, dead, position masks) of the Inconsistency Masks "
            "authors for monai_im: masks thresholded at > 10, position markers redrawn as discs of radius "
            f"clip(floor(d/{RADIUS_DIVISOR}), {MIN_RADIUS}, {MAX_RADIUS}) px (d = distance to the nearest other "
            "cell; no neighbour: 8), overlapping square crops, a labeled/unlabeled split of the training "
            f"source images, datalist.json and dataset.json. Data licence {LICENCE}."
        ),
        epilog=(
            "Folder options take comma-separated alternatives tried in order. No checksum of the release is "
            "published: give one with --sha256 NAME=HEX or --checksum-file; a download with no known hash gets "
            "its SHA-256 printed and recorded in ARCHIVES_DIR/SHA256SUMS. If Google Drive answers with a "
            "confirmation page, download the file in a browser and pass it with --archive."
        ),
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="dataset folder to create")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--archive", type=Path, metavar="FILE", help="the release archive (zip or tar) on disk")
    src.add_argument("--data-dir", type=Path, metavar="DIR", help="the release, already extracted")
    src.add_argument(
        "--download", action="store_true", help=f"download the release (Google Drive file {DRIVE_FILE_ID})"
    )
    parser.add_argument(
        "--archives-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"with --download: where {ARCHIVE_NAME} is saved (default: OUT_DIR/../hela_archives)",
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="download URL (default: the authors' Google Drive file)"
    )
    parser.add_argument("--crop-size", type=int, default=256, help="side of the square crops (default: 256)")
    parser.add_argument(
        "--overlap", type=float, default=0.6, help="minimal overlap of neighbouring crops (default: 0.6)"
    )
    for field, what in (
        ("train", "training split"),
        ("val", "validation split"),
        ("test", "test split"),
        ("image", "brightfield image"),
        ("alive", "alive mask"),
        ("dead", "dead mask"),
        ("position", "position mask"),
    ):
        parser.add_argument(
            f"--{field}-folder",
            type=_names,
            default=getattr(d, field),
            metavar="NAMES",
            help=f"{what} folder name(s) (default: {','.join(getattr(d, field))})",
        )
    parser.add_argument(
        "--mask-suffix",
        default=d.mask_suffix,
        help=f"mask file = image stem + this suffix (default: {d.mask_suffix})",
    )
    add_common_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> dict[str, Any]:
    layout = HelaLayout(
        train=args.train_folder,
        val=args.val_folder,
        test=args.test_folder,
        image=args.image_folder,
        alive=args.alive_folder,
        dead=args.dead_folder,
        position=args.position_folder,
        mask_suffix=args.mask_suffix,
    )
    return prepare_hela(
        args.out_dir,
        args.archive,
        data_dir=args.data_dir,
        download=args.download,
        archives_dir=args.archives_dir,
        url=args.url,
        sha256=parse_checksum_overrides(args.sha256),
        checksum_file=args.checksum_file,
        layout=layout,
        crop_size=args.crop_size,
        overlap=args.overlap,
        labeled_fraction=args.labeled_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
        workers=args.workers,
        work_dir=args.work_dir,
        limits=limits_from_args(args),
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":  # python -m monai_im.datasets.prepare_hela
    raise SystemExit(main())
