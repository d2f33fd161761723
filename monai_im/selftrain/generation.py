"""The two works of a generation: its pseudo-labels (made by the teachers) and its students.

Both reuse what an earlier run finished (a pseudo-label set, a student's ``result.json``) and spread
the rest over the processes of a distributed study. They are the study's steps
(:meth:`monai_im.selftrain.SelfTrainingStudy.pseudo_label` and
:meth:`~monai_im.selftrain.SelfTrainingStudy.train_generation`); they take the study they work for.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import DataLoader
from monai.utils import set_determinism

from monai_im.methods.context import GenerationContext, StudentResult
from monai_im.runtime.concurrency import run_concurrently, student_dataset
from monai_im.selftrain.checkpoint import LAST_CHECKPOINT, EpochShuffleSampler
from monai_im.selftrain.degeneration import report_degeneration
from monai_im.selftrain.events import StudyEvents, replay_student
from monai_im.selftrain.finetune import finetune_student, finish_finetuning, first_phase
from monai_im.selftrain.pseudo_label import PseudoLabelResult
from monai_im.selftrain.settings import StudentTraining
from monai_im.selftrain.student import load_weights, train_student

if TYPE_CHECKING:
    from monai_im.selftrain.study import SelfTrainingStudy

__all__ = [
    "run_generation",
    "summary_line",
    "generation_context",
    "make_pseudo_labels",
    "finished_pseudo_labels",
    "train_students",
    "not_shared",
]

logger = logging.getLogger("monai_im")


def not_shared(study: SelfTrainingStudy, path: Path) -> RuntimeError:
    """The error of a process that does not see a file another process of the study wrote."""
    return RuntimeError(
        f"process {study.distributed.rank}: {path} is missing after another process wrote it: output_dir "
        "must be on a filesystem all processes share"
    )


def finished_pseudo_labels(study: SelfTrainingStudy, generation: int) -> PseudoLabelResult | None:
    """The finished pseudo-label set of ``generation`` in the study's folder, with the originals where the
    dataset is now (it may have moved); None when there is none."""
    finished = PseudoLabelResult.load(study.layout.pseudo_label_dir(generation))
    if finished is None:
        return None
    old_figure = study.layout.figure_file(generation)  # where versions <= 0.3 drew it
    if finished.figure_path is None and old_figure.is_file():
        finished.figure_path = str(old_figure)
    unlabeled = study.datalist["unlabeled"]
    for item in finished.items:
        if isinstance(item.get("source"), int) and 0 <= item["source"] < len(unlabeled):
            item["image"] = str(unlabeled[item["source"]]["image"])
    return finished


def generation_context(
    study: SelfTrainingStudy, generation: int, teachers: Sequence[StudentResult]
) -> GenerationContext:
    """What :meth:`Method.prepare_generation` gets: the loaded teachers, the data and the settings."""
    return GenerationContext(
        generation=generation,
        teachers=[study.load_student(t) for t in teachers],
        teacher_results=list(teachers),
        datalist=study.datalist,
        eval_transforms=study.data.eval_transforms,
        device=study.device,
        inferer=study.evaluation.inferer,
        batch_size=study.protocol.eval_batch_size,
        seed=study.student_seed(generation, 998),
        output_dir=study.generation_dir(generation),
        progress=study.progress,
        run_settings=study.run_settings,
        method=study.method,
    )


def make_pseudo_labels(
    study: SelfTrainingStudy, generation: int, teachers: Sequence[StudentResult]
) -> tuple[PseudoLabelResult, bool]:
    """Pseudo-label the unlabeled set with the teachers, or reuse a finished set from an earlier run;
    returns the set and whether it was reused.

    In a distributed study every process labels its shard of the unlabeled set (whole batches) into
    its own folder, rank 0 merges them into the final set, and the others then load it.
    """
    out = study.layout.pseudo_label_dir(generation)
    finished = finished_pseudo_labels(study, generation)
    if finished is not None:
        return finished, True
    context = generation_context(study, generation, teachers)
    extra = study.method.prepare_generation(context)
    unlabeled = study.datalist["unlabeled"]
    has_labels = all("label" in it for it in unlabeled)
    transform = study.data.eval_transforms if has_labels else study.data.infer_transforms
    description = f"gen {generation} pseudo-labels"
    dist, labeler = study.distributed, study.pseudo_labeler
    if not dist.is_distributed:
        result = labeler(
            context.teachers, unlabeled, transform, out, description=description, extra_stats=extra
        )
        return result, False
    shard = dist.shard(len(unlabeled), labeler.batch_size)
    logger.info(f"process {dist.rank}: pseudo-labels unlabeled images {shard[0]}:{shard[1]}")
    labeler.label_shard(
        context.teachers, unlabeled, transform, labeler.shard_folder(out, dist.rank), shard, description
    )
    dist.barrier()  # every shard is written
    if dist.is_main:
        shards = [labeler.shard_folder(out, r) for r in range(dist.world_size)]
        labeler.merge_shards(shards, out, extra_stats=extra)
    dist.barrier()  # the set is complete
    result = finished_pseudo_labels(study, generation)
    if result is None:
        raise not_shared(study, out / "datalist.json")
    return result, False


def run_generation(
    study: SelfTrainingStudy, g: int, history: Sequence[Sequence[StudentResult]]
) -> dict[str, Any]:
    """One generation: teachers, pseudo-labels, students, ranking, test; writes its ``summary.json``."""
    start = time.time()
    study.fire_event(StudyEvents.GENERATION_STARTED, generation=g)
    pseudo_items: list[dict[str, Any]] = []
    pseudo_stats: dict[str, float] = {}
    teachers = study.choose_teachers(history) if g > 0 else []
    if g > 0 and study.method.makes_pseudo_labels:
        plr, resumed = study.pseudo_label(g, teachers)
        report_degeneration(plr.stats, g, study.protocol.max_im_warning, log=study.distributed.is_main)
        pseudo_items, pseudo_stats = plr.items, plr.stats
        figure = Path(plr.figure_path) if plr.figure_path else None
        study.fire_event(
            StudyEvents.PSEUDO_LABELS_READY, generation=g, result=plr, figure=figure, resumed=resumed
        )
    items = study.method.training_items(study.datalist, pseudo_items, g)
    students = study.train_generation(g, items, teachers)
    if not study.distributed.is_main:  # rank 0 tests the best student and writes the summary
        study.distributed.barrier()
        summary = study.layout.read_summary(g)
        if summary is None:
            raise not_shared(study, study.layout.summary_file(g))
        return summary
    ranked = study.rank(students)
    best = ranked[0]
    test = study.evaluate(best, study.test_loader) if study.test_loader is not None else {}
    summary = {
        "generation": g,
        "method": study.method.name,
        "training_images": len(items),
        "teachers": [t.index for t in teachers],
        "ranking": [r.index for r in ranked],
        "best_student": best.index,
        f"val_{study.key_metric_name}": best.best_metric,
        "test": test,
        "pseudo_labels": pseudo_stats,
        "checkpoint": best.checkpoint,
        "seconds": round(time.time() - start, 1),
        "students": [s.to_dict() for s in students],
    }
    if study.protocol.teacher_pool != "last":
        summary["teacher_generations"] = [t.generation for t in teachers]
    study.layout.write_summary(summary)
    study.distributed.barrier()  # the other processes read it
    logger.info(summary_line(study, summary))
    return summary


def summary_line(study: SelfTrainingStudy, summary: Mapping[str, Any]) -> str:
    """One line per generation: best student, validation and test metrics, pseudo-label statistics."""
    key = f"val_{study.key_metric_name}"
    parts = [
        f"generation {summary['generation']} [{summary['method']}]",
        f"best student {summary['best_student']}",
        f"{key}={summary[key]:.4f}",
    ]
    parts += [f"{k}={v:.4f}" for k, v in summary.get("test", {}).items()]
    ps = summary.get("pseudo_labels") or {}
    if ps:
        parts.append(
            f"pseudo-labels kept {ps['images_kept']}/{ps['unlabeled_images']}, IM {100 * ps['im_fraction']:.1f}%"
        )
    parts.append(f"{summary['seconds']:.0f}s")
    return " | ".join(parts)


def train_students(
    study: SelfTrainingStudy,
    generation: int,
    items: Sequence[Mapping[str, Any]],
    teachers: Sequence[StudentResult] = (),
) -> list[StudentResult]:
    """Train (or reload) the students of a generation, ``concurrent_students`` of them at a time.

    In a distributed study each process trains the students it owns (``k % world_size``), then
    reads the others' ``result.json`` once every process has finished.
    """
    dist = study.distributed
    results: dict[int, StudentResult] = {}
    todo: list[int] = []
    for k in range(study.protocol.num_students):
        result = study.layout.read_student(generation, k)
        if result is None:
            todo.append(k)
            continue
        study.fire_event(StudyEvents.STUDENT_FINISHED, result=result, resumed=True)
        results[k] = result
    dist.barrier()  # every process has seen which students were finished before
    own = [k for k in todo if dist.owns(k)]
    if dist.is_distributed:
        logger.info(f"process {dist.rank}: trains students {own} of generation {generation}")
    if own:
        train_ds = study.loaders.training_set(items, study.method.augmentation_for(generation))
        start = study.method.initial_weights(generation, teachers)
        jobs = [_student_job(study, generation, k, train_ds, start) for k in own]
        for k, result in zip(own, run_concurrently(jobs, study.protocol.concurrent_students, study.device)):
            results[k] = result
    set_determinism(seed=None)
    if dist.is_distributed:
        dist.barrier()  # every student of the generation is written
        for k in todo:
            if k in results:
                continue
            result = study.layout.read_student(generation, k)
            if result is None:
                raise not_shared(study, study.student_dir(generation, k) / "result.json")
            if dist.is_main:  # the handlers see it as if it had trained here
                replay_student(study, result)
            results[k] = result
    return [results[k] for k in range(study.protocol.num_students)]


def _student_job(
    study: SelfTrainingStudy, generation: int, index: int, train_ds: Any, start: StudentResult | None
) -> Callable[[], StudentResult]:
    """Everything seeded for one student (network, data order, its own copy of the random transforms,
    seeded by its loader, its training step), and its training; the jobs of a generation are all
    prepared first."""
    seed = study.student_seed(generation, index)
    set_determinism(seed=seed)
    net = study.student_network(generation)
    if start is not None:
        load_weights(net, start.checkpoint, study.device)
    loader = _student_loader(study, train_ds, seed)
    epochs, val_interval = study.protocol.schedule(len(loader))
    optimizer = study.optimizer(net.parameters())
    iteration = study.method.iteration(study.student_context(generation, index))
    training = StudentTraining(
        epochs=epochs,
        evaluation=study.evaluation,
        val_interval=val_interval,
        run_settings=study.run_settings,
        progress=study.progress,
        # every student its own copy of the extra handlers (they are stateful and attach to one engine)
        handlers=[_StudentHook(study, generation, index), *copy.deepcopy(list(study.student_handlers))],
        val_handlers=copy.deepcopy(list(study.student_val_handlers)),
        lr_scheduler=study.lr_scheduler,
    )
    save_dir = study.student_dir(generation, index)
    tuning = study.method.finetune_items(generation, study.datalist)

    def job() -> StudentResult:
        result = first_phase(save_dir) if tuning is not None else None
        if result is None:
            result = train_student(
                generation=generation,
                index=index,
                network=net,
                optimizer=optimizer,
                loss_function=study.loss_function,
                train_loader=loader,
                val_loader=study.val_loader,
                device=study.device,
                save_dir=save_dir,
                training=training,
                iteration_update=iteration,
            )
        if tuning is not None:
            make_loader = functools.partial(_student_loader, study, seed=seed)
            result = finetune_student(study, result, net, tuning, training, make_loader)
        study.layout.write_student(result)
        # the result is stored: the epoch checkpoint it resumed from is no longer needed
        (save_dir / LAST_CHECKPOINT).unlink(missing_ok=True)
        if tuning is not None:
            finish_finetuning(save_dir)
        study.fire_event(StudyEvents.STUDENT_FINISHED, result=result, resumed=False)
        return result

    return job


def _student_loader(study: SelfTrainingStudy, train_ds: Any, seed: int) -> DataLoader:
    """A student's loader of ``train_ds``: its own copy of the random transforms, seeded by the loader, and
    an epoch order that is a function of ``(seed, epoch)``."""
    dataset = student_dataset(train_ds)
    batch_size = study.protocol.batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(dataset, seed),  # the same order of an epoch when resumed
        num_workers=study.data.num_workers,
        generator=torch.Generator().manual_seed(seed),
        drop_last=len(dataset) > batch_size,
    )


class _StudentHook:
    """Fires ``STUDENT_STARTED`` with the new trainer, so that handlers can attach epoch-level handlers."""

    def __init__(self, study: SelfTrainingStudy, generation: int, index: int) -> None:
        self.study, self.generation, self.index = study, generation, index

    def attach(self, trainer: Any) -> None:
        self.study.fire_event(
            StudyEvents.STUDENT_STARTED, generation=self.generation, index=self.index, trainer=trainer
        )
