"""Benchmark 2: pseudo-labelling throughput of :class:`PseudoLabeler` vs the bare teacher forward passes.

Three variants run on the same images, interleaved round by round:

- ``bare forward``: the three teachers' forward passes on already preprocessed, already batched
  tensors in memory (``torch.no_grad``, one call per teacher per batch). Nothing else.
- ``PseudoLabeler, in-memory data``: the whole pseudo-labeller, but its dataset hands out the
  preprocessed tensors from memory. Adds to the forward passes: collation, the sigmoid and
  stacking, IM + acceptance, masking the image, statistics, the IM figure sample and writing
  every accepted image, pseudo-label and IM as PNG files (two writer threads), the datalist and
  the atomic move of the output folder.
- ``PseudoLabeler, from files``: the same plus reading the PNG files and the bundles'
  preprocessing transforms (what a study runs).
"""

from __future__ import annotations

import copy
import cProfile
import io
import itertools
import pstats
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import list_data_collate
from monai.utils import convert_to_tensor
from speed_common import interleaved, log, preprocess, summarize, table, to_batches

from monai_im.io import save_png
from monai_im.losses import MaskedDiceCELoss
from monai_im.methods import InconsistencyMask
from monai_im.networks import IMUNet
from monai_im.runtime.acceleration import RunSettings
from monai_im.selftrain import PseudoLabeler
from monai_im.transforms import image_segmentation_transforms, mask_image

__all__ = ["FromMemory", "make_teachers", "run_pseudo_benchmark", "pseudo_tables"]

BATCH = 32
#: the pseudo-labeller's whole runs may take this much longer than the bare forward passes
TARGET_OVERHEAD_PCT = 5.0


class FromMemory:
    """A "transform" that returns the preprocessed image of an item from an in-memory cache.

    Stands in for a cached dataset: the pseudo-labeller sees the same items (file paths, so the
    output names are the same) but reads nothing from disk and runs no preprocessing.
    """

    def __init__(self, cache: Mapping[str, torch.Tensor]) -> None:
        self.cache = cache

    def __call__(self, item: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"image": self.cache[item["image"]]}


