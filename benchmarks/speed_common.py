"""Shared pieces of the speed benchmarks: machine facts, interleaved timing, tables, synthetic data."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from monai_im.datasets import make_isic_like_dataset
from monai_im.io import load_json
from monai_im.transforms import image_segmentation_transforms

__all__ = [
    "environment",
    "header",
    "summarize",
    "interleaved",
    "table",
    "isic_like_items",
    "preprocess",
    "to_batches",
    "log",
]


def environment() -> dict[str, Any]:
    """The facts a reader needs to judge a figure: cores, threads, library versions, load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def header(env: Mapping[str, Any]) -> str:
    """One line of machine facts printed above every table."""
    load = env.get("load_average")
    load_txt = f", load average {load[0]:.2f}" if load else ""
    return (
        f"[{env['usable_cores']} cores, {env['torch_threads']} torch thread(s); python {env['python']}, "
        f"torch {env['torch']}, monai {env['monai']}, numpy {env['numpy']}{load_txt}]"
    )


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the spread (max - min) / median of repeated timings (seconds)."""
    med = statistics.median(samples)
    return {
        "median": med,
        "min": min(samples),
        "max": max(samples),
        "spread_pct": 100.0 * (max(samples) - min(samples)) / med if med > 0 else 0.0,
        "n": len(samples),
        "samples": list(samples),
    }


def interleaved(
    runs: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Time every callable ``repeats`` times, interleaved round by round in rotating order.

    Round r runs the variants starting at position r (A B C, B C A, C A B, ...), so no variant
    runs twice in a row and each takes every position equally often: a slow (or quiet) phase of
    a shared machine is spread over all variants instead of favouring one. ``warmup`` untimed
    rounds come first.

    Returns:
        per name, ``wall`` (wall-clock seconds) and ``cpu`` (CPU seconds of this process, all
        threads, user + system) of each run, in round order. CPU time is much less sensitive
        than wall time to other processes competing for the cores.
    """
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            runs[name]()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
            if log is not None:
                log(f"  round {r + 1}/{repeats} {name}: {wall:.3f} s wall, {cpu:.3f} s CPU")
    return times


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable as plain text)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def isic_like_items(
    root: str | os.PathLike, num_images: int, size: int, seed: int = 0
) -> list[dict[str, str]]:
    """``num_images`` synthetic ISIC-like image / mask pairs written under ``root`` (absolute paths).

    All generated training images are returned (the labeled / unlabeled split of the dataset is
    irrelevant here), sorted by file name.
    """
    root = Path(root)
    if not (root / "datalist.json").is_file():
        make_isic_like_dataset(
            root, num_train=num_images, num_val=0, num_test=0, size=size, seed=seed, progress=False
        )
    datalist = load_json(root / "datalist.json")
    items = datalist["labeled"] + datalist["unlabeled"]
    items = sorted(items, key=lambda it: it["image"])
    return [{k: str(root / v) for k, v in it.items()} for it in items]


def preprocess(items: Sequence[Mapping[str, str]], size: int) -> list[dict[str, torch.Tensor]]:
    """Run the bundles' preprocessing once on every item; plain tensors in memory."""
    transform = image_segmentation_transforms((size, size), num_channels=3)
    return [transform(dict(it)) for it in items]


def to_batches(data: Sequence[Mapping[str, torch.Tensor]], key: str, batch_size: int) -> list[torch.Tensor]:
    """Stack ``data[i][key]`` into contiguous batches of ``batch_size`` (the last one may be smaller)."""
    return [
        torch.stack([d[key] for d in data[i : i + batch_size]]).contiguous()
        for i in range(0, len(data), batch_size)
    ]


def log(msg: str) -> None:
    """Progress messages go to stderr so that stdout holds the tables only."""
    print(msg, file=sys.stderr, flush=True)
