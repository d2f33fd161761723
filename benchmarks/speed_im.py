"""Benchmark 1: throughput of building Inconsistency Masks, batched torch core vs a per-image numpy loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from speed_common import interleaved, log, summarize, table

from monai_im.transforms import inconsistency_mask

__all__ = ["reference_inconsistency_mask", "run_im_benchmark", "im_table"]


def reference_inconsistency_mask(preds: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The paper's rule written plainly, one image at a time.

    Per image: threshold each teacher's map, sum the binary maps; the pseudo-label is 1 where the
    sum equals the number of teachers n, the IM is 1 where 0 < sum < n. With several channels
    (multi-label) the rule is applied per channel, the IM is the union over the channels, and the
    pseudo-label is set to 0 inside the IM.

    Args:
        preds: probabilities of shape (E, B, C, H, W).

    Returns:
        pseudo-labels (B, C, H, W) and IMs (B, 1, H, W), float32 0/1.
    """
    n_teachers, batch, channels = preds.shape[:3]
    pseudo = np.zeros(preds.shape[1:], dtype=np.float32)
    ims = np.zeros((batch, 1, *preds.shape[3:]), dtype=np.float32)
    for b in range(batch):
        votes = np.zeros(preds.shape[2:], dtype=np.int32)
        for e in range(n_teachers):
            votes += preds[e, b] > threshold
        agreed = votes == n_teachers
        im = ((votes > 0) & (votes < n_teachers)).any(axis=0)
        agreed[:, im] = False
        pseudo[b] = agreed
        ims[b, 0] = im
    return pseudo, ims


def _case(
    name: str, mode: str, channels: int, teachers: int, batch: int, size: int, repeats: int, threads: int
) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    # teacher-like maps: a shared probability map plus a per-teacher perturbation
    base = torch.rand(1, batch, channels, size, size, generator=gen)
    preds = (0.7 * base + 0.3 * torch.rand(teachers, batch, channels, size, size, generator=gen)).contiguous()
    preds_np = preds.numpy().copy()

    pl_t, im_t = inconsistency_mask(preds, mode=mode)
    pl_n, im_n = reference_inconsistency_mask(preds_np)
    identical = bool(np.array_equal(pl_t.numpy(), pl_n) and np.array_equal(im_t.numpy(), im_n))
    if not identical:
        raise AssertionError(
            f"{name}: monai_im.transforms.inconsistency_mask differs from the reference rule"
        )

    runs = {
        "torch batched": lambda: inconsistency_mask(preds, mode=mode),
        "numpy per image": lambda: reference_inconsistency_mask(preds_np),
    }
    single = threads != 1
    if single:

        def one_thread() -> None:
            torch.set_num_threads(1)
            try:
                inconsistency_mask(preds, mode=mode)
            finally:
                torch.set_num_threads(threads)

        runs["torch batched, 1 thread"] = one_thread
    times = interleaved(runs, repeats=repeats, warmup=2)
    stats = {k: summarize(v["wall"]) for k, v in times.items()}
    cpu = {k: summarize(v["cpu"]) for k, v in times.items()}
    ref = stats["numpy per image"]["median"]
    return {
        "case": name,
        "mode": mode,
        "shape": [teachers, batch, channels, size, size],
        "identical_outputs": identical,
        "im_fraction": float(im_t.mean()),
        "timings": {
            k: {
                **s,
                "images_per_s": batch / s["median"],
                "speedup_vs_numpy": ref / s["median"],
                "cpu": cpu[k],
            }
            for k, s in stats.items()
        },
    }


def run_im_benchmark(threads: int, quick: bool = False) -> dict[str, Any]:
    """IM creation, binary (C=1) and multi-label (C=3), E=3 teachers, B=32, 256x256."""
    size, batch, teachers = 256, 32, 3
    repeats = 5 if quick else 15
    cases = []
    for name, mode, channels in (("binary", "binary", 1), ("multilabel", "multilabel", 3)):
        log(f"[im] {name}: E={teachers} B={batch} C={channels} {size}x{size}, {repeats} repeats")
        cases.append(_case(name, mode, channels, teachers, batch, size, repeats, threads))
    return {"repeats": repeats, "cases": cases}


def im_table(result: dict[str, Any]) -> str:
    rows = []
    for case in result["cases"]:
        e, b, c, h, w = case["shape"]
        for impl, t in case["timings"].items():
            rows.append(
                [
                    f"{case['case']} (E={e}, B={b}, C={c}, {h}x{w})",
                    impl,
                    f"{1000 * t['median']:.1f}",
                    f"{t['spread_pct']:.0f}%",
                    f"{t['images_per_s']:,.0f}",
                    f"{t['speedup_vs_numpy']:.2f}x",
                    "yes" if case["identical_outputs"] else "NO",
                ]
            )
    return table(
        ["case", "implementation", "ms / batch (median)", "spread", "images/s", "vs numpy", "identical"], rows
    )
