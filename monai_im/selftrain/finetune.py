"""A second training phase of a student on the labeled images only (a method's ``finetune_items``).

After its normal training a student of a generation >= 1 trains ``method.finetune_epochs`` more epochs on
the items of :meth:`monai_im.methods.Method.finetune_items`, starting from its best weights, with a new
optimizer of the study's settings and the standard supervised step. The phase writes into ``finetune/`` of
the student's folder; the student's ``model.pt`` is then the best of both phases on validation, and its
history holds the rows of both (the second phase's rows numbered on, marked ``finetune: 1``).

Resuming: the first phase's result is stored as ``pretrain.json`` before the second starts, so a study
killed during fine-tuning resumes (or restarts) the fine-tuning only, from its own epoch checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from monai_im.io import atomic_write_json, load_json
from monai_im.methods.context import StudentResult
from monai_im.selftrain.checkpoint import LAST_CHECKPOINT
from monai_im.selftrain.settings import StudentTraining
from monai_im.selftrain.student import load_weights, train_student

if TYPE_CHECKING:
    from monai_im.selftrain.study import SelfTrainingStudy

__all__ = ["FINETUNE_DIR", "PRETRAIN_FILE", "first_phase", "finetune_student", "finish_finetuning"]

#: the folder of the fine-tuning phase inside the student's folder
FINETUNE_DIR = "finetune"
#: the first phase's result in the student's folder, while the student is fine-tuned
PRETRAIN_FILE = "pretrain.json"


def first_phase(save_dir: Path) -> StudentResult | None:
    """The stored result of a student's first phase (before fine-tuning), or None."""
    f = save_dir / PRETRAIN_FILE
    if not f.is_file():
        return None
    return StudentResult.from_dict({**load_json(f), "checkpoint": str(save_dir / "model.pt")})


def _store_first_phase(result: StudentResult, save_dir: Path) -> None:
    atomic_write_json(save_dir / PRETRAIN_FILE, {**result.to_dict(), "checkpoint": "model.pt"})
    (save_dir / LAST_CHECKPOINT).unlink(missing_ok=True)  # the first phase is stored


def finetune_student(
    study: SelfTrainingStudy,
    first: StudentResult,
    network: torch.nn.Module,
    items: Sequence[Mapping[str, Any]],
    training: StudentTraining,
    make_loader: Callable[[Any], Any],
) -> StudentResult:
    """Fine-tune the student ``first`` on ``items``; returns its result over both phases.

    Args:
        study: the study.
        first: the student's first-phase result (its best weights are the start).
        network: the student's network (its weights are replaced by the first phase's best).
        items: the fine-tuning items.
        training: how the first phase trained (its evaluation, speed and scheduler settings are kept).
        make_loader: the student's loader of a training set.
    """
    save_dir = Path(first.checkpoint).parent
    _store_first_phase(first, save_dir)
    load_weights(network, first.checkpoint, study.device)
    epochs = int(study.method.finetune_epochs)
    train_ds = study.loaders.training_set(items, study.method.augmentation_for(first.generation))
    tuning = dataclasses.replace(
        training,
        epochs=epochs,
        val_interval=min(training.val_interval, epochs),
        handlers=copy.deepcopy(list(study.student_handlers)),
        val_handlers=copy.deepcopy(list(study.student_val_handlers)),
    )
    second = train_student(
        generation=first.generation,
        index=first.index,
        network=network,
        optimizer=study.optimizer(network.parameters()),
        loss_function=study.loss_function,
        train_loader=make_loader(train_ds),
        val_loader=study.val_loader,
        device=study.device,
        save_dir=save_dir / FINETUNE_DIR,
        training=tuning,
    )
    return _both_phases(first, second, training.evaluation.higher_is_better)


def _both_phases(first: StudentResult, second: StudentResult, higher_is_better: bool) -> StudentResult:
    """The student over both phases: the best checkpoint of the two (copied to ``model.pt``), the histories."""
    offset = max((int(row["epoch"]) for row in first.history), default=0)
    history = [
        *first.history,
        *({**row, "epoch": row["epoch"] + offset, "finetune": 1.0} for row in second.history),
    ]
    better = (
        second.best_metric > first.best_metric if higher_is_better else second.best_metric < first.best_metric
    )
    best, best_epoch = (
        (second.best_metric, offset + second.best_epoch) if better else (first.best_metric, first.best_epoch)
    )
    if better:
        tmp = Path(first.checkpoint).with_suffix(".pt.partial")
        shutil.copyfile(second.checkpoint, tmp)
        os.replace(tmp, first.checkpoint)
    return dataclasses.replace(first, best_metric=best, best_epoch=best_epoch, history=history)


def finish_finetuning(save_dir: Path) -> None:
    """Remove what the fine-tuning left once the student's result is stored (its folder, ``pretrain.json``)."""
    shutil.rmtree(save_dir / FINETUNE_DIR, ignore_errors=True)
    (save_dir / PRETRAIN_FILE).unlink(missing_ok=True)
