"""The self-training workflow: students -> teachers -> pseudo-labels -> next students.

One :class:`SelfTrainingStudy` runs a whole study from bundle JSON: generation 0 trains
``num_students`` students on the labeled set; each later generation ranks the previous
students on the validation key metric, takes the top ``num_teachers`` as teachers, lets
the method pseudo-label the unlabeled set, and trains new students from scratch on
labeled + pseudo-labeled data. The best student of every generation is scored on the
test set.

Everything a study writes lives under ``output_dir`` (see :class:`monai_im.selftrain.layout.StudyLayout`);
finished students (``result.json``), finished pseudo-label sets (an atomically created folder) and
finished generations (``summary.json``) are never redone, so running the same command after an
interruption continues where the study stopped, also in a moved or copied folder. ``study.json``
records what the folder holds; a run of another study into it stops before any work.

The method (:class:`monai_im.methods.Method`) decides, through its hooks, everything in which
methods differ (teachers, pseudo-labels, training items, augmentation, student networks, the training
step); no method is named in this loop. Handlers (e.g. :class:`monai_im.handlers.MLflowStudyHandler`)
observe the :class:`monai_im.selftrain.events.StudyEvents` they register for; they never steer the flow.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import Inferer
from monai.transforms import Compose
from monai.utils import set_determinism

from monai_im.io import atomic_write_bytes
from monai_im.methods import GenerationContext, InconsistencyMask, Method
from monai_im.runtime.acceleration import RunSettings
from monai_im.runtime.concurrency import run_concurrently, student_dataset
from monai_im.runtime.distributed import DistributedContext
from monai_im.selftrain.checkpoint import LAST_CHECKPOINT, EpochShuffleSampler
from monai_im.selftrain.events import StudyEventRegistry, StudyEvents, replay_student
from monai_im.selftrain.layout import StudyLayout, StudyMismatchError, study_identity
from monai_im.selftrain.pseudo_label import PseudoLabeler, PseudoLabelResult
from monai_im.selftrain.student import (
    StudentResult,
    build_network,
    load_weights,
    make_evaluator,
    train_student,
)

__all__ = ["SelfTrainingStudy", "TEACHER_POOLS"]

logger = logging.getLogger("monai_im")

#: Where teachers come from: the previous generation's students, or every generation's so far.
TEACHER_POOLS = ("last", "all")


class SelfTrainingStudy(StudyEventRegistry):
    """A whole self-training study (generation 0, pseudo-labelling, generations 1..G).

    Args:
        datalist: the dataset, as returned by :func:`monai_im.data.load_datalist`.
        output_dir: where checkpoints, pseudo-labels and summaries go.
        network: a factory returning a new network (``_mode_: "callable"`` in JSON), or a template
            module that is deep-copied and re-initialised for every student.
        optimizer: a factory taking the parameters, e.g. ``torch.optim.AdamW`` with ``_mode_: "callable"``.
        loss_function: the training loss.
        train_transforms: dictionary transforms for labeled and pseudo-labeled items (keys image, label, im).
        eval_transforms: dictionary transforms for validation and test items (keys image, label).
        infer_transforms: dictionary transforms for unlabeled items (key image; label when present).
        unlabeled_transforms: the transforms of the unlabeled batches of the methods with their own
            training step (FixMatch, Mean Teacher, CPS, Consistency Loss); None = ``infer_transforms``.
            Volumes of different sizes need random patches here (e.g. :func:`volume_patch_transforms`).
        key_metric: ``{name: metric handler}``; the validation key metric (logged as ``val_<name>``) that
            ranks students and picks checkpoints; the test metrics are ``test_<name>``.
        additional_metrics: further ``{name: metric handler}`` computed on validation and test.
        method: the self-training method (:mod:`monai_im.methods`; default: Inconsistency Masks,
            binary).
        postprocessing: evaluator post-processing (activation + discretisation of ``pred``).
        num_students: students per generation (K).
        num_teachers: teachers per generation (n, the top-n students; a method may use fewer, see
            :meth:`Method.teacher_count`).
        teacher_pool: ``"last"``: teachers are the previous generation's best students (the paper);
            ``"all"``: the best of every generation so far, ranked on the same validation metric.
        num_generations: generations after generation 0 (G).
        epochs: training epochs per student.
        min_steps: a floor on the optimiser steps of every student (0 = none): a student whose training
            set is small gets ``ceil(min_steps / batches per epoch)`` epochs instead, and validates
            proportionally less often, so it is validated about as often as one with ``epochs``.
            Without it, labeled-only students on a small labeled set take very few steps
            (30 images, batch 8, 20 epochs: 60 steps) and make weak, mutually inconsistent teachers.
        batch_size: training and inference batch size.
        eval_batch_size: the batch size of validation, test and pseudo-labelling; None = ``batch_size``.
            Volumes of different sizes cannot share a batch: the 3D bundles use 1 (their sliding-window
            inferer batches the patches of a volume instead).
        val_interval: validate every this many epochs (and after the last epoch).
        seed: base seed; student k of generation g uses ``100000 * seed + 1000 * g + k`` (see
            :meth:`student_seed`), so that studies with different seeds share no student.
        device: torch device; default CUDA when available, else CPU.
        run_settings: the speed policy of every forward pass (training, validation, test and
            pseudo-labelling): precision, memory format, compilation; default :class:`RunSettings` ().
        inferer: how networks are applied in validation, test and pseudo-labelling (e.g. AdaptiveInferer).
        higher_is_better: direction of the key metric (False for errors such as MCCE).
        num_workers: DataLoader workers.
        cache_rate: fraction of each dataset cached in memory after the deterministic transforms.
        pseudo_labeler: a :class:`PseudoLabeler` built elsewhere (its method is set to the study's), or
            options for the one built here (fill_value, image_scale, label_scale, compress_level, ...).
        concurrent_students: how many students of a generation train at the same time (threads, each
            with its own CUDA stream on a GPU, its own copy of the random transforms and its own
            seeds, so the results equal sequential training). 1 (default) trains one after the other,
            the right choice on CPU, where the cores are already busy with one student.
        handlers: e.g. an MLflow handler; each one's ``attach(study)`` registers for the events it observes.
        params: extra study parameters for tracking (dataset name, labeled fraction, image size, ...).
        progress: show progress bars.
        overwrite: start over when ``output_dir`` already holds a study: its files (``generation_*``,
            ``model.pt``, ``results.json``, ``study.json``) are deleted first, nothing else of the
            folder. Without it a folder holding another study (method, seed, protocol or dataset
            differ) is refused; the same study is continued.
        distributed: the process of a study spread over several (``torchrun``; see
            :mod:`monai_im.runtime.distributed`): student ``k`` trains on rank ``k % world_size``, each
            rank pseudo-labels a shard, and rank 0 alone prepares the folder, evaluates the test set,
            writes the summaries and runs the ``handlers``. ``output_dir`` must be one folder all
            processes share. Default: a single process.
    """

    def __init__(
        self,
        datalist: Mapping[str, Sequence[Mapping[str, Any]]],
        output_dir: str | Path,
        network: torch.nn.Module | Callable[[], torch.nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        loss_function: Callable,
        train_transforms: Callable,
        eval_transforms: Callable,
        infer_transforms: Callable,
        key_metric: Mapping[str, Any],
        additional_metrics: Mapping[str, Any] | None = None,
        method: Method | None = None,
        postprocessing: Callable | None = None,
        num_students: int = 5,
        num_teachers: int = 3,
        num_generations: int = 5,
        epochs: int = 50,
        min_steps: int = 0,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_interval: int = 1,
        seed: int = 42,
        device: str | torch.device | None = None,
        run_settings: RunSettings | None = None,
        inferer: Inferer | None = None,
        higher_is_better: bool = True,
        num_workers: int = 0,
        cache_rate: float = 1.0,
        pseudo_labeler: PseudoLabeler | Mapping[str, Any] | None = None,
        handlers: Sequence[Any] = (),
        params: Mapping[str, Any] | None = None,
        progress: bool = True,
        overwrite: bool = False,
        teacher_pool: str = "last",
        concurrent_students: int = 1,
        distributed: DistributedContext | None = None,
        unlabeled_transforms: Callable | None = None,
    ) -> None:
        super().__init__()
        self.distributed = distributed if distributed is not None else DistributedContext()
        if len(key_metric) != 1:
            raise ValueError(f"key_metric must hold exactly one metric, got {list(key_metric)}")
        if num_students < 1 or epochs < 1 or batch_size < 1 or num_generations < 0 or min_steps < 0:
            raise ValueError(
                "num_students, epochs and batch_size must be >= 1, num_generations and min_steps >= 0"
            )
        self.method = method if method is not None else InconsistencyMask()
        if self.method.has_generations and not 1 <= num_teachers <= num_students:
            raise ValueError(f"num_teachers must be in 1..num_students ({num_students}), got {num_teachers}")
        if self.method.has_generations and num_generations > 0 and not datalist.get("unlabeled"):
            raise ValueError("the datalist has no 'unlabeled' images to pseudo-label")
        if teacher_pool not in TEACHER_POOLS:
            raise ValueError(f"teacher_pool must be one of {TEACHER_POOLS}, got {teacher_pool!r}")
        if int(concurrent_students) < 1:
            raise ValueError(f"concurrent_students must be >= 1, got {concurrent_students}")
        self.teacher_pool = teacher_pool
        self.concurrent_students = int(concurrent_students)
        if not datalist.get("labeled") or not datalist.get("validation"):
            raise ValueError("the datalist needs 'labeled' and 'validation' entries")
        self.datalist = datalist
        self.output_dir = Path(output_dir)
        self.layout = StudyLayout(self.output_dir)
        self.overwrite = overwrite
        self.started_over = False  # set by run(): True when ``overwrite`` removed a previous study
        self.network = network
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.infer_transforms = infer_transforms
        self.unlabeled_transforms = (
            unlabeled_transforms if unlabeled_transforms is not None else infer_transforms
        )
        self.key_metric = dict(key_metric)
        self.key_metric_name = next(iter(self.key_metric))
        self.additional_metrics = dict(additional_metrics or {})
        self.postprocessing = postprocessing
        self.num_students = num_students
        self.num_teachers = num_teachers
        self.num_generations = num_generations if self.method.has_generations else 0
        self.epochs = epochs
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else batch_size
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        self.val_interval = val_interval
        self.seed = seed
        self.device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.run_settings = run_settings if run_settings is not None else RunSettings()
        self.inferer = inferer
        self.higher_is_better = higher_is_better
        self.num_workers = num_workers
        self.cache_rate = cache_rate
        if isinstance(pseudo_labeler, PseudoLabeler):
            pseudo_labeler.method = self.method
            self.pseudo_labeler = pseudo_labeler
        else:
            options = {
                "inferer": inferer,
                "device": self.device,
                "batch_size": self.eval_batch_size,
                "num_workers": num_workers,
                "run_settings": self.run_settings,
                "progress": progress,
                **dict(pseudo_labeler or {}),
            }
            self.pseudo_labeler = PseudoLabeler(self.method, **options)
        self.params = dict(params or {})
        self.progress = progress
        self._val_loader: DataLoader | None = None
        self._test_loader: DataLoader | None = None
        self._unlabeled_ds: CacheDataset | None = None
        if self.distributed.is_main:  # the other processes of a distributed study track nothing
            for h in handlers:
                h.attach(self)
        elif handlers:
            logger.info(f"process {self.distributed.rank}: the handlers run on rank 0")
        if not self.distributed.is_distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            logger.warning(
                f"{os.environ['WORLD_SIZE']} processes were launched but the study has no distributed context: "
                "each runs the whole study into the same folder (add configs/multi_gpu_train.json)"
            )
        if num_generations > 0 and not self.method.has_generations:
            logger.info(f"method '{self.method.name}' has no later generations: only generation 0 runs")

    def describe(self) -> dict[str, Any]:
        """The study's parameters (for tracking and the run summary)."""
        return {
            **self.method.describe(),
            "students": self.num_students,
            "teachers": self.num_teachers,
            "generations": self.num_generations,
            "epochs": self.epochs,
            "min_steps": self.min_steps,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "key_metric": self.key_metric_name,
            "labeled_images": len(self.datalist["labeled"]),
            "unlabeled_images": len(self.datalist.get("unlabeled", [])),
            **self.params,
        }

    def schedule(self, batches_per_epoch: int) -> tuple[int, int]:
        """``(epochs, val_interval)`` of a student whose loader yields ``batches_per_epoch`` batches.

        ``epochs`` is raised so that the student takes at least ``min_steps`` optimiser steps, and the
        validation interval grows by the same factor (never below the configured one)."""
        if batches_per_epoch < 1:
            raise ValueError(f"a student needs at least one batch per epoch, got {batches_per_epoch}")
        epochs = max(self.epochs, -(-self.min_steps // batches_per_epoch))
        val_interval = max(self.val_interval, round(self.val_interval * epochs / self.epochs))
        return epochs, val_interval

    def student_seed(self, generation: int, index: int) -> int:
        """The seed of student ``index`` of ``generation``: distinct for every (seed, generation, index)
        with fewer than 100 generations and 1000 students."""
        return 100_000 * self.seed + 1000 * generation + index

    def identity(self) -> dict[str, Any]:
        """What this study is (``study.json``): method, seed, protocol and dataset fingerprint; not the
        number of generations, so that a study can be continued with more of them."""
        protocol = {
            "num_students": self.num_students,
            "num_teachers": self.num_teachers,
            "epochs": self.epochs,
            "min_steps": self.min_steps,
            "batch_size": self.batch_size,
            "val_interval": self.val_interval,
            "key_metric": self.key_metric_name,
            "params": self.params,
        }
        if self.teacher_pool != "last":  # absent from folders of earlier versions: they keep their identity
            protocol["teacher_pool"] = self.teacher_pool
        desc = self.method.describe()
        return study_identity(self.method.name, desc, self.seed, protocol, self.datalist)

    def prepare_output_dir(self) -> None:
        """Check (or, with ``overwrite``, clear) ``output_dir``, remove leftovers of interrupted writes
        and record the study in ``study.json``; :meth:`run` does this first. Afterwards ``started_over``
        tells observers whether a previous study was removed (their own resume state is then stale).

        Raises:
            StudyMismatchError: ``output_dir`` holds another study.
        """
        self.started_over = bool(self.layout.prepare(self.identity(), overwrite=self.overwrite))

    # ------------------------------------------------------------------ paths
    def generation_dir(self, generation: int) -> Path:
        return self.layout.generation_dir(generation)

    def student_dir(self, generation: int, index: int) -> Path:
        return self.layout.student_dir(generation, index)

    # ------------------------------------------------------------------ data
    def _dataset(self, items: Sequence[Mapping[str, Any]], transform: Callable) -> CacheDataset:
        return CacheDataset(
            list(items),
            transform=transform,
            cache_rate=self.cache_rate,
            num_workers=self.num_workers,
            progress=False,
        )

    def _loader(self, items: Sequence[Mapping[str, Any]], transform: Callable) -> DataLoader:
        return DataLoader(
            self._dataset(items, transform), batch_size=self.eval_batch_size, num_workers=self.num_workers
        )

    @property
    def val_loader(self) -> DataLoader:
        if self._val_loader is None:
            self._val_loader = self._loader(self.datalist["validation"], self.eval_transforms)
        return self._val_loader

    @property
    def test_loader(self) -> DataLoader | None:
        if self._test_loader is None and self.datalist.get("test"):
            self._test_loader = self._loader(self.datalist["test"], self.eval_transforms)
        return self._test_loader

    def unlabeled_loader(self, seed: int) -> DataLoader:
        """A shuffled loader over the unlabeled images (``image``), for methods with their own step.

        The images are read and cached once per study; each loader only draws its own order."""
        if self._unlabeled_ds is None:
            items = [{"image": it["image"]} for it in self.datalist.get("unlabeled", [])]
            if not items:
                raise ValueError("the datalist has no 'unlabeled' images")
            self._unlabeled_ds = self._dataset(items, self.unlabeled_transforms)
        return DataLoader(
            self._unlabeled_ds,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(seed),
            drop_last=len(self._unlabeled_ds) > self.batch_size,
        )

    # ------------------------------------------------------------------ steps
    def rank(self, results: Sequence[StudentResult]) -> list[StudentResult]:
        """Students sorted best first on the validation key metric."""
        return sorted(results, key=lambda r: r.best_metric, reverse=self.higher_is_better)

    def choose_teachers(self, generations: Sequence[Sequence[StudentResult]]) -> list[StudentResult]:
        """The teachers of the next generation from the students of the generations so far (oldest first):
        the method's number of them, from the last generation or from all (``teacher_pool``)."""
        pool = generations[-1] if self.teacher_pool == "last" else [s for g in generations for s in g]
        return self.rank(pool)[: self.method.teacher_count(self.num_teachers)]

    def student_network(self, generation: int) -> torch.nn.Module:
        """A new, prepared network of the students of ``generation`` (the method may widen it)."""
        template = self.method.student_network(generation, self.network)
        return self.run_settings.prepare_network(build_network(template), self.device)

    def load_student(self, result: StudentResult) -> torch.nn.Module:
        return load_weights(self.student_network(result.generation), result.checkpoint, self.device).eval()

    def generation_context(self, generation: int, teachers: Sequence[StudentResult]) -> GenerationContext:
        """What :meth:`Method.prepare_generation` gets: the loaded teachers, the data and the settings."""
        return GenerationContext(
            generation=generation,
            teachers=[self.load_student(t) for t in teachers],
            teacher_results=list(teachers),
            datalist=self.datalist,
            eval_transforms=self.eval_transforms,
            device=self.device,
            inferer=self.inferer,
            batch_size=self.eval_batch_size,
            seed=self.student_seed(generation, 998),
            output_dir=self.generation_dir(generation),
            progress=self.progress,
            run_settings=self.run_settings,
            method=self.method,
        )

    def pseudo_label(
        self, generation: int, teachers: Sequence[StudentResult]
    ) -> tuple[PseudoLabelResult, bool]:
        """Pseudo-label the unlabeled set with the teachers, or reuse a finished set from an earlier run.

        In a distributed study every process labels its shard of the unlabeled set (whole batches) into
        its own folder, rank 0 merges them into the final set, and the others then load it.
        """
        out = self.layout.pseudo_label_dir(generation)
        finished = self._finished_pseudo_labels(generation)
        if finished is not None:
            return finished, True
        context = self.generation_context(generation, teachers)
        extra = self.method.prepare_generation(context)
        unlabeled = self.datalist["unlabeled"]
        has_labels = all("label" in it for it in unlabeled)
        transform = self.eval_transforms if has_labels else self.infer_transforms
        description = f"gen {generation} pseudo-labels"
        dist = self.distributed
        if not dist.is_distributed:
            result = self.pseudo_labeler(
                context.teachers, unlabeled, transform, out, description=description, extra_stats=extra
            )
            return result, False
        labeler = self.pseudo_labeler
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
        result = self._finished_pseudo_labels(generation)
        if result is None:
            raise self._not_shared(out / "datalist.json")
        return result, False

    def _not_shared(self, path: Path) -> RuntimeError:
        """The error of a process that does not see a file another process of the study wrote."""
        return RuntimeError(
            f"process {self.distributed.rank}: {path} is missing after another process wrote it: output_dir "
            "must be on a filesystem all processes share"
        )

    def _finished_pseudo_labels(self, generation: int) -> PseudoLabelResult | None:
        """The finished pseudo-label set of ``generation`` in the folder, with the originals where the
        dataset is now (it may have moved); None when there is none."""
        finished = PseudoLabelResult.load(self.layout.pseudo_label_dir(generation))
        if finished is None:
            return None
        old_figure = self.layout.figure_file(generation)  # where versions <= 0.3 drew it
        if finished.figure_path is None and old_figure.is_file():
            finished.figure_path = str(old_figure)
        unlabeled = self.datalist["unlabeled"]
        for item in finished.items:
            if isinstance(item.get("source"), int) and 0 <= item["source"] < len(unlabeled):
                item["image"] = str(unlabeled[item["source"]]["image"])
        return finished

    def _training_set(self, generation: int, items: Sequence[Mapping[str, Any]]) -> CacheDataset:
        transform = self.train_transforms
        augmentation = self.method.augmentation_for(generation)
        if augmentation is not None:  # cached up to the first random transform
            transform = Compose([transform, augmentation]).flatten()
        return self._dataset(items, transform)

    def train_generation(
        self,
        generation: int,
        items: Sequence[Mapping[str, Any]],
        teachers: Sequence[StudentResult] = (),
    ) -> list[StudentResult]:
        """Train (or reload) the K students of a generation; ``concurrent_students`` of them at a time.

        In a distributed study each process trains the students it owns (``k % world_size``), then
        reads the others' ``result.json`` once every process has finished.
        """
        dist = self.distributed
        results: dict[int, StudentResult] = {}
        todo: list[int] = []
        for k in range(self.num_students):
            result = self.layout.read_student(generation, k)
            if result is None:
                todo.append(k)
                continue
            self.fire_event(StudyEvents.STUDENT_FINISHED, result=result, resumed=True)
            results[k] = result
        dist.barrier()  # every process has seen which students were finished before
        own = [k for k in todo if dist.owns(k)]
        if dist.is_distributed:
            logger.info(f"process {dist.rank}: trains students {own} of generation {generation}")
        if own:
            train_ds = self._training_set(generation, items)
            start = self.method.initial_weights(generation, teachers)
            jobs = [self._student_job(generation, k, train_ds, start) for k in own]
            for k, result in zip(own, run_concurrently(jobs, self.concurrent_students, self.device)):
                results[k] = result
        set_determinism(seed=None)
        if dist.is_distributed:
            dist.barrier()  # every student of the generation is written
            for k in todo:
                if k in results:
                    continue
                result = self.layout.read_student(generation, k)
                if result is None:
                    raise self._not_shared(self.student_dir(generation, k) / "result.json")
                if dist.is_main:  # the handlers see it as if it had trained here
                    replay_student(self, result)
                results[k] = result
        return [results[k] for k in range(self.num_students)]

    def _student_job(
        self, generation: int, index: int, train_ds: Any, start: StudentResult | None
    ) -> Callable[[], StudentResult]:
        """Everything seeded for one student (network, data order, its own copy of the random transforms,
        seeded by its loader), and its training; the jobs of a generation are all prepared first."""
        seed = self.student_seed(generation, index)
        set_determinism(seed=seed)
        net = self.student_network(generation)
        if start is not None:
            load_weights(net, start.checkpoint, self.device)
        dataset = student_dataset(train_ds)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(dataset, seed),  # the same order of an epoch when resumed
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(seed),
            drop_last=len(dataset) > self.batch_size,
        )
        epochs, val_interval = self.schedule(len(loader))
        optimizer = self.optimizer(net.parameters())
        iteration = self.method.iteration(generation, self)

        def job() -> StudentResult:
            result = train_student(
                generation=generation,
                index=index,
                network=net,
                optimizer=optimizer,
                loss_function=self.loss_function,
                train_loader=loader,
                val_loader=self.val_loader,
                device=self.device,
                epochs=epochs,
                save_dir=self.student_dir(generation, index),
                key_metric=self.key_metric,
                additional_metrics=self.additional_metrics,
                val_interval=val_interval,
                inferer=self.inferer,
                postprocessing=self.postprocessing,
                higher_is_better=self.higher_is_better,
                extra_handlers=[_StudentHook(self, generation, index)],
                progress=self.progress,
                run_settings=self.run_settings,
                iteration_update=iteration,
            )
            self.layout.write_student(result)
            # the result is stored: the epoch checkpoint it resumed from is no longer needed
            (self.student_dir(generation, index) / LAST_CHECKPOINT).unlink(missing_ok=True)
            self.fire_event(StudyEvents.STUDENT_FINISHED, result=result, resumed=False)
            return result

        return job

    def evaluate(self, result: StudentResult, loader: Any, prefix: str = "test_") -> dict[str, float]:
        """Key and additional metrics of a student's checkpoint on a labeled set."""
        net = self.load_student(result)
        evaluator = make_evaluator(
            net,
            loader,
            self.device,
            self.key_metric,
            self.additional_metrics,
            inferer=self.inferer,
            postprocessing=self.postprocessing,
            higher_is_better=self.higher_is_better,
            prefix=prefix,
            run_settings=self.run_settings,
        )
        evaluator.run()
        return {
            k: float(v)
            for k, v in evaluator.state.metrics.items()
            if isinstance(v, (int, float)) or torch.is_tensor(v)
        }

    def run(self) -> list[dict[str, Any]]:
        """Run (or continue) the whole study; returns one summary per generation (absolute paths).

        A folder holding another study stops the run before any work with a one-line message
        (``SystemExit``; its ``__cause__`` is the :class:`StudyMismatchError`), in every process of a
        distributed study: rank 0 prepares the folder, the others wait for it.
        """
        dist = self.distributed
        error: StudyMismatchError | None = None
        if dist.is_main:
            try:
                self.prepare_output_dir()
            except StudyMismatchError as e:
                error = e
        message = dist.broadcast_object(str(error) if error is not None else None)
        if message is not None:
            raise SystemExit(f"error: {message}") from error
        settings = ", ".join(f"{k}={v}" for k, v in self.run_settings.describe(self.device).items())
        logger.info(f"run settings on {self.device}: {settings}")
        self.fire_event(StudyEvents.STUDY_STARTED)
        summaries: list[dict[str, Any]] = []
        history: list[list[StudentResult]] = []  # the students of every generation so far
        for g in range(self.num_generations + 1):
            finished = dist.broadcast_object(self.layout.summary_file(g).is_file())  # rank 0 decides
            summary = self.layout.read_summary(g) if finished else None
            if finished and summary is None:
                raise self._not_shared(self.layout.summary_file(g))
            if summary is not None:
                history.append([StudentResult.from_dict(d) for d in summary["students"]])
                self.fire_event(StudyEvents.GENERATION_FINISHED, summary=summary, resumed=True)
                summaries.append(summary)
                continue
            summary = self._run_generation(g, history)
            self.fire_event(StudyEvents.GENERATION_FINISHED, summary=summary, resumed=False)
            summaries.append(summary)
            history.append([StudentResult.from_dict(d) for d in summary["students"]])
        final = self.layout.model_file
        if dist.is_main:
            atomic_write_bytes(final, Path(summaries[-1]["checkpoint"]).read_bytes())
            self.layout.write_results(self.describe(), summaries)
            self.fire_event(StudyEvents.STUDY_FINISHED, summaries=summaries)
            logger.info(
                f"study finished: results in {self.output_dir.resolve()} (results.json, generation_*/summary.json); "
                f"best model of the last generation: {final}"
            )
        dist.barrier()  # the other processes end with the study's files written
        return summaries

    def _run_generation(self, g: int, history: Sequence[Sequence[StudentResult]]) -> dict[str, Any]:
        """One generation: teachers, pseudo-labels, students, ranking, test; writes its ``summary.json``."""
        start = time.time()
        self.fire_event(StudyEvents.GENERATION_STARTED, generation=g)
        pseudo_items: list[dict[str, Any]] = []
        pseudo_stats: dict[str, float] = {}
        teachers = self.choose_teachers(history) if g > 0 else []
        if g > 0 and self.method.makes_pseudo_labels:
            plr, resumed = self.pseudo_label(g, teachers)
            pseudo_items, pseudo_stats = plr.items, plr.stats
            figure = Path(plr.figure_path) if plr.figure_path else None
            self.fire_event(
                StudyEvents.PSEUDO_LABELS_READY, generation=g, result=plr, figure=figure, resumed=resumed
            )
        items = self.method.training_items(self.datalist, pseudo_items, g)
        students = self.train_generation(g, items, teachers)
        if not self.distributed.is_main:  # rank 0 tests the best student and writes the summary
            self.distributed.barrier()
            summary = self.layout.read_summary(g)
            if summary is None:
                raise self._not_shared(self.layout.summary_file(g))
            return summary
        ranked = self.rank(students)
        best = ranked[0]
        test = self.evaluate(best, self.test_loader) if self.test_loader is not None else {}
        summary = {
            "generation": g,
            "method": self.method.name,
            "training_images": len(items),
            "teachers": [t.index for t in teachers],
            "ranking": [r.index for r in ranked],
            "best_student": best.index,
            f"val_{self.key_metric_name}": best.best_metric,
            "test": test,
            "pseudo_labels": pseudo_stats,
            "checkpoint": best.checkpoint,
            "seconds": round(time.time() - start, 1),
            "students": [s.to_dict() for s in students],
        }
        if self.teacher_pool != "last":
            summary["teacher_generations"] = [t.generation for t in teachers]
        self.layout.write_summary(summary)
        self.distributed.barrier()  # the other processes read it
        logger.info(self.summary_line(summary))
        return summary

    def summary_line(self, summary: Mapping[str, Any]) -> str:
        """One line per generation: best student, validation and test metrics, pseudo-label statistics."""
        key = f"val_{self.key_metric_name}"
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


class _StudentHook:
    """Fires ``STUDENT_STARTED`` with the new trainer, so that handlers can attach epoch-level handlers."""

    def __init__(self, study: SelfTrainingStudy, generation: int, index: int) -> None:
        self.study, self.generation, self.index = study, generation, index

    def attach(self, trainer: Any) -> None:
        self.study.fire_event(
            StudyEvents.STUDENT_STARTED, generation=self.generation, index=self.index, trainer=trainer
        )
