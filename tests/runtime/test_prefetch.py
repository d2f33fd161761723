from __future__ import annotations

import threading
import time

import pytest

from monai_im.runtime.concurrency import prefetch


def test_yields_every_item_in_order():
    assert list(prefetch(range(50), depth=3)) == list(range(50))
    assert list(prefetch([], depth=1)) == []


def test_producer_runs_ahead_in_another_thread():
    produced: list[tuple[int, str]] = []

    def source():
        for i in range(4):
            produced.append((i, threading.current_thread().name))
            yield i

    it = prefetch(source(), depth=2)
    assert next(it) == 0
    deadline = time.time() + 5
    while len(produced) < 3 and time.time() < deadline:
        time.sleep(0.01)
    # item 0 was consumed, items 1 and 2 were produced before they were asked for
    assert [i for i, _ in produced] == [0, 1, 2]
    assert all(name.startswith("prefetch") for _, name in produced)
    assert list(it) == [1, 2, 3]


def test_producer_error_is_raised_at_its_item_not_swallowed():
    def source():
        yield 0
        yield 1
        raise OSError("cannot read img2.png")

    got = []
    with pytest.raises(OSError, match="img2.png"):
        for x in prefetch(source(), depth=2):
            got.append(x)
    assert got == [0, 1]


def test_bad_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], depth=0))
