"""Benchmark 8: what slows the teachers' forward passes while the next batch is being read.

The pseudo-labeller reads and preprocesses the next batch in a thread while the main thread runs
the teachers (benchmark 2). On a CPU with one torch thread per process the reading has a core of
its own, yet the forward passes run slower. This benchmark finds out why: the three teachers'
ensemble forward pass (bundle defaults, ``RunSettings()``) is timed

- alone;
- beside a thread of the same process that reads and preprocesses PNG files with the bundles'
  transforms in a loop (what the reading thread does, but without pause);
- beside a thread that runs pure Python (holds the interpreter lock and nothing else);
- beside a thread that streams large numpy arrays (memory bandwidth, releases the lock);
- beside a separate process doing the same reading in a loop (same work, its own interpreter).

Interleaved rounds, ratios to "alone" from the same run. A slowdown by the threads that the process
does not cause is contention for the interpreter lock: each of the hundreds of operator calls of a
forward pass has to take the lock back from the other thread before it can start.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from speed_common import interleaved, log, summarize, table

from monai_im.runtime import RunSettings
from monai_im.transforms import image_segmentation_transforms

__all__ = ["run_contention_benchmark", "contention_table"]

BATCH = 32
VARIANTS = (
    "alone",
    "+ reading thread (bundle transforms)",
    "+ pure-Python thread",
    "+ memory-streaming thread",
    "+ reading process (bundle transforms)",
)


def _reading_loop(paths: Sequence[str], size: int) -> Callable[[], None]:
    transform = image_segmentation_transforms((size, size), num_channels=3)
    return lambda: [transform({"image": p}) for p in paths]


def _python_loop() -> None:
    total = 0
    for i in range(200_000):
        total += i


_ARRAY = np.ones(4_000_000)


def _memory_loop() -> None:
    (_ARRAY * 2.0).sum()


def _process_main(paths: Sequence[str], size: int, ready: Any) -> None:
    torch.set_num_threads(1)
    work = _reading_loop(paths, size)
    work()
    ready.set()
    while True:
        work()


class _Beside:
    """Runs ``work`` in a loop in a background thread for the duration of a ``with`` block."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.work()

    def __enter__(self) -> None:
        self.stop.clear()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


def run_contention_benchmark(
    items: Sequence[dict[str, str]], size: int, quick: bool = False, threads: int = 1
) -> dict[str, Any]:
    """Time the ensemble forward of a batch of ``BATCH`` images alone and beside each kind of work."""
    from speed_precision import pseudo_label_step

    repeats = 3 if quick else 5
    paths = [it["image"] for it in items[:8]]
    settings = RunSettings()
    x = torch.rand(BATCH, 3, size, size, generator=torch.Generator().manual_seed(size))
    forward = pseudo_label_step(settings, x)
    forward()
    forward()
    reading = _reading_loop(paths, size)
    reading()
    threaded = {
        VARIANTS[1]: _Beside(reading),
        VARIANTS[2]: _Beside(_python_loop),
        VARIANTS[3]: _Beside(_memory_loop),
    }
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_process_main, args=(list(paths), size, ready), daemon=True)

    def beside(name: str) -> Callable[[], None]:
        def run() -> None:
            with threaded[name]:
                forward()

        return run

    log(f"[contention] ensemble forward, batch {BATCH} of {size}x{size}, {repeats} interleaved rounds")
    proc.start()
    try:
        ready.wait(timeout=120)
        runs: dict[str, Callable[[], None]] = {VARIANTS[0]: forward}
        runs.update({name: beside(name) for name in threaded})
        runs[VARIANTS[4]] = forward  # beside the process, which runs only during this variant
        times = _interleave_with_process(runs, repeats, proc)
    finally:
        proc.kill()
        proc.join()
    base = summarize(times[VARIANTS[0]]["wall"])["median"]
    rows = {
        name: {"wall": summarize(t["wall"]), "ratio": summarize(t["wall"])["median"] / base}
        for name, t in times.items()
    }
    return {"image_size": size, "batch_size": BATCH, "repeats": repeats, "threads": threads, "rows": rows}


def _interleave_with_process(
    runs: dict[str, Callable[[], None]], repeats: int, proc: Any
) -> dict[str, dict[str, list[float]]]:
    """``interleaved`` with the reading process stopped (SIGSTOP) outside its own variant."""
    import os
    import signal

    def paused(fn: Callable[[], None], on: bool) -> Callable[[], None]:
        def run() -> None:
            if on:
                os.kill(proc.pid, signal.SIGCONT)
                time.sleep(0.2)  # let it get going again
            fn()
            os.kill(proc.pid, signal.SIGSTOP)

        return run

    wrapped = {name: paused(fn, name == VARIANTS[4]) for name, fn in runs.items()}
    os.kill(proc.pid, signal.SIGSTOP)
    return interleaved(wrapped, repeats, warmup=0, log=log)


def contention_table(result: dict[str, Any]) -> str:
    rows = [
        [
            name,
            f"{r['wall']['median']:.3f}",
            f"{r['wall']['min']:.3f} - {r['wall']['max']:.3f}",
            f"{r['ratio']:.2f}x",
        ]
        for name, r in result["rows"].items()
    ]
    facts = (
        f"3 teachers IMUNet(alpha=0.5), bundle defaults (RunSettings()), batch {result['batch_size']} of "
        f"{result['image_size']}x{result['image_size']}, {result['threads']} torch thread(s), "
        f"{result['repeats']} interleaved rounds; the other work runs without pause during each timed call"
    )
    return (
        facts
        + "\n\n"
        + table(["ensemble forward", "wall s (median)", "wall s (min - max)", "time vs alone"], rows)
    )
