"""One study at a time in a study folder: a second study stops at once, before touching the folder, and
a killed study leaves no stale lock."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monai_im.selftrain import StudyLayout
from monai_im.selftrain.lock import LOCK_FILE, StudyLock, StudyLockedError

LOCK_MODULE = Path(__file__).resolve().parents[2] / "monai_im" / "selftrain" / "lock.py"

# A study in progress: holds the folder's lock while it writes a pseudo-label set (a .partial folder).
# lock.py is loaded from its file alone, so that the process starts in a fraction of a second.
HOLDER = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("study_lock", sys.argv[1])
lock_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_module)
root = Path(sys.argv[2])
try:
    lock = lock_module.StudyLock(root).acquire()
except lock_module.StudyLockedError:
    print("refused", flush=True)
    sys.exit(0)
partial = root / "generation_1" / ".pseudo_labels.1234.partial"
partial.mkdir(parents=True, exist_ok=True)
(partial / "case_0.png").write_bytes(b"written by the study in progress")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _start_holder(root: Path, seconds: float = 60.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(LOCK_MODULE), str(root), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _wait_held(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline().strip()
    assert line == "held", f"the holder did not take the lock: {line!r}"


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_second_study_stops_at_once_and_leaves_the_first_ones_files(tmp_path):
    root = tmp_path / "study"
    holder = _start_holder(root)
    try:
        _wait_held(holder)
        before = _tree(root)
        assert "generation_1/.pseudo_labels.1234.partial/case_0.png" in before
        start = time.monotonic()
        with pytest.raises(StudyLockedError) as caught:
            with StudyLock(root):  # how a study starts: the lock first, then the folder's cleanup
                StudyLayout(root).prepare({"method": "im"})
        assert time.monotonic() - start < 2.0, "the second study waits instead of stopping"
        message = str(caught.value)
        assert "\n" not in message
        assert f"{root} is in use by another study (pid {holder.pid} on " in message
        assert "started at " in message and "choose another --output_dir" in message
        assert _tree(root) == before, "the second study changed the first one's folder"
        assert holder.poll() is None, "the first study is still running"
    finally:
        holder.kill()
        holder.wait()


def test_of_studies_started_at_once_exactly_one_gets_the_folder(tmp_path):
    root = tmp_path / "study"
    root.mkdir()
    racers = [_start_holder(root, seconds=3.0) for _ in range(3)]
    try:
        answers = sorted(p.stdout.readline().strip() for p in racers)
    finally:
        for p in racers:
            p.kill()
            p.wait()
    assert answers == ["held", "refused", "refused"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is a POSIX signal")
def test_the_lock_of_a_killed_study_is_free(tmp_path):
    root = tmp_path / "study"
    holder = _start_holder(root)
    try:
        _wait_held(holder)
        with pytest.raises(StudyLockedError):
            StudyLock(root).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    lock = StudyLock(root).acquire()  # no stale lock to remove by hand
    try:
        assert lock.held
        assert f'"pid": {os.getpid()}' in (root / LOCK_FILE).read_text()
    finally:
        lock.release()


def test_one_holder_within_a_process_and_release_frees_the_folder(tmp_path):
    first, second = StudyLock(tmp_path), StudyLock(tmp_path)
    with first:
        assert first.acquire() is first, "a held lock is not taken twice"
        with pytest.raises(StudyLockedError, match=f"pid {os.getpid()} "):
            second.acquire()
        assert not second.held
    assert not first.held
    first.release()  # releasing a free lock does nothing
    with second:
        assert second.held


def test_the_lock_file_survives_cleanup_and_overwrite(tmp_path):
    layout = StudyLayout(tmp_path)
    with StudyLock(tmp_path):
        layout.prepare({"method": "im"})
        layout.prepare({"method": "other"}, overwrite=True)
        assert (tmp_path / LOCK_FILE).is_file()
        with pytest.raises(StudyLockedError):
            StudyLock(tmp_path).acquire()


def test_a_study_into_a_folder_in_use_stops_before_any_work(make_study, tiny_data, tmp_path):
    out = tmp_path / "study"
    partial = out / "generation_1" / ".pseudo_labels.1.partial"
    partial.mkdir(parents=True)
    with StudyLock(out):
        with pytest.raises(SystemExit) as e:
            make_study(tiny_data, out).run()
    assert str(e.value.code).startswith(f"error: {out} is in use by another study (pid ")
    assert isinstance(e.value.__cause__, StudyLockedError)
    assert partial.is_dir() and not (out / "study.json").exists()
    make_study(tiny_data, out).run()
    assert not partial.exists() and StudyLock(out).acquire().held
