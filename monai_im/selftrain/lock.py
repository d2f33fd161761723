"""One study at a time in a study folder: an operating-system lock on ``<output_dir>/.study.lock``.

Two studies started into one folder would harm each other: the second one's start-up cleanup removes
the first one's writes in progress (``.pseudo_labels.*.partial``), and both would train, overwrite and
track the same students. :class:`StudyLock` is held by the study for its whole run, through an open
file descriptor locked with ``fcntl.flock`` (``msvcrt.locking`` on Windows). The operating system
releases it when the process ends in any way, a ``kill -9`` or a power loss included, so a stale lock
never blocks a later run and nothing has to be cleaned up by hand. The lock file stays in the folder
(removing it would let two processes lock two different files); it holds the process id, host and
start time of the last holder, which the error of a study that finds the folder in use names.

On a filesystem without lock support the study goes on unlocked, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from datetime import datetime
from pathlib import Path
from types import TracebackType

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "StudyLock", "StudyLockedError"]

logger = logging.getLogger("monai_im")

LOCK_FILE = ".study.lock"
#: Windows locks are mandatory: the byte locked lies far past the holder's record, which stays readable.
_WINDOWS_LOCK_OFFSET = 1 << 30


class StudyLockedError(RuntimeError):
    """The study folder is in use by another study (another process holds its lock)."""


def _try_lock(fd: int) -> bool:
    """Lock ``fd`` without waiting; False when another holder has it. Raises ``OSError`` on a filesystem
    without lock support (and returns True, doing nothing, on a platform without file locks)."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    elif msvcrt is not None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:  # the byte is locked by another descriptor
            return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _holder(path: Path) -> str:
    """``pid N on HOST, started at TIME`` from the lock file, or a note that the holder is unknown."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {record['pid']} on {record['host']}, started at {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not yet recorded"


class StudyLock:
    """The lock that gives one study at a time the use of a study folder.

    Use it as a context manager, or call :meth:`acquire` and :meth:`release` (both may be called again:
    a held lock is not taken twice, a free one not released twice). Only one :class:`StudyLock` can hold
    a folder, also within one process.

    Args:
        output_dir: the study folder; it is created when missing.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.root = Path(output_dir)
        self.path = self.root / LOCK_FILE
        self._fd: int | None = None
        self._unlocked = False  # held without an OS lock (a filesystem without lock support)

    @property
    def held(self) -> bool:
        """Whether this object holds the folder."""
        return self._fd is not None or self._unlocked

    def acquire(self) -> StudyLock:
        """Take the folder for this study, without waiting.

        Returns:
            this lock.

        Raises:
            StudyLockedError: another study holds the folder; the message (one line) names its process.
        """
        if self.held:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_lock(fd)
        except OSError as e:
            os.close(fd)
            logger.warning(
                f"{self.root}: the study folder cannot be locked ({e.strerror or e}); two studies started "
                "into it at the same time would spoil each other's files"
            )
            self._unlocked = True
            return self
        if not locked:
            os.close(fd)
            raise StudyLockedError(
                f"{self.root} is in use by another study ({_holder(self.path)}); wait for it to finish or "
                "choose another --output_dir"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().isoformat(" ", "seconds"),
        }
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode("utf-8"))
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR))
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the folder free (nothing happens when this lock does not hold it)."""
        fd, self._fd, self._unlocked = self._fd, None, False
        if fd is None:
            return
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:  # an object dropped while holding: close its descriptor
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
