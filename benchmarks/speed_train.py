"""Benchmark 3: one student's training epoch through ``train_student`` vs a bare PyTorch loop.

Both sides train ``IMUNet(2, 3, 1, alpha=0.5)`` from the same initial weights with AdamW
(lr 3e-3, weight decay 1e-4) and ``MaskedDiceCELoss`` on the same preprocessed images held in
memory, batch 32, the same number of batches per epoch.

- workflow: :func:`monai_im.selftrain.train_student` (MONAI ``SupervisedTrainer`` + evaluator +
  checkpointing), fed like a study feeds it: a ``CacheDataset`` (cache rate 1) and a shuffling
  ``DataLoader``. Validation is switched off for every epoch but the last one (which always
  validates); an epoch is timed from ``EPOCH_STARTED`` to ``EPOCH_COMPLETED`` by a handler
  attached through ``extra_handlers``, the first (warm-up) and the last (validating) epochs are
  not counted.
- bare loop: ``for x, y in batches: zero_grad; loss(net(x), y).backward(); step`` over the same
  tensors, already stacked into batches.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader
from monai.handlers import from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose
from speed_common import log, summarize, table, to_batches

from monai_im.losses import MaskedDiceCELoss
from monai_im.metrics import PerImageIoU
from monai_im.networks import IMUNet
from monai_im.selftrain import Evaluation, StudentTraining, train_student
from monai_im.transforms import image_segmentation_transforms

__all__ = ["EpochTimer", "run_train_benchmark", "train_table"]

BATCH = 32


class EpochTimer:
    """Records the wall-clock and CPU seconds of every epoch of an ignite engine (EPOCH_STARTED -> EPOCH_COMPLETED)."""

    def __init__(self) -> None:
        self.starts: dict[int, tuple[float, float]] = {}
        self.seconds: dict[int, float] = {}
        self.cpu_seconds: dict[int, float] = {}

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._stop)

    def _start(self, engine) -> None:
        self.starts[engine.state.epoch] = (time.perf_counter(), time.process_time())

    def _stop(self, engine) -> None:
        epoch = engine.state.epoch
        wall0, cpu0 = self.starts[epoch]
        self.seconds[epoch] = time.perf_counter() - wall0
        self.cpu_seconds[epoch] = time.process_time() - cpu0


def _network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return IMUNet(2, 3, 1, alpha=0.5)


def _optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)


def _workflow_epochs(
    items: Sequence[Mapping[str, str]],
    val_items: Sequence[Mapping[str, str]],
    size: int,
    epochs: int,
    work: Path,
) -> tuple[list[float], list[float], float]:
    """Per-epoch wall and CPU seconds of ``train_student`` (all epochs) and the whole call's seconds."""
    transform = image_segmentation_transforms((size, size), num_channels=3)
    train_ds = CacheDataset(list(items), transform=transform, cache_rate=1.0, progress=False)
    val_ds = CacheDataset(list(val_items), transform=transform, cache_rate=1.0, progress=False)
    loader = DataLoader(
        train_ds, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
    )
    val_loader = DataLoader(val_ds, batch_size=BATCH)
    net = _network(0)
    timer = EpochTimer()
    start = time.perf_counter()
    training = StudentTraining(
        epochs=epochs,
        evaluation=Evaluation(
            key_metric={"iou": PerImageIoU(output_transform=from_engine(["pred", "label"]))},
            postprocessing=Compose(
                [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)]
            ),
        ),
        val_interval=epochs + 1,  # no validation but the obligatory one after the last epoch
        handlers=[timer],
        progress=False,
    )
    train_student(
        generation=0,
        index=0,
        network=net,
        optimizer=_optimizer(net),
        loss_function=MaskedDiceCELoss(mode="binary"),
        train_loader=loader,
        val_loader=val_loader,
        device=torch.device("cpu"),
        save_dir=work / "student",
        training=training,
    )
    total = time.perf_counter() - start
    epochs_run = sorted(timer.seconds)
    return [timer.seconds[e] for e in epochs_run], [timer.cpu_seconds[e] for e in epochs_run], total


def _bare_epochs(
    images: list[torch.Tensor], labels: list[torch.Tensor], epochs: int
) -> tuple[list[float], list[float]]:
    net = _network(0)
    opt = _optimizer(net)
    loss_fn = MaskedDiceCELoss(mode="binary")
    net.train()
    seconds, cpu_seconds = [], []
    for _ in range(epochs):
        start, cpu0 = time.perf_counter(), time.process_time()
        for x, y in zip(images, labels):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu0)
    return seconds, cpu_seconds


