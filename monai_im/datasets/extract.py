"""Safe extraction of dataset archives: every member is checked before anything is written.

:func:`safe_extract` checks every member of a zip or tar archive *before* writing anything: it
refuses absolute paths, ``..`` components, links, special files, and archives that unpack to more
than :class:`ExtractionLimits` allow (total size, compression ratio) or than the free disk space;
while streaming, a member that inflates beyond its declared size is stopped. So nothing is ever
written outside ``dest`` and a zip bomb writes nothing at all. :func:`check_archive` runs the same
checks from the headers alone, without extracting, and :func:`check_free_space` compares a size
with the free space of a folder's file system.

Only the standard library (``zipfile``, ``tarfile``, ``shutil``) and the package's progress bars
are used. Downloading and checksumming live in :mod:`monai_im.datasets.archives`, which re-exports
the names of this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from monai_im.runtime.progress import progress_bar

__all__ = [
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL_SIZE",
    "RATIO_MIN_SIZE",
    "ArchiveContents",
    "ArchiveError",
    "ArchiveLimitError",
    "ExtractionLimits",
    "NotEnoughSpaceError",
    "UnsafeArchiveError",
    "check_archive",
    "check_free_space",
    "format_size",
    "parse_size",
    "safe_extract",
]

_CHUNK = 1 << 20
_GIB = 1024**3
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

#: Default bound on what one archive may unpack to (the largest real input, the ISIC 2018
#: training images, is about 10.4 GB of JPEGs; the HeLa release a few GB of PNGs).
DEFAULT_MAX_TOTAL_SIZE = 64 * _GIB
#: Default bound on the compression ratio (uncompressed / compressed) of a member and of the
#: whole archive: images compress about 1:1, deflate bombs about 1000:1.
DEFAULT_MAX_RATIO = 100.0
#: Members (and archives) that unpack to less than this are not held to the ratio bound, since
#: small text files can compress very well.
RATIO_MIN_SIZE = 1 << 20


class ArchiveError(ValueError):
    """An archive cannot be read (not a zip/tar file, corrupt member)."""


class UnsafeArchiveError(ArchiveError):
    """An archive member would be written outside the target folder."""


class ArchiveLimitError(UnsafeArchiveError):
    """An archive would unpack to more than the allowed size or compression ratio."""


class NotEnoughSpaceError(ArchiveError):
    """The target file system has less free space than the archive unpacks to."""


@dataclass(frozen=True)
class ExtractionLimits:
    """Bounds checked before and while an archive is extracted; ``None`` switches a bound off.

    Args:
        max_total_size: most bytes the archive may unpack to in all.
        max_ratio: most ``uncompressed / compressed`` of a member (zip) and of the whole archive,
            for sizes from :data:`RATIO_MIN_SIZE` on.
    """

    max_total_size: int | None = DEFAULT_MAX_TOTAL_SIZE
    max_ratio: float | None = DEFAULT_MAX_RATIO

    def __post_init__(self) -> None:
        if self.max_total_size is not None and self.max_total_size <= 0:
            raise ValueError(f"max_total_size must be positive, got {self.max_total_size}")
        if self.max_ratio is not None and self.max_ratio < 1:
            raise ValueError(f"max_ratio must be at least 1, got {self.max_ratio}")


@dataclass(frozen=True)
class ArchiveContents:
    """What :func:`check_archive` found: the archive type, member names and unpacked size."""

    kind: str
    names: tuple[str, ...]
    total_size: int


def format_size(n: float) -> str:
    """``n`` bytes as a short human-readable string (``"10.4 GiB"``)."""
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


def parse_size(text: str) -> int:
    """Parse ``"64G"``, ``"500MiB"``, ``"1.5TB"`` or ``"1000"`` (bytes); binary multiples."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a positive size such as 64G, 500M or 1000 (bytes), got {text!r}")
    return int(float(m.group(1)) * 1024 ** "BKMGT".index((m.group(2) or "B").upper()))


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise :class:`NotEnoughSpaceError` when the file system of ``folder`` has less than ``needed`` free.

    ``folder`` need not exist yet: its nearest existing parent is asked. ``what`` names what
    needs the space in the message.
    """
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise NotEnoughSpaceError(
            f"{what}: unpacks to {format_size(needed)} but only {format_size(free)} are free at {folder}"
        )


def _unsafe_name(name: str) -> str | None:
    """Why the member name ``name`` may not be extracted, or ``None`` when it is safe."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in norm.split("/"):
        return "'..' path component"
    if "\x00" in norm:
        return "NUL character in the name"
    return None


