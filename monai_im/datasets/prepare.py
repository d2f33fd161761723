"""Shared building blocks of the dataset preparation scripts (ISIC 2018, HeLa).

- getting the source archives (already on disk, or downloaded resumably and checked against a
  SHA-256 table), and extracting them safely into a scratch folder;
- loading, checking, resizing and thresholding images and masks, with errors that name the file;
- a process pool with a progress bar for the per-image work;
- building the output folder atomically: it appears complete or not at all; leftovers of an
  interrupted run into the same folder are removed by the next run (:func:`remove_stale_partials`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from monai_im.data.datalist import IMAGE_EXTENSIONS, write_datalist
from monai_im.datasets.archives import (
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_SIZE,
    ExtractionLimits,
    check_archive,
    check_free_space,
    download,
    format_size,
    parse_size,
    read_checksums,
    record_checksum,
    safe_extract,
    sha256sum,
    verify_sha256,
)
from monai_im.io import atomic_directory, atomic_write_json, save_png
from monai_im.runtime.progress import progress_bar

try:  # advisory lock of an output folder (POSIX); elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "IMAGE_EXTENSIONS",
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

CHECKSUM_FILE = "SHA256SUMS"

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


# --------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class ArchiveSpec:
    """One source archive: its file name, where to download it and its known SHA-256 (if any).

    ``folder`` is the name of the folder the archive unpacks to, accepted in place of the archive
    when the user has extracted it already (default: the file name without its extension).
    """

    name: str
    url: str | None = None
    sha256: str | None = None
    folder: str | None = None

    @property
    def folder_name(self) -> str:
        return self.folder or re.sub(r"\.(zip|tar|tar\.gz|tgz|tar\.bz2|tar\.xz)$", "", self.name)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def obtain_archives(
    specs: Sequence[ArchiveSpec],
    archives_dir: str | os.PathLike,
    download_missing: bool = False,
    sha256: Mapping[str, str] | None = None,
    checksum_file: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, tuple[Path, str | None]]:
    """Find (and, if asked, download) the archives and check their SHA-256.

    Expected hashes come from, in increasing priority: each spec's ``sha256``, the
    ``SHA256SUMS`` file in ``archives_dir`` (written by earlier downloads), ``checksum_file``
    and ``sha256`` (for example from ``--sha256 NAME=HEX``).

    - An archive already in ``archives_dir`` is verified when its hash is known, otherwise its
      hash is computed and printed; the user's file is never deleted or changed.
    - An extracted folder named like the archive (``spec.folder_name``) is accepted instead of
      the archive (no hash then).
    - With ``download_missing``, a missing archive is downloaded (resumable) into
      ``archives_dir``; a download without a known hash has its SHA-256 printed and recorded in
      ``archives_dir/SHA256SUMS``, so that later runs verify the file against it.
    - Without ``download_missing`` every missing archive is reported in one error, before any
      long work starts.

    Returns:
        ``{name: (path to archive or extracted folder, sha256 or None)}``.
    """
    base = Path(archives_dir)
    expected: dict[str, str] = {s.name: s.sha256.lower() for s in specs if s.sha256}
    expected.update(read_checksums(base / CHECKSUM_FILE))
    if checksum_file is not None:
        if not Path(checksum_file).is_file():
            raise FileNotFoundError(f"checksum file {checksum_file} not found")
        expected.update(read_checksums(checksum_file))
    expected.update({k: v.lower() for k, v in (sha256 or {}).items()})
    unknown_names = sorted(set(sha256 or {}) - {s.name for s in specs})
    if unknown_names:
        raise ValueError(
            f"SHA-256 given for unknown archive(s) {unknown_names}; expected names: {[s.name for s in specs]}"
        )

    found: dict[str, Path] = {}
    missing: list[ArchiveSpec] = []
    for spec in specs:
        path = base / spec.name
        folder = base / spec.folder_name
        if path.is_file():
            found[spec.name] = path
        elif folder.is_dir():
            found[spec.name] = folder
        else:
            missing.append(spec)
    if missing and not download_missing:
        lines = "\n".join(f"  {base / s.name}" + (f"  (from {s.url})" if s.url else "") for s in missing)
        raise FileNotFoundError(
            f"missing archive(s) in {base}:\n{lines}\nput them there (or their extracted folders), "
            f"or run with --download"
        )

    out: dict[str, tuple[Path, str | None]] = {}
    for spec in specs:
        if spec.name in found:
            path = found[spec.name]
            if path.is_dir():
                out[spec.name] = (path, None)
            elif spec.name in expected:
                out[spec.name] = (path, verify_sha256(path, expected[spec.name], progress=progress))
            else:
                digest = sha256sum(path, progress=progress)
                _log(f"{path.name}: no known SHA-256 to verify against; its SHA-256 is {digest}")
                out[spec.name] = (path, digest)
            continue
        if not spec.url:
            raise FileNotFoundError(f"{base / spec.name} is missing and there is no URL to download it from")
        path = download(spec.url, base / spec.name, sha256=expected.get(spec.name), progress=progress)
        digest = expected.get(spec.name)
        if digest is None:
            digest = sha256sum(path, progress=progress)
            record_checksum(base / CHECKSUM_FILE, spec.name, digest)
            _log(
                f"{path.name}: downloaded without a known SHA-256; recorded its SHA-256 {digest} in "
                f"{base / CHECKSUM_FILE} (later runs verify against it)"
            )
        out[spec.name] = (path, digest)
    return out


def extract_sources(
    sources: Mapping[str, Path],
    work_dir: str | os.PathLike,
    progress: bool = True,
    limits: ExtractionLimits | None = None,
) -> dict[str, Path]:
    """Safely extract every archive of ``sources`` into its own folder under ``work_dir``.

    All archives are checked (members, ``limits``, and the free space at ``work_dir`` against
    their unpacked sizes together) before the first is extracted; an already extracted folder
    is used in place. Returns ``{name: folder}``.
    """
    archives = {name: path for name, path in sources.items() if not path.is_dir()}
    total = sum(check_archive(path, limits).total_size for path in archives.values())
    if archives:
        check_free_space(work_dir, total, f"the archives {', '.join(p.name for p in archives.values())}")
    out: dict[str, Path] = {}
    for i, (name, path) in enumerate(sources.items()):
        if path.is_dir():
            out[name] = path
        else:
            target = Path(work_dir) / f"{i:02d}"
            safe_extract(path, target, progress=progress, limits=limits)
            out[name] = target
    return out


# --------------------------------------------------------------------------- output


def remove_stale_partials(
    target: str | os.PathLike, scratch_parent: str | os.PathLike | None = None
) -> list[Path]:
    """Remove the leftovers of interrupted preparations of ``target``; returns what was removed.

    Those are the staging folders ``.<name>.<random>.partial`` next to ``target`` (see
    :func:`monai_im.io.atomic_directory`) and the scratch folders ``.<name>.<random>.work`` in
    ``scratch_parent`` (default: next to ``target``; see :func:`output_folder`). Only folders
    of exactly that form are removed; the previous dataset kept as ``.<name>.old`` is not.
    Call it only while no other preparation of ``target`` runs (:func:`output_folder` holds a
    lock for that).
    """
    target = Path(target)
    scratch = Path(scratch_parent) if scratch_parent is not None else target.parent
    removed: list[Path] = []
    for folder, suffix in ((target.parent, "partial"), (scratch, "work")):
        pattern = re.compile(rf"\.{re.escape(target.name)}\.[^./\\]+\.{suffix}")
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if pattern.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                    removed.append(path)
    for path in removed:
        _log(f"removed {path}, left over from an interrupted preparation of {target}")
    return removed


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (a hidden ``.<name>.lock`` file next to it, removed after)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    lock = out_dir.with_name(f".{out_dir.name}.lock")
    while True:
        handle = open(lock, "a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FileExistsError(f"{out_dir}: another preparation into this folder is running") from None
        try:  # the lock file may have been removed by the run that held it before us
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def output_folder(
    out_dir: str | os.PathLike, overwrite: bool = False, work_dir: str | os.PathLike | None = None
) -> Iterator[tuple[Path, Path]]:
    """Yield ``(staging folder, scratch folder)`` for building a dataset atomically.

    The dataset is written into the staging folder, which replaces ``out_dir`` only when the
    block finishes without an error (see :func:`monai_im.io.atomic_directory`). The scratch
    folder (for extracted archives) is created under ``work_dir`` (default: next to
    ``out_dir``) and always removed afterwards. Leftovers of an interrupted earlier run into
    ``out_dir`` are removed first (:func:`remove_stale_partials`); a lock keeps a second run
    into the same ``out_dir`` from starting meanwhile.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch_parent = Path(work_dir) if work_dir is not None else out_dir.parent
    scratch_parent.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        remove_stale_partials(out_dir, scratch_parent)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".work", dir=scratch_parent))
        try:
            with atomic_directory(out_dir, overwrite=overwrite) as staging:
                yield staging, scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def write_dataset(
    root: Path, datalist: Mapping[str, Sequence[Mapping[str, Any]]], info: Mapping[str, Any]
) -> None:
    """Write ``root/datalist.json`` and ``root/dataset.json``."""
    write_datalist(root / "datalist.json", datalist)
    atomic_write_json(root / "dataset.json", dict(info))


# --------------------------------------------------------------------------- command line


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
