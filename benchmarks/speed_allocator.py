"""Benchmark 7: the C allocator setting of the speed policy (``RunSettings.reuse_cpu_memory``).

The setting is process-wide and cannot be undone, so each measurement runs in a fresh process:
``python benchmarks/speed_allocator.py --worker ...`` times one workload with one policy and one
allocator mode and prints its timings as JSON. The driver starts these processes in interleaved
rounds (every combination once per round, in rotating order), so the ratios come from one run.

Workloads (``IMUNet(2, 3, 1, alpha=0.5)``, batch 16 of random 256 x 256 images, as benchmark 5):
the training step and the three teachers' ensemble forward pass (pseudo-labelling); policies: eager
fp32 (``precision/inference_precision fp32, channels_last False``) and the defaults (``RunSettings()``);
allocator modes: glibc's default and the reuse of freed blocks (:func:`reuse_freed_cpu_memory`). The
kernel time of each process (page faults of freshly mapped blocks) is reported beside its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from speed_common import log, table

__all__ = ["run_allocator_benchmark", "allocator_table", "allocator_line"]

WORKLOADS = ("training", "pseudo_labelling")
POLICIES = ("eager fp32", "defaults")
MODES = ("default allocator", "reuse freed memory")


def _worker(workload: str, policy: str, mode: str, size: int, batch: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from speed_precision import pseudo_label_step, training_step

    import monai_im.runtime.acceleration as acc
    from monai_im.runtime import RunSettings

    reuse = mode == MODES[1]
    if reuse and not acc.reuse_freed_cpu_memory():
        raise SystemExit("error: this platform has no glibc allocator setting to measure")
    if policy == "eager fp32":
        settings = RunSettings(
            precision="fp32", inference_precision="fp32", channels_last=False, reuse_cpu_memory=reuse
        )
    else:
        settings = RunSettings(reuse_cpu_memory=reuse)
    gen = torch.Generator().manual_seed(size)
    x = torch.rand(batch, 3, size, size, generator=gen)
    y = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float()
    # the workloads of benchmark 5, built the same way
    step = training_step(settings, x, y) if workload == "training" else pseudo_label_step(settings, x)
    step()
    step()  # warm-up: first allocations, oneDNN primitives
    wall, kernel = [], []
    for _ in range(repeats):
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        wall.append(time.perf_counter() - w0)
        kernel.append(r1.ru_stime - r0.ru_stime)
    return {"wall": wall, "kernel": kernel, "reuse": settings.describe("cpu")["reuse_cpu_memory"]}


def run_allocator_benchmark(quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """Every (workload, policy, allocator mode) in its own process, ``rounds`` interleaved rounds."""
    size, batch = (64, 4) if quick else (256, 16)
    rounds, repeats = (1, 2) if quick else (3, 3)
    combos = [(w, p, m) for w in WORKLOADS for p in POLICIES for m in MODES]
    samples: dict[tuple[str, str, str], dict[str, list[float]]] = {
        c: {"wall": [], "kernel": []} for c in combos
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for r in range(rounds):
        k = r % len(combos)
        for combo in combos[k:] + combos[:k]:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *combo]
            cmd += [
                "--size",
                str(size),
                "--batch",
                str(batch),
                "--repeats",
                str(repeats),
                "--threads",
                str(threads),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"allocator worker {combo} failed:\n{out.stderr[-2000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            samples[combo]["wall"] += got["wall"]
            samples[combo]["kernel"] += got["kernel"]
            log(
                f"[allocator] round {r + 1}/{rounds} {' / '.join(combo)}: {statistics.median(got['wall']):.3f} s"
            )
    rows = {}
    for w, p, m in combos:
        s = samples[(w, p, m)]
        rows[f"{w}|{p}|{m}"] = {
            "seconds_median": statistics.median(s["wall"]),
            "seconds": s["wall"],
            "kernel_seconds_median": statistics.median(s["kernel"]),
        }
    return {"size": size, "batch_size": batch, "rounds": rounds, "calls_per_process": repeats, "rows": rows}


def _t(result: dict[str, Any], workload: str, policy: str, mode: str) -> float:
    return result["rows"][f"{workload}|{policy}|{mode}"]["seconds_median"]


def allocator_table(result: dict[str, Any]) -> str:
    base_mode = MODES[0]
    headers = [
        "workload",
        "policy",
        "allocator",
        "s / call (median)",
        "kernel s / call",
        "vs same policy, default allocator",
        "vs eager fp32, default allocator",
    ]
    rows = []
    for w in WORKLOADS:
        base = _t(result, w, "eager fp32", base_mode)
        for p in POLICIES:
            for m in MODES:
                r = result["rows"][f"{w}|{p}|{m}"]
                rows.append(
                    [
                        w.replace("_", "-"),
                        p,
                        m,
                        f"{r['seconds_median']:.3f}",
                        f"{r['kernel_seconds_median']:.3f}",
                        f"{_t(result, w, p, base_mode) / r['seconds_median']:.2f}x",
                        f"{base / r['seconds_median']:.2f}x",
                    ]
                )
    facts = (
        f"IMUNet(alpha=0.5), batch {result['batch_size']} of {result['size']}x{result['size']}, 3 teachers for "
        f"pseudo-labelling; each row a fresh process per round, {result['rounds']} interleaved rounds of "
        f"{result['calls_per_process']} calls"
    )
    return f"{facts}\n\n{table(headers, rows)}\n\n{allocator_line(result)}"


def allocator_line(result: dict[str, Any]) -> str:
    """``speed-up at SxS with the bundle defaults: training X.XXx, pseudo-labelling Y.YYx (eager fp32 with
    glibc's default allocator = 1.00x)``."""
    size = result["size"]
    parts = [
        f"{w.replace('_', '-')} {_t(result, w, 'eager fp32', MODES[0]) / _t(result, w, 'defaults', MODES[1]):.2f}x"
        for w in WORKLOADS
    ]
    return (
        f"speed-up at {size}x{size} with the bundle defaults: {', '.join(parts)} "
        "(eager fp32 with glibc's default allocator = 1.00x)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "POLICY", "MODE"), default=None)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker, args.size, args.batch, args.repeats, args.threads)))
        return 0
    print(allocator_table(run_allocator_benchmark(args.quick, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