def _unsafe_zip_member(info: zipfile.ZipInfo) -> str | None:
    reason = _unsafe_name(info.filename)
    if reason:
        return reason
    ftype = stat.S_IFMT(info.external_attr >> 16)
    if ftype == stat.S_IFLNK:
        return "symbolic link; links are not extracted"
    if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"special file (mode {ftype:o})"
    if info.flag_bits & 0x1:
        return "encrypted member"
    if info.compress_type not in _ZIP_METHODS:
        return (
            f"unsupported compression method {info.compress_type}; "
            f"extract the archive with another tool and pass the folder"
        )
    return None


def _unsafe_tar_member(member: tarfile.TarInfo) -> str | None:
    reason = _unsafe_name(member.name)
    if reason:
        return reason
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        return f"{kind} link to {member.linkname!r}; links are not extracted"
    if not (member.isfile() or member.isdir()):
        return "device, FIFO or other special file"
    return None


def _archive_kind(archive: Path) -> str:
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except OSError:
        pass
    raise ArchiveError(f"{archive}: not a zip or tar archive (incomplete or corrupt download?)")


def _check_limits(
    archive: Path, what: str, total: int, size: int, packed: int | None, limits: ExtractionLimits
) -> None:
    """Refuse ``what`` (a member, or the whole archive) when ``total`` or ``size / packed`` is too large."""
    reason = None
    if limits.max_total_size is not None and total > limits.max_total_size:
        reason = (
            f"the archive unpacks to more than the limit of {format_size(limits.max_total_size)}; "
            f"raise the limit (max_total_size, --max-extract-size) if you trust this archive"
        )
    elif limits.max_ratio is not None and packed is not None and size >= RATIO_MIN_SIZE:
        ratio = size / max(packed, 1)
        if ratio > limits.max_ratio:
            reason = (
                f"compression ratio {ratio:.0f}:1 is above the limit of {limits.max_ratio:.0f}:1 "
                f"(a zip bomb?); raise the limit (max_ratio, --max-compression-ratio) "
                f"if you trust this archive"
            )
    if reason:
        raise ArchiveLimitError(f"{archive}: refusing to extract {what} ({reason}); nothing was extracted")


def check_archive(archive: str | os.PathLike, limits: ExtractionLimits | None = None) -> ArchiveContents:
    """Check every member of a zip or tar archive from its headers, without extracting anything.

    Args:
        archive: a ``.zip`` or (compressed) tar file.
        limits: size and compression-ratio bounds (default: :class:`ExtractionLimits`).

    Returns:
        the archive type, member names and total unpacked size.

    Raises:
        FileNotFoundError: no such file.
        ArchiveError: not a readable zip/tar archive.
        UnsafeArchiveError: a member has an absolute path or a ``..`` component, is a link, a
            special file or an encrypted member; the message names the archive and the member.
        ArchiveLimitError: the archive unpacks to more than ``limits`` allow.
    """
    archive = Path(archive)
    limits = limits or ExtractionLimits()
    kind = _archive_kind(archive)
    names: list[str] = []
    total = 0
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                members = [
                    (i.filename, i.file_size, i.compress_size, _unsafe_zip_member(i)) for i in zf.infolist()
                ]
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = [(m.name, m.size if m.isfile() else 0, None, _unsafe_tar_member(m)) for m in tf]
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(f"{archive}: cannot read the archive ({e})") from e
    for name, size, packed, reason in members:
        if reason:
            raise UnsafeArchiveError(
                f"{archive}: refusing to extract member {name!r} ({reason}); nothing was extracted"
            )
        total += size
        _check_limits(archive, f"member {name!r}", total, size, packed, limits)
        names.append(name)
    # the whole archive against its file size: catches many small members and tar bombs
    _check_limits(archive, f"any of its {len(names)} members", total, total, archive.stat().st_size, limits)
    return ArchiveContents(kind, tuple(names), total)


