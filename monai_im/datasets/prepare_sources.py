"""The source archives of a dataset preparation: found on disk or downloaded resumably, checked against a
SHA-256 table, and extracted safely into a scratch folder."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from monai_im.datasets.archives import (
    ExtractionLimits,
    check_archive,
    check_free_space,
    download,
    read_checksums,
    record_checksum,
    safe_extract,
    sha256sum,
    verify_sha256,
)

__all__ = ["CHECKSUM_FILE", "ArchiveSpec", "extract_sources", "log", "obtain_archives"]

CHECKSUM_FILE = "SHA256SUMS"


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


def log(msg: str) -> None:
    """Print a note of the preparation to stderr."""
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
    expected = _expected_hashes(specs, base, sha256, checksum_file)
    found = _find_on_disk(specs, base, download_missing)
    out: dict[str, tuple[Path, str | None]] = {}
    for spec in specs:
        if spec.name in found:
            out[spec.name] = _checked(found[spec.name], expected.get(spec.name), progress)
        else:
            out[spec.name] = _downloaded(spec, base, expected.get(spec.name), progress)
    return out


def _expected_hashes(
    specs: Sequence[ArchiveSpec],
    base: Path,
    sha256: Mapping[str, str] | None,
    checksum_file: str | os.PathLike | None,
) -> dict[str, str]:
    """The expected SHA-256 of each archive, from the sources :func:`obtain_archives` lists."""
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
    return expected


def _find_on_disk(specs: Sequence[ArchiveSpec], base: Path, download_missing: bool) -> dict[str, Path]:
    """The archives (or their extracted folders) already in ``base``; without ``download_missing`` every
    missing one is reported in one error."""
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
    return found


def _checked(path: Path, expected: str | None, progress: bool) -> tuple[Path, str | None]:
    """An archive (or extracted folder) found on disk, verified against ``expected`` or its hash printed."""
    if path.is_dir():
        return path, None
    if expected is not None:
        return path, verify_sha256(path, expected, progress=progress)
    digest = sha256sum(path, progress=progress)
    log(f"{path.name}: no known SHA-256 to verify against; its SHA-256 is {digest}")
    return path, digest


def _downloaded(spec: ArchiveSpec, base: Path, expected: str | None, progress: bool) -> tuple[Path, str]:
    """Download a missing archive into ``base``; a hash not known before is recorded in ``SHA256SUMS``."""
    if not spec.url:
        raise FileNotFoundError(f"{base / spec.name} is missing and there is no URL to download it from")
    path = download(spec.url, base / spec.name, sha256=expected, progress=progress)
    digest = expected
    if digest is None:
        digest = sha256sum(path, progress=progress)
        record_checksum(base / CHECKSUM_FILE, spec.name, digest)
        log(
            f"{path.name}: downloaded without a known SHA-256; recorded its SHA-256 {digest} in "
            f"{base / CHECKSUM_FILE} (later runs verify against it)"
        )
    return path, digest


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
