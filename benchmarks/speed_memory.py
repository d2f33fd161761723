"""Benchmark 4: peak memory of pseudo-labelling as the unlabeled set grows 10x.

Every set size runs in a fresh Python process (this file with ``--child``), which reports its own
peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after pseudo-labelling.
A streaming pseudo-labeller keeps only one batch in memory, so the peak must not grow with the
set. The strategy keeps every image (the most files and datalist entries, the worst case), and
the teachers are untrained networks (their weights do not change the memory footprint).

Linux keeps ``ru_maxrss`` across ``exec``: a child started directly by this (large) process would
report at least the parent's resident size at the time of the fork. Each child is therefore
started through a tiny intermediate Python process, whose small footprint is all that carries
over. The child also reports ``VmHWM`` from ``/proc/self/status`` (the peak of its own address
space only) as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from speed_common import isic_like_items, log, table

__all__ = ["run_memory_benchmark", "memory_table", "run_volume_memory_benchmark", "volume_memory_table"]

BATCH = 32
# a small process in between, so that the child does not inherit this process's ru_maxrss
_LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def _vm_hwm_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _items(dataset: str, n: int) -> list[dict[str, str]]:
    """The first ``n`` training files of a demo dataset, by name."""
    from monai_im.io import load_json

    root = Path(dataset)
    datalist = load_json(root / "datalist.json")
    items = [{"image": str(root / it["image"])} for it in datalist["labeled"] + datalist["unlabeled"]]
    return sorted(items, key=lambda it: it["image"])[:n]


def _measure(labeler: Any, teachers: list, items: list, transform: Any, output: str) -> None:
    """Pseudo-label ``items`` and print the peak memory (this process's) as one JSON line."""
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = labeler(teachers, items, transform, output)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "images": len(items),
                "written": len(result.items),
                "peak_rss_mib": peak / 1024.0,
                "peak_rss_before_mib": before / 1024.0,
                "vm_hwm_mib": _vm_hwm_mib(),
                "seconds": seconds,
            }
        )
    )


def _teachers(n: int, make: Any) -> list:
    import torch

    teachers = []
    for seed in range(n):
        torch.manual_seed(seed)
        teachers.append(make().eval())
    return teachers


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from monai_im.methods import InconsistencyMask
    from monai_im.networks import IMUNet
    from monai_im.selftrain import PseudoLabeler
    from monai_im.transforms import image_segmentation_transforms

    keep_all = InconsistencyMask(min_foreground=0, foreground_exceeds_im=False)
    _measure(
        PseudoLabeler(keep_all, batch_size=BATCH, progress=False),
        _teachers(3, lambda: IMUNet(2, 3, 1, alpha=0.5)),
        _items(args.dataset, args.num_images),
        image_segmentation_transforms((args.size, args.size), num_channels=3),
        args.output,
    )


def _volume_child(args: argparse.Namespace) -> None:
    """Pseudo-label ``--num-images`` CT-like volumes with two 3D teachers and a sliding window."""
    import torch
    from monai.inferers import SlidingWindowInferer

    torch.set_num_threads(args.threads)
    from monai_im.methods import build_method
    from monai_im.networks import IMUNet
    from monai_im.selftrain import PseudoLabeler
    from monai_im.transforms import VolumeReader, volume_segmentation_transforms

    keep_all = build_method("im", mode="multiclass", min_foreground=0, foreground_exceeds_im=False)
    inferer = SlidingWindowInferer(roi_size=(48, 48, 32), sw_batch_size=4, overlap=0.25, mode="gaussian")
    _measure(
        PseudoLabeler(keep_all, inferer=inferer, batch_size=1, progress=False),
        _teachers(2, lambda: IMUNet(3, 1, 14, alpha=0.5)),
        _items(args.dataset, args.num_images),
        volume_segmentation_transforms(pixdim=(2.5, 2.5, 4.0), num_classes=14, reader=VolumeReader()),
        args.output,
    )