def _inside(root: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def _copy_member(src: IO[bytes], target: Path, declared: int, archive: Path, name: str, bar: tqdm) -> None:
    """Stream one member to ``target``, stopping as soon as it inflates beyond its ``declared`` size."""
    written = 0
    with open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > declared:
                raise ArchiveLimitError(
                    f"{archive}: member {name!r} inflates beyond its declared size of "
                    f"{format_size(declared)}; extraction stopped"
                )
            dst.write(chunk)
            bar.update(len(chunk))


def _members(
    stack: contextlib.ExitStack, archive: Path, kind: str
) -> list[tuple[str, bool, int, Callable[[], Any]]]:
    """``(name, is a folder, size, open it)`` of every member of the zip or tar ``archive``, opened on ``stack``."""
    if kind == "zip":
        zf = stack.enter_context(zipfile.ZipFile(archive))
        return [(i.filename, i.is_dir(), i.file_size, functools.partial(zf.open, i)) for i in zf.infolist()]
    tf = stack.enter_context(tarfile.open(archive, "r:*"))
    return [(m.name, m.isdir(), m.size, functools.partial(tf.extractfile, m)) for m in tf]


def safe_extract(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    progress: bool = True,
    limits: ExtractionLimits | None = None,
) -> list[Path]:
    """Extract a zip or tar archive into ``dest``, bounded in size, refusing anything unsafe.

    Before anything is written, every member is checked with :func:`check_archive` (paths,
    links, special files, unpacked size and compression ratio from the headers) and the free
    space at ``dest`` is compared with the declared unpacked size. While streaming, a member that
    inflates beyond its declared size is stopped. On any error, what this call wrote is removed
    again (``dest`` itself when this call created it). Only regular files and folders are
    extracted.

    ``monai.apps.utils.extractall`` is not used because it writes members unchecked and skips a
    non-empty target.

    Args:
        archive: a ``.zip`` or (compressed) tar file.
        dest: the target folder (created when missing).
        progress: show a progress bar over the unpacked bytes.
        limits: size and compression-ratio bounds (default: :class:`ExtractionLimits`).

    Returns:
        the extracted files (not folders).
    """
    archive, dest = Path(archive), Path(dest)
    contents = check_archive(archive, limits)
    check_free_space(dest, contents.total_size, str(archive))
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    current: Path | None = None
    name = ""
    bar = progress_bar(
        total=contents.total_size,
        desc=f"extract {archive.name}",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        leave=False,
    )
    try:
        with contextlib.ExitStack() as stack:
            for name, is_dir, size, open_member in _members(stack, archive, contents.kind):
                target = dest / name.replace("\\", "/")
                if not _inside(root, target):
                    raise UnsafeArchiveError(f"{archive}: member {name!r} resolves outside {dest}")
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                current = target
                with open_member() as src:
                    _copy_member(src, target, size, archive, name, bar)
                written.append(target)
                current = None
    except BaseException as e:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for path in [*written, *([current] if current else [])]:
                path.unlink(missing_ok=True)
        if isinstance(e, (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError)):
            at = f" at member {name!r}" if name else ""
            raise ArchiveError(f"{archive}: extraction failed{at} ({e}); what was written is removed") from e
        raise
    finally:
        bar.close()
    return written
