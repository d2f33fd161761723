"""Speed figures of monai_im on the CPU: one command prints every table and saves them as JSON.

1. IM creation: ``monai_im.transforms.inconsistency_mask`` (batched torch) vs the paper's rule as a
   per-image numpy loop, binary and multi-label; outputs checked identical before timing.
2. Pseudo-labelling: ``PseudoLabeler`` with three teachers vs the teachers' bare forward passes,
   with the overhead split into IM + writing and reading + transforms, and each step timed alone.
3. Training: one epoch of ``train_student`` (MONAI workflow) vs a bare PyTorch loop.
4. Memory: peak RSS of pseudo-labelling n and 10 n images, each in a fresh process.
5. Precision: the speed policy (``RunSettings``): eager fp32 vs channels_last, bf16 autocast,
   torch.compile and all together, for a training step and the teacher ensemble forward pass, at
   64x64 and 256x256; ends with one line ``speed-up at 256x256: training X.XXx, pseudo-labelling Y.YYx``.
6. Memory of volumes: peak RSS of sliding-window pseudo-labelling of n and 10 n volumes.
7. Allocator: the reuse of freed CPU memory on and off, for eager fp32 and the defaults, each
   measurement in a fresh process (the setting is process-wide); ends with one line
   ``speed-up at 256x256 with the bundle defaults: ...`` against eager fp32 with glibc's default allocator.
8. Contention: the teachers' ensemble forward alone and beside a reading thread, a pure-Python
   thread, a memory-streaming thread and a reading process (why reading ahead slows the forwards).

Usage::

    python benchmarks/speed.py                       # everything (about half an hour on 2 CPU cores)
    python benchmarks/speed.py --quick               # a short smoke run (smaller sizes, fewer repeats)
    python benchmarks/speed.py --only im pseudo --threads 2 --out benchmarks/results/speed.json
    python benchmarks/speed.py --only precision --threads 2   # the speed policy (about 10 minutes)
    python benchmarks/speed.py --report-only --docs docs/benchmarks.md   # tables from the JSON into the docs

Progress goes to stderr, the tables to stdout. A run of some benchmarks (``--only``) keeps the
results of the others already in ``--out``; ``--docs`` rewrites the part of a Markdown file between
the markers ``<!-- speed-results:start -->`` and ``<!-- speed-results:end -->`` with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from speed_common import environment, header, isic_like_items, log

from monai_im.io import atomic_write_bytes, atomic_write_json

BENCHMARKS = ("im", "pseudo", "train", "memory", "precision", "memory3d", "allocator", "contention")
TITLES = {
    "im": "1. IM creation throughput",
    "pseudo": "2. Pseudo-labelling throughput",
    "train": "3. Training epoch: train_student vs bare PyTorch loop",
    "memory": "4. Peak memory of pseudo-labelling, unlabeled set grown 10x",
    "precision": "5. Precision, memory format and compilation (RunSettings) vs eager fp32",
    "memory3d": "6. Peak memory of pseudo-labelling volumes (sliding window), unlabeled set grown 10x",
    "allocator": "7. Reusing freed CPU memory (RunSettings.reuse_cpu_memory), one process per measurement",
    "contention": "8. The teachers' forward passes beside other work (reading thread, Python thread, process)",
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
    p.add_argument(
        "--pseudo-images",
        type=int,
        default=None,
        help="unlabeled images of the pseudo-labelling benchmark (default 256; 64 with --quick)",
    )
    p.add_argument("--profile", action="store_true", help="also print a cProfile of one pseudo-labelling run")
    p.add_argument(
        "--report-only", action="store_true", help="run nothing: print the tables of the results in --out"
    )
    p.add_argument(
        "--docs", type=Path, default=None, help="Markdown file whose speed-results section gets the tables"
    )
    return p


MARKERS = ("<!-- speed-results:start -->", "<!-- speed-results:end -->")


def render(name: str, result: dict[str, Any]) -> str:
    """The Markdown table(s) of one benchmark's saved result."""
    if name == "im":
        from speed_im import im_table as fn
    elif name == "pseudo":
        from speed_pseudo import pseudo_tables as fn
    elif name == "train":
        from speed_train import train_table as fn
    elif name == "precision":
        from speed_precision import precision_table as fn
    elif name == "memory3d":
        from speed_memory import volume_memory_table as fn
    elif name == "allocator":
        from speed_allocator import allocator_table as fn
    elif name == "contention":
        from speed_contention import contention_table as fn
    else:
        from speed_memory import memory_table as fn
    return fn(result)


