"""Speed figures of monai_im on the CPU: one command prints every table and saves them as JSON.

1. IM creation: ``monai_im.transforms.inconsistency_mask`` (batched torch) vs the paper's rule as a
   per-image numpy loop, binary and multi-label; outputs checked identical before timing.
2. Pseudo-labelling: ``PseudoLabeler`` with three teachers vs the teachers' bare forward passes,
   with the overhead split into IM + writing and reading + transforms, and each step timed alone.
3. Training: one epoch of ``train_student`` (MONAI workflow) vs a bare PyTorch loop.
4. Memory: peak RSS of pseudo-labelling n and 10 n images, each in a fresh process.

Usage::

    python benchmarks/speed.py                       # everything (about half an hour on 2 CPU cores)
    python benchmarks/speed.py --quick               # a short smoke run (smaller sizes, fewer repeats)
    python benchmarks/speed.py --only im pseudo --threads 2 --out benchmarks/results/speed.json

Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from speed_common import environment, header, isic_like_items, log

from monai_im.io import atomic_write_json

BENCHMARKS = ("im", "pseudo", "train", "memory")
TITLES = {
    "im": "1. IM creation throughput",
    "pseudo": "2. Pseudo-labelling throughput",
    "train": "3. Training epoch: train_student vs bare PyTorch loop",
    "memory": "4. Peak memory of pseudo-labelling, unlabeled set grown 10x",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run: smaller images and sets, fewer repeats")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: robust on a shared machine; use the core count on an idle one)",
    )
    p.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="benchmarks to run"
    )
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/speed.json"), help="JSON file for all results"
    )
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one pseudo-labelling run")
    return p


def _print(name: str, text: str, env: dict[str, Any]) -> None:
    print(f"\n## {TITLES[name]}\n{header(env)}\n\n{text}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "settings": {"quick": args.quick, "threads": args.threads, "only": args.only},
        "environment": environment(),
        "benchmarks": {},
    }
    size = 128 if args.quick else 256
    pl_images = 64 if args.quick else 256
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="speed_") as tmp:
        items: list[dict[str, str]] = []
        if {"pseudo", "train"} & set(args.only):
            log(f"[data] writing {pl_images} synthetic ISIC-like images of {size}x{size}")
            items = isic_like_items(Path(tmp) / "isic_like", pl_images, size)
        for name in BENCHMARKS:
            if name not in args.only:
                continue
            t0 = time.time()
            if name == "im":
                from speed_im import im_table, run_im_benchmark

                result = run_im_benchmark(args.threads, quick=args.quick)
                text = im_table(result)
            elif name == "pseudo":
                from speed_pseudo import pseudo_tables, run_pseudo_benchmark

                result = run_pseudo_benchmark(items, size, quick=args.quick, profile=args.profile)
                text = pseudo_tables(result)
            elif name == "train":
                from speed_train import run_train_benchmark, train_table

                result = run_train_benchmark(items, size, quick=args.quick)
                text = train_table(result)
            else:
                from speed_memory import memory_table, run_memory_benchmark

                result = run_memory_benchmark(args.threads, quick=args.quick)
                text = memory_table(result)
            env = environment()  # the load average as it was when this table was measured
            result["environment"] = env
            result["seconds"] = time.time() - t0
            results["benchmarks"][name] = result
            _print(name, text, env)
            if name == "pseudo" and result.get("profile"):
                print("cProfile of one pseudo-labelling run (from files), top functions by own time:\n")
                print(result["profile"])
            atomic_write_json(args.out, results)  # after every benchmark: a crash keeps what was measured
    results["seconds"] = time.time() - started
    atomic_write_json(args.out, results)
    log(f"[done] {results['seconds']:.0f} s; results in {os.fspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