def _spawn(args: list[str], what: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {what} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_volume_memory_benchmark(threads: int, quick: bool = False) -> dict[str, Any]:
    """Peak RSS of pseudo-labelling n and 10 n CT-like volumes (sliding window), each in a fresh process."""
    from monai_im.datasets.flare_like import make_flare_like_dataset

    shape = (64, 64, 48)
    small = 2 if quick else 4
    sizes = [small, 10 * small]
    runs = []
    with tempfile.TemporaryDirectory(prefix="mem3d_speed_") as tmp:
        log(f"[memory3d] writing {sizes[-1]} synthetic CT volumes of {shape}")
        make_flare_like_dataset(
            Path(tmp) / "data", num_train=sizes[-1], num_val=0, num_test=0, shape=shape, progress=False
        )
        for n in sizes:
            log(f"[memory3d] pseudo-labelling {n} volumes in a fresh process")
            runs.append(
                _spawn(
                    [
                        "--child",
                        "--volumes",
                        "--dataset",
                        str(Path(tmp) / "data"),
                        "--num-images",
                        str(n),
                        "--size",
                        "0",
                        "--threads",
                        str(threads),
                        "--output",
                        str(Path(tmp) / f"out_{n}"),
                    ],
                    f"{n} volumes",
                )
            )
    ratio = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    held = sizes[-1] * 14 * 2 * int(np.prod(shape)) * 4 / 2**20
    return {
        "shape": list(shape),
        "batch_size": 1,
        "runs": runs,
        "ratio": ratio,
        "float32_set_mib": held,
        "flat": ratio < 1.10,
    }


def volume_memory_table(result: dict[str, Any]) -> str:
    shape = " x ".join(str(v) for v in result["shape"])
    facts = (
        f"{shape} CT-like volumes, one at a time, 2 teachers (14 classes), sliding window 48 x 48 x 32; every "
        f"volume written as NIfTI; peak ratio {result['ratio']:.3f} ({'flat' if result['flat'] else 'NOT flat'}; "
        f"the teachers' probabilities of the largest set held at once would take {result['float32_set_mib']:.0f} MiB)"
    )
    return facts + "\n\n" + memory_table({**result, "image_size": 0}).split("\n\n", 1)[1]


def run_memory_benchmark(threads: int, quick: bool = False) -> dict[str, Any]:
    """Peak RSS of pseudo-labelling n and 10 n images, each in a fresh process."""
    size = 64 if quick else 128
    small = 32 if quick else 64
    sizes = [small, 10 * small]
    runs = []
    with tempfile.TemporaryDirectory(prefix="mem_speed_") as tmp:
        log(f"[memory] writing {sizes[-1]} synthetic images of {size}x{size}")
        isic_like_items(Path(tmp) / "data", sizes[-1], size)
        for n in sizes:
            log(f"[memory] pseudo-labelling {n} images in a fresh process")
            args = ["--child", "--dataset", str(Path(tmp) / "data"), "--num-images", str(n)]
            args += ["--size", str(size), "--threads", str(threads), "--output", str(Path(tmp) / f"out_{n}")]
            runs.append(_spawn(args, f"{n} images"))
    ratio = runs[-1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    held = sizes[-1] * 3 * size * size * 4 / 2**20
    return {
        "image_size": size,
        "batch_size": BATCH,
        "runs": runs,
        "ratio": ratio,
        "float32_set_mib": held,
        "flat": ratio < 1.10,
    }


def memory_table(result: dict[str, Any]) -> str:
    rows = [
        [
            r["images"],
            r["written"],
            f"{r['peak_rss_before_mib']:.0f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['vm_hwm_mib']:.0f}" if r.get("vm_hwm_mib") is not None else "n/a",
            f"{r['seconds']:.1f}",
        ]
        for r in result["runs"]
    ]
    facts = (
        f"{result['image_size']}x{result['image_size']} images, batch {result['batch_size']}, 3 teachers, every image "
        f"written; peak ratio {result['ratio']:.3f} ({'flat' if result['flat'] else 'NOT flat'}; holding the "
        f"largest set as float32 tensors alone would take {result['float32_set_mib']:.0f} MiB)"
    )
    return (
        facts
        + "\n\n"
        + table(
            [
                "unlabeled images",
                "written",
                "peak RSS before (MiB)",
                "peak RSS after (MiB)",
                "VmHWM (MiB)",
                "seconds",
            ],
            rows,
        )
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="child process of the memory benchmark")
    p.add_argument("--child", action="store_true")
    p.add_argument("--dataset", required=True)
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", required=True)
    p.add_argument("--volumes", action="store_true", help="CT-like volumes with a sliding window")
    return p


if __name__ == "__main__":
    _args = _parser().parse_args()
    (_volume_child if _args.volumes else _child)(_args)