def section(name: str, result: dict[str, Any]) -> str:
    return f"\n### {TITLES[name]}\n\n{header(result['environment'])}\n\n{render(name, result)}\n"


def update_docs(path: Path, results: dict[str, Any]) -> None:
    """Replace the text between the two markers in ``path`` with every benchmark's tables (atomically)."""
    text = path.read_text()
    start, end = MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{path} needs exactly one '{start}' followed by one '{end}'")
    body = "".join(section(n, results["benchmarks"][n]) for n in BENCHMARKS if n in results["benchmarks"])
    head, rest = text.split(start)
    tail = rest.split(end)[1]
    atomic_write_bytes(path, f"{head}{start}\n{body}\n{end}{tail}".encode())
    log(f"[docs] speed tables written into {os.fspath(path)}")


def load_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path} is not valid JSON ({e}); move it away or pass another --out") from None
    return data if isinstance(data, dict) and isinstance(data.get("benchmarks"), dict) else None


def _print(name: str, text: str, env: dict[str, Any]) -> None:
    print(f"\n## {TITLES[name]}\n{header(env)}\n\n{text}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit("--threads must be at least 1")
    previous = load_results(args.out)
    if args.report_only:
        if previous is None:
            raise SystemExit(f"no results in {args.out}: run the benchmarks first")
        for name in BENCHMARKS:
            if name in previous["benchmarks"]:
                print(section(name, previous["benchmarks"][name]))
        if args.docs is not None:
            update_docs(args.docs, previous)
        return 0
    torch.set_num_threads(args.threads)
    kept = (
        {}
        if previous is None or previous.get("settings", {}).get("quick") != args.quick
        else previous["benchmarks"]
    )
    results: dict[str, Any] = {
        "settings": {"quick": args.quick, "threads": args.threads, "only": args.only},
        "environment": environment(),
        # the results of benchmarks not run this time stay (each carries its own machine facts)
        "benchmarks": {k: v for k, v in kept.items() if k not in args.only},
    }
    size = 128 if args.quick else 256
    pl_images = args.pseudo_images or (64 if args.quick else 256)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="speed_") as tmp:
        items: list[dict[str, str]] = []
        if {"pseudo", "train", "contention"} & set(args.only):
            log(f"[data] writing {pl_images} synthetic ISIC-like images of {size}x{size}")
            items = isic_like_items(Path(tmp) / "isic_like", pl_images, size)
        for name in BENCHMARKS:
            if name not in args.only:
                continue
            t0 = time.time()
            if name == "im":
                from speed_im import run_im_benchmark

                result = run_im_benchmark(args.threads, quick=args.quick)
            elif name == "pseudo":
                from speed_pseudo import run_pseudo_benchmark

                result = run_pseudo_benchmark(items, size, quick=args.quick, profile=args.profile)
            elif name == "train":
                from speed_train import run_train_benchmark

                result = run_train_benchmark(items, size, quick=args.quick)
            elif name == "precision":
                from speed_precision import run_precision_benchmark

                result = run_precision_benchmark(quick=args.quick)
            elif name == "allocator":
                from speed_allocator import run_allocator_benchmark

                result = run_allocator_benchmark(quick=args.quick, threads=args.threads)
            elif name == "contention":
                from speed_contention import run_contention_benchmark

                result = run_contention_benchmark(items, size, quick=args.quick, threads=args.threads)
            elif name == "memory3d":
                from speed_memory import run_volume_memory_benchmark

                result = run_volume_memory_benchmark(args.threads, quick=args.quick)
            else:
                from speed_memory import run_memory_benchmark

                result = run_memory_benchmark(args.threads, quick=args.quick)
            text = render(name, result)
            env = environment()  # the load average as it was when this table was measured
            result["environment"] = env
            result["seconds"] = time.time() - t0
            results["benchmarks"][name] = result
            _print(name, text, env)
            if name == "pseudo" and result.get("profile"):
                print("cProfile of one pseudo-labelling run (from files), top functions by own time:\n")
                print(result["profile"])
            result.pop("profile", None)  # printed only: it names this machine's file paths
            atomic_write_json(args.out, results)  # after every benchmark: a crash keeps what was measured
    results["seconds"] = time.time() - started
    atomic_write_json(args.out, results)
    if args.docs is not None:
        update_docs(args.docs, results)
    log(f"[done] {results['seconds']:.0f} s; results in {os.fspath(args.out)}")
    if "precision" in args.only:  # the last line of the output
        from speed_precision import fastest_settings_line, speedup_line

        print(fastest_settings_line(results["benchmarks"]["precision"]), flush=True)
        print(speedup_line(results["benchmarks"]["precision"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