def run_train_benchmark(
    items: Sequence[Mapping[str, str]], size: int, quick: bool = False, measured: int | None = None
) -> dict[str, Any]:
    """Time ``measured`` training epochs of each side (after one warm-up epoch), in alternating rounds."""
    num_batches = 2 if quick else 4
    measured = measured or 2
    rounds = 1 if quick else 4
    train_items = list(items[: num_batches * BATCH])
    val_items = list(items[num_batches * BATCH : num_batches * BATCH + 2]) or list(items[:2])
    if len(train_items) < num_batches * BATCH:
        raise ValueError(
            f"need {num_batches * BATCH} images for {num_batches} batches, got {len(train_items)}"
        )
    transform = image_segmentation_transforms((size, size), num_channels=3)
    data = [transform(dict(it)) for it in train_items]
    images, labels = to_batches(data, "image", BATCH), to_batches(data, "label", BATCH)
    work = Path(tempfile.mkdtemp(prefix="train_speed_"))
    workflow: list[float] = []
    bare: list[float] = []
    workflow_cpu: list[float] = []
    bare_cpu: list[float] = []
    workflow_calls: list[float] = []
    try:
        for r in range(rounds):
            order = ("workflow", "bare") if r % 2 == 0 else ("bare", "workflow")
            for side in order:
                log(
                    f"[train] round {r + 1}/{rounds}: {side}, {measured} measured epochs of {num_batches} batches"
                )
                if side == "workflow":
                    # epoch 1 warms up, epochs 2..measured+1 are timed, the last one validates
                    per_epoch, per_epoch_cpu, total = _workflow_epochs(
                        train_items, val_items, size, measured + 2, work / f"r{r}"
                    )
                    workflow += per_epoch[1:-1]
                    workflow_cpu += per_epoch_cpu[1:-1]
                    workflow_calls.append(total)
                    log(f"  workflow epochs (s): {[round(s, 2) for s in per_epoch]}")
                else:
                    per_epoch, per_epoch_cpu = _bare_epochs(images, labels, measured + 1)
                    bare += per_epoch[1:]
                    bare_cpu += per_epoch_cpu[1:]
                    log(f"  bare epochs (s): {[round(s, 2) for s in per_epoch]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wf, bs = summarize(workflow), summarize(bare)
    wf_cpu, bs_cpu = summarize(workflow_cpu), summarize(bare_cpu)
    ratio = wf["median"] / bs["median"]
    return {
        "image_size": size,
        "batch_size": BATCH,
        "batches_per_epoch": num_batches,
        "rounds": rounds,
        "workflow_epoch_seconds": wf,
        "bare_epoch_seconds": bs,
        "workflow_epoch_cpu_seconds": wf_cpu,
        "bare_epoch_cpu_seconds": bs_cpu,
        "workflow_call_seconds": workflow_calls,
        "ratio": ratio,
        "cpu_ratio": wf_cpu["median"] / bs_cpu["median"],
        "target_ratio": 1.15,
        "target_met": ratio < 1.15,
    }


def train_table(result: dict[str, Any]) -> str:
    rows = []
    for name, key in (("train_student (MONAI workflow)", "workflow"), ("bare PyTorch loop", "bare")):
        t, c = result[f"{key}_epoch_seconds"], result[f"{key}_epoch_cpu_seconds"]
        rows.append(
            [
                name,
                f"{t['median']:.2f}",
                f"{t['min']:.2f} - {t['max']:.2f}",
                f"{t['spread_pct']:.0f}%",
                f"{c['median']:.2f}",
                f"{c['min']:.2f} - {c['max']:.2f}",
                t["n"],
                f"{result['batches_per_epoch'] * result['batch_size'] / t['median']:.2f}",
            ]
        )
    facts = (
        f"one epoch = {result['batches_per_epoch']} batches of {result['batch_size']} images "
        f"{result['image_size']}x{result['image_size']}, IMUNet(alpha=0.5), AdamW 3e-3, MaskedDiceCELoss, "
        f"{result['rounds']} round(s); ratio workflow / bare = {result['ratio']:.3f} wall clock, "
        f"{result['cpu_ratio']:.3f} CPU time (target < 1.15: {'met' if result['target_met'] else 'MISSED'})"
    )
    headers = [
        "side",
        "wall s / epoch (median)",
        "wall s (min - max)",
        "spread",
        "CPU s / epoch (median)",
        "CPU s (min - max)",
        "epochs timed",
        "images/s",
    ]
    return facts + "\n\n" + table(headers, rows)
