"""Training several students of a generation at the same time, and reading ahead of a loop.

Small networks leave most of a GPU idle; running the K students of a generation in threads, each
with its own CUDA stream, overlaps their kernels. Each student keeps everything that is random to
itself (a fresh network built under its own seed before any thread starts, its own data order, its
own copy of the random transforms), so concurrent training gives the students sequential training
gives. On CPU the cores are already busy with one student: keep ``concurrent_students`` at 1 there.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

__all__ = ["prefetch", "run_concurrently", "student_dataset"]

T = TypeVar("T")

_END = object()


def prefetch(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate over ``iterable`` with up to ``depth`` items produced ahead by a background thread.

    A loader's reading and preprocessing (image decoding, resampling: mostly code that releases the
    GIL) then overlaps the work done on the previous batch, here the teachers' forward passes. Unlike
    MONAI's ``ThreadBuffer``, an exception raised while producing an item is raised here, at that
    item, instead of ending the iteration early: a file that cannot be read never shortens a set
    silently. Items come in the order of ``iterable``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    it = iter(iterable)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        # one worker thread: the source is advanced by one thread at a time, in order
        ahead = [pool.submit(next, it, _END) for _ in range(depth)]
        try:
            while True:
                item = ahead.pop(0).result()  # re-raises the producer's exception
                if item is _END:
                    return
                ahead.append(pool.submit(next, it, _END))
                yield item
        finally:
            for fut in ahead:
                fut.cancel()


def student_dataset(dataset: Any) -> Any:
    """A view of ``dataset`` with its own copy of the transforms (and so of their random states).

    The cached items are shared (read only); the MONAI ``DataLoader`` of each student seeds the copy's
    random transforms from its own generator, as it seeds the shared dataset in sequential training.
    """
    view = copy.copy(dataset)
    if getattr(dataset, "transform", None) is not None:
        view.transform = copy.deepcopy(dataset.transform)
    return view


@contextlib.contextmanager
def _own_stream(device: torch.device) -> Iterator[None]:
    if device.type == "cuda":
        stream = torch.cuda.Stream(device=device)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()
    else:
        yield


def run_concurrently(
    jobs: Sequence[Callable[[], T]], max_workers: int, device: torch.device | str = "cpu"
) -> list[T]:
    """Run ``jobs`` (prepared, independent callables) at most ``max_workers`` at a time; results in order.

    ``max_workers`` 1 runs them one after the other in this thread. With more, each runs in a thread
    (on CUDA inside its own stream); the first failure is raised once every started job has ended.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    device = torch.device(device)
    if max_workers == 1 or len(jobs) <= 1:
        return [job() for job in jobs]

    def run(job: Callable[[], T]) -> T:
        with _own_stream(device):
            return job()

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="student") as pool:
        futures = [pool.submit(run, job) for job in jobs]
        errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]
