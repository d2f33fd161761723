"""The output folder of a dataset preparation, built atomically: it appears complete or not at all, a lock
keeps a second run out, and leftovers of an interrupted run into the same folder are removed by the next
run (:func:`remove_stale_partials`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_im.data.datalist import write_datalist
from monai_im.datasets.prepare_sources import log
from monai_im.io import atomic_directory, atomic_write_json

try:  # advisory lock of an output folder (POSIX); elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["output_folder", "remove_stale_partials", "write_dataset"]


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
        log(f"removed {path}, left over from an interrupted preparation of {target}")
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