class TimedTeacher(torch.nn.Module):
    """Wraps a teacher and adds up the wall-clock seconds spent in its forward passes.

    Inside one pseudo-labelling run, total time minus the time in the teachers' forward passes is
    that run's overhead; unlike a comparison between runs it is not blurred by other processes
    slowing one run more than another.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.net(x)
        self.seconds += time.perf_counter() - start
        return out


def make_teachers(
    data: Sequence[Mapping[str, torch.Tensor]], iterations: int, finetune: int, seed: int = 0
) -> list[torch.nn.Module]:
    """Three ``IMUNet(2, 3, 1, alpha=0.5)`` teachers that produce lesion-like masks.

    Untrained networks give masks that are noise and teachers that disagree almost everywhere,
    so the paper's acceptance rule would keep nothing and no file would be written. A base
    network is therefore trained for ``iterations`` steps on 128x128 crops (same scale as the
    inference images) and two more teachers are fine-tuned from it with other seeds, which gives
    an IM along the lesion borders as between real students. The forward cost of a network does
    not depend on its weights.
    """
    images = torch.stack([d["image"] for d in data])
    labels = torch.stack([d["label"] for d in data])
    size = images.shape[-1]
    crop = min(128, size)
    loss_fn = MaskedDiceCELoss(mode="binary")
    gen = torch.Generator().manual_seed(seed)

    def train(net: torch.nn.Module, steps: int, lr: float) -> torch.nn.Module:
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        net.train()
        for _ in range(steps):
            idx = torch.randint(0, len(images), (8,), generator=gen)
            i, j = torch.randint(0, size - crop + 1, (2,), generator=gen).tolist()
            loss = loss_fn(
                net(images[idx, :, i : i + crop, j : j + crop]), labels[idx, :, i : i + crop, j : j + crop]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return net.eval()

    torch.manual_seed(seed)
    base = train(IMUNet(2, 3, 1, alpha=0.5), iterations, 3e-3)
    teachers = [base]
    for k in (1, 2):
        torch.manual_seed(seed + k)
        teachers.append(train(copy.deepcopy(base), finetune, 1e-3))
    return teachers


def _components(
    teachers: Sequence[torch.nn.Module],
    items: Sequence[Mapping[str, str]],
    cached: Mapping[str, torch.Tensor],
    size: int,
    repeats: int,
    work: Path,
) -> dict[str, dict[str, Any]]:
    """Each step of the pseudo-labeller timed on its own, for one batch of 32 images (one thread for PNG)."""
    batch_items = [{"image": it["image"]} for it in items[:BATCH]]
    transform = image_segmentation_transforms((size, size), num_channels=3)
    from_memory = FromMemory(cached)
    strategy = InconsistencyMask()
    images = list_data_collate([from_memory(it) for it in batch_items])["image"]
    with torch.no_grad():
        outs = [net(images) for net in teachers]
    probs = strategy.activation(torch.stack([o.float() for o in outs]), channel_dim=2)
    result = strategy(probs)
    masked = mask_image(images, result.im, 0.0)
    counter = itertools.count()

    def forward() -> None:
        with torch.no_grad():
            for net in teachers:
                net(images)

    level = PseudoLabeler(strategy, progress=False).compress_level  # the writer's own PNG setting

    def write(with_images: bool) -> None:
        # every image of the batch, as if all were accepted: the per-image cost of the writer; it writes a
        # pseudo-label and an IM per image, and the masked image only with save_masked_images
        out = work / f"png_{next(counter)}"
        out.mkdir()
        labels = (result.label.float() * 255.0).cpu().numpy()
        ims = (result.im.float() * 255).cpu().numpy()
        imgs = (masked.float() * 255.0).cpu().numpy() if with_images else None
        for j in range(labels.shape[0]):
            save_png(out / f"l{j}.png", labels[j], compress_level=level)
            save_png(out / f"m{j}.png", ims[j], compress_level=level)
            if imgs is not None:
                save_png(out / f"i{j}.png", imgs[j], compress_level=level)

    steps = {
        "read + preprocess (transforms), collate": lambda: list_data_collate(
            [transform(dict(it)) for it in batch_items]
        ),
        "collate from memory": lambda: list_data_collate([from_memory(it) for it in batch_items]),
        "3 teacher forward passes": forward,
        "stack + sigmoid": lambda: strategy.activation(
            torch.stack([convert_to_tensor(o, track_meta=False).float() for o in outs]), channel_dim=2
        ),
        "IM + acceptance (strategy)": lambda: strategy(probs),
        "mask_image": lambda: mask_image(images, result.im, 0.0),
        f"PNG writing (32 images x 2 files: label, IM; 1 thread, zlib level {level})": lambda: write(False),
        "PNG writing of the masked images too (save_masked_images, 3 files)": lambda: write(True),
    }
    timings: dict[str, dict[str, Any]] = {}
    for name, fn in steps.items():
        fn()  # warm-up
        wall, cpu = [], []
        for _ in range(repeats):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            fn()
            wall.append(time.perf_counter() - wall0)
            cpu.append(time.process_time() - cpu0)
        timings[name] = {"wall": summarize(wall), "cpu": summarize(cpu)}
    return timings


def _profile(teachers, items, transform, work: Path, top: int = 20) -> str:
    """cProfile of one pseudo-labelling run: the top functions by own time."""
    profiler = cProfile.Profile()
    labeler = PseudoLabeler(InconsistencyMask(), batch_size=BATCH, progress=False)
    profiler.enable()
    labeler(teachers, items, transform, work / "profiled")
    profiler.disable()
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def run_pseudo_benchmark(
    items: Sequence[Mapping[str, str]],
    size: int,
    quick: bool = False,
    profile: bool = False,
) -> dict[str, Any]:
    """Pseudo-label ``items`` (their labels are dropped: truly unlabeled) with three teachers."""
    repeats = 2 if quick else 3
    log(f"[pseudo] preprocessing {len(items)} images of {size}x{size} into memory")
    data = preprocess(items, size)
    log("[pseudo] making three lesion-like teachers (short training on crops)")
    start = time.perf_counter()
    teachers = make_teachers(data[:BATCH], iterations=40 if quick else 150, finetune=10 if quick else 25)
    teacher_seconds = time.perf_counter() - start
    unlabeled = [{"image": it["image"]} for it in items]
    cached = {it["image"]: d["image"] for it, d in zip(items, data)}
    # the bare passes get their batches in the teachers' memory format already, as the pseudo-labeller's
    # reading thread hands them over (else each teacher would convert every batch inside its forward)
    layout = RunSettings().to_memory_format  # the labeller's default policy
    batches = [layout(b) for b in to_batches(data, "image", BATCH)]
    transform = image_segmentation_transforms((size, size), num_channels=3)
    from_memory = FromMemory(cached)
    work = Path(tempfile.mkdtemp(prefix="pl_speed_"))
    counter = itertools.count()
    results: list[Any] = []
    timed = [TimedTeacher(net) for net in teachers]
    inside: dict[str, list[tuple[float, float]]] = {"in-memory data": [], "from files": []}

    def bare() -> None:
        with torch.no_grad():
            for x in batches:
                for net in teachers:
                    net(x)

    def labeler(tf, name: str) -> None:
        out = work / f"run_{next(counter)}"
        for t in timed:
            t.seconds = 0.0
        start = time.perf_counter()
        res = PseudoLabeler(InconsistencyMask(), batch_size=BATCH, progress=False)(timed, unlabeled, tf, out)
        inside[name].append((time.perf_counter() - start, sum(t.seconds for t in timed)))
        results.append(res.stats)

    runs = {
        "bare forward": bare,
        "PseudoLabeler, in-memory data": lambda: labeler(from_memory, "in-memory data"),
        "PseudoLabeler, from files": lambda: labeler(transform, "from files"),
    }
    try:
        log("[pseudo] warm-up on one batch")
        with torch.no_grad():
            for net in teachers:
                net(batches[0])
        PseudoLabeler(InconsistencyMask(), batch_size=BATCH, progress=False)(
            teachers, unlabeled[:BATCH], transform, work / "warmup"
        )
        log(f"[pseudo] {len(items)} images, {repeats} interleaved rounds")
        times = interleaved(runs, repeats=repeats, warmup=0, log=log)
        log("[pseudo] timing the steps on one batch")
        components = _components(teachers, items, cached, size, repeats=3 if quick else 5, work=work)
        profile_text = _profile(teachers, unlabeled, transform, work) if profile else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(items)
    stats = {k: {clock: summarize(v[clock]) for clock in ("wall", "cpu")} for k, v in times.items()}
    for s in stats.values():
        s["images_per_s"] = n / s["wall"]["median"]
    overhead: dict[str, dict[str, float]] = {}
    for clock in ("wall", "cpu"):
        bare_t = stats["bare forward"][clock]["median"]
        mem_t = stats["PseudoLabeler, in-memory data"][clock]["median"]
        file_t = stats["PseudoLabeler, from files"][clock]["median"]
        paired = [
            f / b - 1.0
            for f, b in zip(times["PseudoLabeler, from files"][clock], times["bare forward"][clock])
        ]
        overhead[clock] = {
            "total (from files) vs bare": 100.0 * (file_t / bare_t - 1.0),
            "IM + writing etc. (in-memory) vs bare": 100.0 * (mem_t / bare_t - 1.0),
            "reading + transforms (from files - in-memory)": 100.0 * (file_t - mem_t) / bare_t,
            "total, median of the per-round ratios": 100.0 * statistics.median(paired),
        }
    # the same runs split from the inside: time outside the teachers' forward passes
    in_run = {
        name: {
            "forward_seconds_median": statistics.median(f for _, f in v),
            "outside_forward_pct_median": statistics.median(100.0 * (t - f) / f for t, f in v),
            "outside_forward_pct": [100.0 * (t - f) / f for t, f in v],
        }
        for name, v in inside.items()
    }
    total = overhead["wall"]["total (from files) vs bare"]
    result = {
        "images": n,
        "image_size": size,
        "batch_size": BATCH,
        "repeats": repeats,
        "teacher_setup_seconds": teacher_seconds,
        "pseudo_label_stats": results[0] if results else {},
        "timings": stats,
        "overhead_pct": overhead,
        "in_run_split": in_run,
        "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "target_met": total < TARGET_OVERHEAD_PCT,
        "components_per_batch": components,
        "profile": profile_text,
    }
    result["step_estimate_pct"] = step_estimate(result)
    return result


def step_estimate(result: dict[str, Any]) -> dict[str, float]:
    """The overhead predicted from the steps timed alone (CPU), in % of the forward passes.

    Sums the per-batch CPU time of the steps the pseudo-labeller adds to the forward passes, with
    PNG writing weighted by the fraction of images accepted (and once for every image accepted).
    Less exposed to other processes than a comparison of whole runs; it leaves out what the steps
    cost only together (the writer threads competing with the main thread, the IM figure, stats).
    """
    steps = {k: v["cpu"]["median"] for k, v in result["components_per_batch"].items()}
    forward = steps.pop("3 teacher forward passes")
    png = next(v for k, v in steps.items() if k.startswith("PNG writing"))
    read = steps["read + preprocess (transforms), collate"]
    in_memory = steps["collate from memory"] + steps["stack + sigmoid"]
    in_memory += steps["IM + acceptance (strategy)"] + steps["mask_image"]
    kept = result["pseudo_label_stats"].get("kept_fraction", 1.0)
    return {
        "in-memory, this acceptance": 100.0 * (in_memory + kept * png) / forward,
        "from files, this acceptance": 100.0
        * (in_memory - steps["collate from memory"] + read + kept * png)
        / forward,
        "from files, every image accepted": 100.0
        * (in_memory - steps["collate from memory"] + read + png)
        / forward,
        "PNG writing alone, every image accepted": 100.0 * png / forward,
    }


def pseudo_tables(result: dict[str, Any]) -> str:
    n = result["images"]
    bare = result["timings"]["bare forward"]
    rows = []
    for name, t in result["timings"].items():
        w, c = t["wall"], t["cpu"]
        rows.append(
            [
                name,
                f"{w['median']:.1f}",
                f"{w['min']:.1f} - {w['max']:.1f}",
                f"{t['images_per_s']:.2f}",
                f"{100.0 * (w['median'] / bare['wall']['median'] - 1.0):+.1f}%",
                f"{c['median']:.1f}",
                f"{c['min']:.1f} - {c['max']:.1f}",
                f"{100.0 * (c['median'] / bare['cpu']['median'] - 1.0):+.1f}%",
            ]
        )
    main = table(
        [
            "variant",
            "wall s (median)",
            "wall s (min - max)",
            "images/s",
            "wall vs bare",
            "CPU s (median)",
            "CPU s (min - max)",
            "CPU vs bare",
        ],
        rows,
    )
    over = table(
        ["overhead, % of the bare forward passes", "wall clock", "CPU time"],
        [
            [k, f"{v:+.1f}%", f"{result['overhead_pct']['cpu'][k]:+.1f}%"]
            for k, v in result["overhead_pct"]["wall"].items()
        ],
    )
    split = table(
        ["PseudoLabeler run", "forward passes inside, wall s (median)", "time outside the forward passes"],
        [
            [
                name,
                f"{v['forward_seconds_median']:.1f}",
                f"{v['outside_forward_pct_median']:+.1f}% of forward ("
                + ", ".join(f"{x:.1f}" for x in v["outside_forward_pct"])
                + ")",
            ]
            for name, v in result["in_run_split"].items()
        ],
    )
    estimate = table(
        ["overhead predicted from the steps alone (CPU)", "% of forward"],
        [[k, f"{v:+.1f}%"] for k, v in step_estimate(result).items()],
    )
    comp_rows = [
        [
            name,
            f"{1000 * t['cpu']['median']:.1f}",
            f"{t['cpu']['spread_pct']:.0f}%",
            f"{1000 * t['cpu']['median'] / BATCH:.2f}",
            f"{1000 * t['wall']['median']:.1f}",
        ]
        for name, t in result["components_per_batch"].items()
    ]
    comp = table(
        ["step, alone (one batch of 32)", "CPU ms (median)", "spread", "CPU ms / image", "wall ms (median)"],
        comp_rows,
    )
    st = result["pseudo_label_stats"]
    facts = (
        f"{n} unlabeled images {result['image_size']}x{result['image_size']}, batch {result['batch_size']}, "
        f"3 teachers IMUNet(alpha=0.5), {result['repeats']} interleaved rounds; the paper's acceptance rule kept "
        f"{st.get('images_kept', '?')}/{n}, mean IM fraction {100 * st.get('im_fraction', float('nan')):.1f}%; "
        f"target wall-clock overhead < {result['target_overhead_pct']:g}%: {'met' if result['target_met'] else 'MISSED'}"
    )
    return "\n\n".join([facts, main, over, split, comp, estimate])
