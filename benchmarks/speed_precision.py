"""Benchmark 5: the speed policy (``RunSettings``): eager fp32 vs each setting vs all together.

Two workloads of ``IMUNet(2, 3, 1, alpha=0.5)`` on batches of 16 random images, at 64x64 and 256x256:

- training step: ``zero_grad; MaskedDiceCELoss(net(x), y).backward(); AdamW step``;
- pseudo-labelling: the teacher ensemble forward pass (``ensemble_predict`` of three teachers).

Every variant prepares its networks with :meth:`monai_im.runtime.RunSettings.prepare_network`, the
same call training, validation, pseudo-labelling and inference use. The first call of each variant
(compilation warm-up for the compiled ones) is timed apart, then all variants of one workload are
timed in interleaved rounds (see ``speed_common.interleaved``), so their ratios come from one run.
GFLOP/s count the convolution and matmul FLOPs of one call (``torch.utils.flop_counter``) over its
median time; the peak they are compared with is a single-thread fp32 matmul measured in the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from speed_common import interleaved, log, summarize, table
from torch.utils.flop_counter import FlopCounterMode

from monai_im.losses import MaskedDiceCELoss
from monai_im.networks import IMUNet
from monai_im.runtime import RunSettings, cpu_supports_bf16, ensemble_predict

__all__ = [
    "VARIANTS",
    "run_precision_benchmark",
    "precision_table",
    "fastest",
    "speedup_line",
    "fastest_settings_line",
    "matmul_peak",
    "training_step",
    "pseudo_label_step",
]

BASELINE = "eager fp32"
ALL = "all together"
DEFAULTS = "defaults (RunSettings())"
#: name -> settings; training uses ``precision``, pseudo-labelling ``inference_precision``
VARIANTS: dict[str, RunSettings] = {
    BASELINE: RunSettings(precision="fp32", inference_precision="fp32", channels_last=False),
    "channels_last": RunSettings(precision="fp32", inference_precision="fp32", channels_last=True),
    "bf16 autocast": RunSettings(precision="bf16", inference_precision="bf16", channels_last=False),
    "torch.compile": RunSettings(
        precision="fp32", inference_precision="fp32", channels_last=False, compile=True
    ),
    DEFAULTS: RunSettings(),
    ALL: RunSettings(precision="bf16", inference_precision="bf16", channels_last=True, compile=True),
}
TEACHERS = 3


def matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of a single-thread fp32 ``n x n`` matmul (best of ``repeats``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.rand(n, n), torch.rand(n, n)
        a @ b
        best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    finally:
        torch.set_num_threads(threads)
    return 2 * n**3 / best / 1e9


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _network(settings: RunSettings, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return settings.prepare_network(IMUNet(2, 3, 1, alpha=0.5), "cpu")


def training_step(settings: RunSettings, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    net = _network(settings, 0).train()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = MaskedDiceCELoss(mode="binary")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    return step


def pseudo_label_step(settings: RunSettings, x: torch.Tensor) -> Callable[[], None]:
    teachers = [_network(settings, k).eval() for k in range(TEACHERS)]
    return lambda: ensemble_predict(teachers, x)


def _flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def _workload(
    name: str, make: Callable[[RunSettings], Callable[[], None]], images: int, repeats: int, peak: float
) -> dict[str, Any]:
    steps: dict[str, Callable[[], None]] = {}
    first: dict[str, float] = {}
    for variant, settings in VARIANTS.items():
        settings = dataclasses.replace(settings)  # a fresh copy: a compile failure does not carry over
        steps[variant] = make(settings)
        first[variant] = _seconds(steps[variant])  # compilation happens here for the compiled variants
        steps[variant]()  # a second warm-up call (recompilation, allocator)
        log(f"[precision] {name} {variant}: first call {first[variant]:.2f} s")
    flops = _flops(make(VARIANTS[BASELINE]))
    times = interleaved(steps, repeats, warmup=0, log=log)
    base = summarize(times[BASELINE]["wall"])["median"]
    rows: dict[str, Any] = {}
    for variant in VARIANTS:
        wall = summarize(times[variant]["wall"])
        gflops = flops / wall["median"] / 1e9
        rows[variant] = {
            "seconds": wall,
            "cpu_seconds": summarize(times[variant]["cpu"]),
            "ms_per_image": 1000 * wall["median"] / images,
            "first_call_seconds": first[variant],
            "gflops": gflops,
            "peak_pct": 100 * gflops / peak,
            "speedup": base / wall["median"],
        }
    return {"flops": flops, "variants": rows}


def run_precision_benchmark(quick: bool = False) -> dict[str, Any]:
    """Training step and teacher-ensemble forward of every variant at each image size."""
    sizes = (32, 64) if quick else (64, 256)
    batch = 4 if quick else 16
    repeats = 2 if quick else 5
    peak = matmul_peak(256 if quick else 1024, 3 if quick else 10)
    log(f"[precision] single-thread fp32 matmul peak: {peak:.1f} GFLOP/s")
    result: dict[str, Any] = {
        "batch_size": batch,
        "teachers": TEACHERS,
        "repeats": repeats,
        "matmul_peak_gflops": peak,
        "bf16_native": cpu_supports_bf16(),
        "variants": {name: s.describe("cpu") for name, s in VARIANTS.items()},
        "sizes": {},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.compile's own chatter
        for size in sizes:
            gen = torch.Generator().manual_seed(size)
            x = torch.rand(batch, 3, size, size, generator=gen)
            y = (torch.rand(batch, 1, size, size, generator=gen) > 0.5).float()
            result["sizes"][str(size)] = {
                "training": _workload(
                    f"{size}x{size} training",
                    functools.partial(training_step, x=x, y=y),
                    batch,
                    repeats,
                    peak,
                ),
                "pseudo_labelling": _workload(
                    f"{size}x{size} pseudo-labelling",
                    functools.partial(pseudo_label_step, x=x),
                    batch,
                    repeats,
                    peak,
                ),
            }
    return result


def precision_table(result: dict[str, Any]) -> str:
    """One table per workload and size: time per call and per image, GFLOP/s, % of peak, speed-up."""
    facts = (
        f"IMUNet(alpha=0.5), batch {result['batch_size']}, {result['teachers']} teachers for pseudo-labelling, "
        f"{result['repeats']} interleaved rounds; peak = single-thread fp32 matmul "
        f"{result['matmul_peak_gflops']:.1f} GFLOP/s; native bf16: {'yes' if result['bf16_native'] else 'no (bf16 runs as fp32)'}"
    )
    parts = [facts]
    headers = [
        "variant",
        "s / call (median)",
        "spread",
        "ms / image",
        "GFLOP/s",
        "% of peak",
        "speed-up",
        "first call s",
    ]
    for size, workloads in result["sizes"].items():
        for name, key in (
            ("training step", "training"),
            ("pseudo-labelling (ensemble forward)", "pseudo_labelling"),
        ):
            w = workloads[key]
            rows = [
                [
                    variant,
                    f"{r['seconds']['median']:.4f}",
                    f"{r['seconds']['spread_pct']:.0f}%",
                    f"{r['ms_per_image']:.2f}",
                    f"{r['gflops']:.1f}",
                    f"{r['peak_pct']:.0f}%",
                    f"{r['speedup']:.2f}x",
                    f"{r['first_call_seconds']:.2f}",
                ]
                for variant, r in w["variants"].items()
            ]
            parts.append(
                f"{name}, {size}x{size} ({w['flops'] / 1e9:.2f} GFLOP per call)\n\n{table(headers, rows)}"
            )
    return "\n\n".join(parts)


def fastest(result: dict[str, Any], workload: str) -> tuple[str, float]:
    """The fastest setting of ``workload`` at the largest image size and its speed-up over eager fp32."""
    size = max(result["sizes"], key=int)
    variants = result["sizes"][size][workload]["variants"]
    name = max((v for v in variants if v != BASELINE), key=lambda v: variants[v]["speedup"])
    return name, variants[name]["speedup"]


def speedup_line(result: dict[str, Any]) -> str:
    """The one-line summary: the fastest setting of each workload vs eager fp32, at the largest image size.

    The settings differ (bf16 training with compile is the fastest training; for the teachers' forward
    passes compile slows bf16 down), so the line is preceded by :func:`fastest_settings_line`.
    """
    size = max(result["sizes"], key=int)
    train = fastest(result, "training")[1]
    pseudo = fastest(result, "pseudo_labelling")[1]
    return f"speed-up at {size}x{size}: training {train:.2f}x, pseudo-labelling {pseudo:.2f}x (eager fp32 = 1.00x)"


def fastest_settings_line(result: dict[str, Any]) -> str:
    """Which setting gave each figure of :func:`speedup_line`, with the bundle defaults beside it."""
    size = max(result["sizes"], key=int)
    parts = []
    for workload, label in (("training", "training"), ("pseudo_labelling", "pseudo-labelling")):
        name, _ = fastest(result, workload)
        default = result["sizes"][size][workload]["variants"][DEFAULTS]["speedup"]
        parts.append(f"{label}: fastest '{name}', bundle defaults {default:.2f}x")
    return "; ".join(parts)
