"""Tests of monai_im.runtime.epoch_progress: bars stay quiet in log files and normal on a terminal."""

from __future__ import annotations

import io
import re
import sys

import pytest
from ignite.engine import Engine

from monai_im.runtime.epoch_progress import NON_TTY_INTERVAL, PROGRESS_ENV, EpochProgressBar, progress_bar


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class FakeClock:
    """A clock for tqdm that moves one second per call of ``tick``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += 1.0


def _lines(text: str) -> list[str]:
    """What a log viewer shows as lines: carriage returns and newlines both end one."""
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def _run_updates(stream: io.StringIO, n: int = 500, **kwargs) -> list[str]:
    """``n`` updates one (fake) second apart, i.e. a loop of more than eight minutes."""
    clock = FakeClock()
    bar = progress_bar(total=n, file=stream, desc="work", **kwargs)
    bar._time = clock  # tqdm's own clock
    bar.start_t = bar.last_print_t = clock()
    for _ in range(n):
        clock.tick()
        bar.update(1)
    bar.close()
    return _lines(stream.getvalue())


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)


def test_non_tty_stream_gets_few_lines():
    lines = _run_updates(io.StringIO(), leave=False)
    # start, one redraw per minute of the 500 s, the final state: a dozen lines, not 500
    assert 3 <= len(lines) <= 500 // int(NON_TTY_INTERVAL) + 3
    assert "500/500" in lines[-1]  # the final state stays in the log, on its own line


def test_tty_stream_is_left_alone():
    stream = FakeTTY()
    lines = _run_updates(stream, leave=False)
    assert len(lines) > 450  # tqdm's normal redraw on every (slow) update
    bar = progress_bar(total=3, file=FakeTTY(), leave=False, mininterval=0.5)
    assert bar.mininterval == 0.5 and bar.leave is False and bar.maxinterval == 10
    bar.close()


def test_non_tty_settings_keep_larger_intervals_and_disable():
    bar = progress_bar(total=3, file=io.StringIO(), mininterval=120, leave=False)
    assert bar.mininterval == 120 and bar.maxinterval >= 120 and bar.leave is True
    bar.close()
    stream = io.StringIO()
    bar = progress_bar(range(4), file=stream, disable=True)
    assert list(bar) == [0, 1, 2, 3] and stream.getvalue() == ""


def test_environment_forces_the_mode(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    stream = FakeTTY()
    bar = progress_bar(range(5), file=stream)
    assert list(bar) == list(range(5)) and stream.getvalue() == ""  # off, even on a terminal

    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert len(_run_updates(io.StringIO(), leave=False)) > 450  # drawn as on a terminal, even in a log

    monkeypatch.setenv(PROGRESS_ENV, "sometimes")
    with pytest.raises(ValueError, match=f"{PROGRESS_ENV}='sometimes'"):
        progress_bar(total=1, file=io.StringIO())


def test_default_stream_is_stderr(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(total=2)
    assert bar.mininterval == NON_TTY_INTERVAL
    bar.close()
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    bar = progress_bar(total=2)
    assert bar.mininterval == 0.1  # tqdm's default
    bar.close()


def _train(epochs: int, stream: io.StringIO, monkeypatch) -> EpochProgressBar:
    monkeypatch.setattr(sys, "stderr", stream)
    engine = Engine(lambda e, batch: {"loss": 0.5})
    handler = EpochProgressBar(desc="student")
    handler.attach(engine)
    engine.run([0], max_epochs=epochs)
    return handler


def test_epoch_bar_in_a_log_file(monkeypatch):
    stream = io.StringIO()
    handler = _train(300, stream, monkeypatch)
    lines = _lines(stream.getvalue())
    assert 1 <= len(lines) <= 3  # not one line per epoch
    assert "300/300" in lines[-1] and "loss=0.5000" in lines[-1]
    assert handler.bar is None  # closed on completion


def test_epoch_bar_on_a_terminal(monkeypatch):
    stream = FakeTTY()
    _train(3, stream, monkeypatch)
    text = stream.getvalue()
    assert "student" in text and "\r" in text
    assert not text.rstrip(" \r").endswith("3/3")  # leave=False: the bar is cleared at the end, as before
