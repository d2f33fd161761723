"""Downloading and checksumming dataset archives.

Everything here uses the standard library (``urllib``, ``hashlib``) plus the package's progress bars.

- :func:`download` fetches a URL into ``<dest>.part``, resumes an interrupted transfer with an
  HTTP ``Range`` request, verifies the SHA-256 when one is given and renames the finished file
  atomically to ``dest``; a file the user already has is never deleted.
- :func:`read_checksums` / :func:`record_checksum` read and update ``SHA256SUMS`` files in the
  format of ``sha256sum`` (``<hex>  <name>``).

Extracting the archives safely (:func:`safe_extract`, :func:`check_archive`, :class:`ExtractionLimits`
and their errors) lives in :mod:`monai_im.datasets.extract`; its names are re-exported here, so that
``from monai_im.datasets.archives import safe_extract`` keeps working.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from monai_im.datasets.extract import (
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_SIZE,
    RATIO_MIN_SIZE,
    ArchiveContents,
    ArchiveError,
    ArchiveLimitError,
    ExtractionLimits,
    NotEnoughSpaceError,
    UnsafeArchiveError,
    check_archive,
    check_free_space,
    format_size,
    parse_size,
    safe_extract,
)
from monai_im.io import atomic_write_bytes
from monai_im.runtime.progress import progress_bar

__all__ = [
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL_SIZE",
    "RATIO_MIN_SIZE",
    "ArchiveContents",
    "ArchiveError",
    "ArchiveLimitError",
    "ChecksumError",
    "DownloadError",
    "ExtractionLimits",
    "NotEnoughSpaceError",
    "UnsafeArchiveError",
    "check_archive",
    "check_free_space",
    "download",
    "format_size",
    "parse_size",
    "parse_checksum_overrides",
    "read_checksums",
    "record_checksum",
    "safe_extract",
    "sha256sum",
    "verify_sha256",
]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_USER_AGENT = "monai_im-data-downloader"


class DownloadError(RuntimeError):
    """A download failed (HTTP error, interrupted transfer, unexpected content)."""


class ChecksumError(ValueError):
    """A file does not have the expected SHA-256."""


# --------------------------------------------------------------------------- checksums


def _normalise_hex(digest: str, what: str = "SHA-256") -> str:
    digest = digest.strip()
    if not _HEX64.match(digest):
        raise ValueError(f"{what} must be 64 hexadecimal characters, got {digest!r}")
    return digest.lower()


def sha256sum(path: str | os.PathLike, progress: bool = False, chunk_size: int = _CHUNK) -> str:
    """Return the SHA-256 of a file as lowercase hex.

    Args:
        path: the file.
        progress: show a progress bar (useful for multi-gigabyte archives).
        chunk_size: bytes read at a time.
    """
    path = Path(path)
    h = hashlib.sha256()
    with (
        open(path, "rb") as f,
        progress_bar(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"sha256 {path.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while chunk := f.read(chunk_size):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, progress: bool = False) -> str:
    """Check that ``path`` has the SHA-256 ``expected``; the file is never modified or deleted.

    Returns:
        the (matching) digest.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ChecksumError: the digest differs; the message names the file and both digests.
    """
    path = Path(path)
    expected = _normalise_hex(expected)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found, cannot verify its SHA-256")
    actual = sha256sum(path, progress=progress)
    if actual != expected:
        raise ChecksumError(f"{path}: SHA-256 mismatch: expected {expected}, got {actual}")
    return actual


def read_checksums(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``sha256sum``-style file (``<hex>  <name>`` or ``<hex> *<name>`` per line).

    Blank lines and lines starting with ``#`` are skipped; names are reduced to their base name.
    A missing file gives an empty mapping.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not _HEX64.match(parts[0]):
            raise ValueError(f"{path}:{lineno}: expected '<sha256 hex>  <file name>', got {line!r}")
        name = parts[1].strip().lstrip("*")
        out[posixpath.basename(name.replace("\\", "/"))] = parts[0].lower()
    return out


def record_checksum(path: str | os.PathLike, name: str, digest: str) -> Path:
    """Add or update the line for ``name`` in the checksum file ``path`` (written atomically)."""
    path = Path(path)
    table = read_checksums(path)
    table[name] = _normalise_hex(digest)
    text = "".join(f"{h}  {n}\n" for n, h in sorted(table.items()))
    return atomic_write_bytes(path, text.encode("utf-8"))


def parse_checksum_overrides(items: Iterable[str]) -> dict[str, str]:
    """Parse ``NAME=HEX`` strings (as given on a command line) into a mapping."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, digest = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected NAME=SHA256HEX, got {item!r}")
        out[name.strip()] = _normalise_hex(digest, what=f"SHA-256 for {name.strip()}")
    return out


# --------------------------------------------------------------------------- download


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` (or ``bytes */TOTAL``) into ``(start, total)``."""
    if not value:
        return None, None
    m = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _finish(part: Path, dest: Path, sha256: str | None, progress: bool) -> Path:
    if sha256 is not None:
        actual = sha256sum(part, progress=progress)
        if actual != sha256:
            part.unlink()
            raise ChecksumError(
                f"{dest}: SHA-256 mismatch of the downloaded file: expected {sha256}, got {actual}; "
                f"the bad download was removed"
            )
    os.replace(part, dest)
    return dest


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    chunk_size: int = _CHUNK,
) -> Path:
    """Download ``url`` to ``dest``, resumably, verifying the SHA-256 when given.

    The data go to ``<dest>.part``; an existing ``.part`` (from an interrupted run) is continued
    with an HTTP ``Range`` request (a server that ignores it is answered by starting over). Only
    a complete file with the right hash is renamed to ``dest``, atomically.

    An existing ``dest`` is not downloaded again; when ``sha256`` is given it is verified, and a
    mismatch raises :class:`ChecksumError` without deleting the user's file. A downloaded file
    with the wrong hash is removed (only that ``.part``) before the error is raised.

    Args:
        url: ``http://`` or ``https://`` address.
        dest: the final file.
        sha256: the expected SHA-256 (hex), or ``None`` to skip verification.
        progress: show a progress bar.
        timeout: socket timeout in seconds.
        retries: how many times an interrupted transfer is resumed automatically before giving up
            (the partial ``.part`` is kept, so a later call continues where it stopped).
        chunk_size: bytes read at a time.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    dest = Path(dest)
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"download: only http(s) URLs are supported, got {url!r}")
    if sha256 is not None:
        sha256 = _normalise_hex(sha256)
    if dest.exists():
        if sha256 is not None:
            verify_sha256(dest, sha256, progress=progress)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and offset:
                _, total = _content_range(e.headers.get("Content-Range"))
                if total is not None and total == offset:  # the .part already holds everything
                    return _finish(part, dest, sha256, progress)
                part.unlink()  # a stale .part that does not fit this file: start over
                continue
            raise DownloadError(
                f"{url}: HTTP error {e.code} ({e.reason}) while downloading {dest.name}"
            ) from e
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"{url}: cannot download {dest.name} ({e})") from e

        with response:
            written = _receive(response, url, dest, part, offset, chunk_size, progress)
        if written is None:  # not the bytes we asked for: start over
            continue
        complete, reason = written
        if complete:
            return _finish(part, dest, sha256, progress)
        attempt += 1
        if attempt > retries:
            raise DownloadError(
                f"{url}: download of {dest.name} was interrupted ({reason}); the partial file {part} "
                f"is kept, run again to resume"
            )


def _receive(
    response: http.client.HTTPResponse,
    url: str,
    dest: Path,
    part: Path,
    offset: int,
    chunk_size: int,
    progress: bool,
) -> tuple[bool, str] | None:
    """Write the body of one HTTP ``response`` into ``part`` (appended to its first ``offset`` bytes when
    the server continues them); ``(complete, why not)``, or None when the answer does not continue the
    ``.part`` (then removed) and the download starts over.

    Raises:
        DownloadError: the server answered with an HTML page instead of the file.
    """
    status = getattr(response, "status", 200)
    if offset and status == 206:
        start, _ = _content_range(response.headers.get("Content-Range"))
        if start != offset:  # not the bytes we asked for: start over
            part.unlink()
            return None
        mode = "ab"
    else:
        mode, offset = "wb", 0  # the server ignored the Range request
    ctype = (response.headers.get("Content-Type") or "").lower()
    if ctype.startswith("text/html") and not dest.name.lower().endswith((".html", ".htm")):
        raise DownloadError(
            f"{url}: the server answered with an HTML page instead of {dest.name} "
            f"(a login or confirmation page?); download the file by hand and pass it instead"
        )
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    try:
        with (
            open(part, mode) as f,
            progress_bar(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(chunk_size):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        complete = total is None or part.stat().st_size == total
        reason = "" if complete else f"got {part.stat().st_size} of {total} bytes"
    except (http.client.IncompleteRead, OSError) as e:
        complete, reason = False, str(e) or type(e).__name__
    return complete, reason
