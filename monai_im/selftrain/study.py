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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import DataLoader

from monai_im.methods import InconsistencyMask, Method, StudentContext
from monai_im.runtime.acceleration import RunSettings
from monai_im.runtime.distributed import DistributedContext
from monai_im.selftrain.degeneration import check_ensemble
from monai_im.selftrain.events import StudyEventRegistry, StudyEvents
from monai_im.selftrain.final import finish_study, mark_standing, patience_exhausted
from monai_im.selftrain.generation import make_pseudo_labels, not_shared, run_generation, train_students
from monai_im.selftrain.layout import StudyLayout, StudyMismatchError, study_identity
from monai_im.selftrain.loaders import StudyLoaders
from monai_im.selftrain.lock import StudyLock, StudyLockedError
from monai_im.selftrain.pseudo_label import PseudoLabeler, PseudoLabelResult
from monai_im.selftrain.settings import (
    TEACHER_POOLS,
    Evaluation,
    StudyData,
    StudyProtocol,
    check_lr_scheduler,
)
from monai_im.selftrain.student import StudentResult, build_network, load_weights, make_evaluator

__all__ = ["SelfTrainingStudy", "TEACHER_POOLS"]

logger = logging.getLogger("monai_im")


def _setting(group: str, name: str) -> property:
    """The study attribute ``name``: the option of its settings record ``group`` (read and written there)."""

    def fget(self: SelfTrainingStudy) -> Any:
        return getattr(getattr(self, group), name)

    def fset(self: SelfTrainingStudy, value: Any) -> None:
        setattr(getattr(self, group), name, value)

    return property(fget, fset, doc=f"``{group}.{name}``")


class SelfTrainingStudy(StudyEventRegistry):
    """A whole self-training study (generation 0, pseudo-labelling, generations 1..G).

    The settings come in three records (:class:`StudyProtocol`, :class:`StudyData`, :class:`Evaluation`);
    each remaining argument is one object of its own kind (a factory, the method, the handlers, ...) that the
    bundle JSON builds separately, which is why they are not grouped further.

    Args:
        output_dir: where checkpoints, pseudo-labels and summaries go.
        network: a factory returning a new network (``_mode_: "callable"`` in JSON), or a template
            module that is deep-copied and re-initialised for every student.
        optimizer: a factory taking the parameters, e.g. ``torch.optim.AdamW`` with ``_mode_: "callable"``.
        loss_function: the training loss.
        data: the datalist and the transforms of each use (:class:`StudyData`).
        evaluation: the key and additional metrics, post-processing and inferer (:class:`Evaluation`).
        protocol: students, teachers, generations, epochs, batch sizes, seed (:class:`StudyProtocol`;
            default: its defaults).
        method: the self-training method (:mod:`monai_im.methods`; default: Inconsistency Masks, binary).
        run_settings: the speed policy of every forward pass (training, validation, test and
            pseudo-labelling): precision, memory format, compilation; default :class:`RunSettings` ().
        device: torch device; default CUDA when available, else CPU.
        pseudo_labeler: a :class:`PseudoLabeler` built elsewhere (its method is set to the study's), or
            options for the one built here (fill_value, image_scale, label_scale, compress_level, ...).
        handlers: e.g. an MLflow handler; each one's ``attach(study)`` registers for the events it observes.
        student_handlers: extra handlers of every student's ``SupervisedTrainer`` (``attach(trainer)``);
            each student attaches its own deep copy.
        student_val_handlers: extra handlers of every student's validation ``SupervisedEvaluator``; each
            student gets its own deep copy.
        lr_scheduler: a factory taking a student's optimizer and returning its learning-rate scheduler
            (``_mode_: "callable"`` in JSON), stepped once per epoch; its state is in the epoch checkpoint.
            None (default): a constant learning rate.
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

    The options of the settings records are also attributes of the study (``study.datalist``,
    ``study.batch_size``, ``study.key_metric_name``, ...).
    """

    datalist = _setting("data", "datalist")
    train_transforms = _setting("data", "train_transforms")
    eval_transforms = _setting("data", "eval_transforms")
    infer_transforms = _setting("data", "infer_transforms")
    key_metric = _setting("evaluation", "key_metric")
    additional_metrics = _setting("evaluation", "additional_metrics")
    higher_is_better = _setting("evaluation", "higher_is_better")
    inferer = _setting("evaluation", "inferer")
    num_students = _setting("protocol", "num_students")
    num_teachers = _setting("protocol", "num_teachers")
    epochs = _setting("protocol", "epochs")
    batch_size = _setting("protocol", "batch_size")
    eval_batch_size = _setting("protocol", "eval_batch_size")
    seed = _setting("protocol", "seed")
    teacher_pool = _setting("protocol", "teacher_pool")

    def __init__(
        self,
        output_dir: str | Path,
        network: torch.nn.Module | Callable[[], torch.nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        loss_function: Callable,
        data: StudyData,
        evaluation: Evaluation,
        protocol: StudyProtocol | None = None,
        method: Method | None = None,
        *,
        run_settings: RunSettings | None = None,
        device: str | torch.device | None = None,
        pseudo_labeler: PseudoLabeler | Mapping[str, Any] | None = None,
        handlers: Sequence[Any] = (),
        student_handlers: Sequence[Any] = (),
        student_val_handlers: Sequence[Any] = (),
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        params: Mapping[str, Any] | None = None,
        progress: bool = True,
        overwrite: bool = False,
        distributed: DistributedContext | None = None,
    ) -> None:
        super().__init__()
        self.distributed = distributed if distributed is not None else DistributedContext()
        self.protocol = protocol if protocol is not None else StudyProtocol()
        self.data, self.evaluation = data, evaluation
        self.method = method if method is not None else InconsistencyMask()
        self._check_method()
        self.num_generations = self.protocol.num_generations if self.method.has_generations else 0
        self.output_dir = Path(output_dir)
        self.layout = StudyLayout(self.output_dir)
        self.overwrite = overwrite
        self.started_over = False  # set by run(): True when ``overwrite`` removed a previous study
        self.network, self.optimizer, self.loss_function = network, optimizer, loss_function
        check_lr_scheduler(lr_scheduler)
        self.student_handlers, self.student_val_handlers = list(student_handlers), list(student_val_handlers)
        self.lr_scheduler = lr_scheduler
        self.device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.run_settings = run_settings if run_settings is not None else RunSettings()
        self.params = dict(params or {})
        self.progress = progress
        self.pseudo_labeler = self._pseudo_labeler(pseudo_labeler)
        self.loaders = StudyLoaders(self.data, self.protocol)
        self._attach(handlers)

    def _check_method(self) -> None:
        """Refuse a protocol or datalist the method cannot run with."""
        if not self.method.has_generations:
            if self.protocol.num_generations > 0:
                logger.info(f"method '{self.method.name}' has no later generations: only generation 0 runs")
            return
        self.protocol.check_teachers()
        if self.protocol.num_generations > 0 and not self.data.datalist.get("unlabeled"):
            raise ValueError("the datalist has no 'unlabeled' images to pseudo-label")

    def _pseudo_labeler(self, pseudo_labeler: PseudoLabeler | Mapping[str, Any] | None) -> PseudoLabeler:
        """The given labeler (set to the study's method), or one built from the study's settings."""
        if isinstance(pseudo_labeler, PseudoLabeler):
            pseudo_labeler.method = self.method
            return pseudo_labeler
        options = {
            "inferer": self.evaluation.inferer,
            "device": self.device,
            "batch_size": self.protocol.eval_batch_size,
            "num_workers": self.data.num_workers,
            "run_settings": self.run_settings,
            "progress": self.progress,
            **dict(pseudo_labeler or {}),
        }
        return PseudoLabeler(self.method, **options)

    def _attach(self, handlers: Sequence[Any]) -> None:
        """Let the study's handlers register (on rank 0 of a distributed study only)."""
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

    @property
    def key_metric_name(self) -> str:
        """The name of the validation key metric (logged as ``val_<name>``, tested as ``test_<name>``)."""
        return self.evaluation.key_metric_name

    def describe(self) -> dict[str, Any]:
        """The study's parameters (for tracking and the run summary)."""
        p = self.protocol
        return {
            **self.method.describe(),
            "students": p.num_students,
            "teachers": p.num_teachers,
            "generations": self.num_generations,
            "epochs": p.epochs,
            "min_steps": p.min_steps,
            "batch_size": p.batch_size,
            "seed": p.seed,
            "key_metric": self.key_metric_name,
            "labeled_images": len(self.datalist["labeled"]),
            "unlabeled_images": len(self.datalist.get("unlabeled", [])),
            **self.params,
        }

    def schedule(self, batches_per_epoch: int) -> tuple[int, int]:
        """``(epochs, val_interval)`` of a student (:meth:`StudyProtocol.schedule`)."""
        return self.protocol.schedule(batches_per_epoch)

    def student_seed(self, generation: int, index: int) -> int:
        """The seed of student ``index`` of ``generation`` (:meth:`StudyProtocol.student_seed`)."""
        return self.protocol.student_seed(generation, index)

    def student_context(self, generation: int, index: int) -> StudentContext:
        """What :meth:`Method.iteration` gets for student ``index`` of ``generation``."""
        return StudentContext(
            generation=generation,
            index=index,
            seed=self.student_seed(generation, index),
            new_network=lambda: self.student_network(generation),
            unlabeled_loader=self.unlabeled_loader,
        )

    def identity(self) -> dict[str, Any]:
        """What this study is (``study.json``): method, seed, protocol and dataset fingerprint; not the
        number of generations, so that a study can be continued with more of them."""
        p = self.protocol
        protocol = {
            "num_students": p.num_students,
            "num_teachers": p.num_teachers,
            "epochs": p.epochs,
            "min_steps": p.min_steps,
            "batch_size": p.batch_size,
            "val_interval": p.val_interval,
            "key_metric": self.key_metric_name,
            "params": self.params,
        }
        if p.teacher_pool != "last":  # absent from folders of earlier versions: they keep their identity
            protocol["teacher_pool"] = p.teacher_pool
        desc = self.method.describe()
        return study_identity(self.method.name, desc, p.seed, protocol, self.datalist)

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
    @property
    def val_loader(self) -> DataLoader:
        """The validation set (:attr:`StudyLoaders.val_loader`)."""
        return self.loaders.val_loader

    @property
    def test_loader(self) -> DataLoader | None:
        """The test set, or None (:attr:`StudyLoaders.test_loader`)."""
        return self.loaders.test_loader

    def unlabeled_loader(self, seed: int) -> DataLoader:
        """A shuffled loader over the unlabeled images (:meth:`StudyLoaders.unlabeled_loader`)."""
        return self.loaders.unlabeled_loader(seed)

    # ------------------------------------------------------------------ steps
    def rank(self, results: Sequence[StudentResult]) -> list[StudentResult]:
        """Students sorted best first on the validation key metric."""
        return sorted(results, key=lambda r: r.best_metric, reverse=self.evaluation.higher_is_better)

    def choose_teachers(self, generations: Sequence[Sequence[StudentResult]]) -> list[StudentResult]:
        """The teachers of the next generation from the students of the generations so far (oldest first):
        the method's number of them, from the last generation or from all (``teacher_pool``)."""
        pool = (
            generations[-1] if self.protocol.teacher_pool == "last" else [s for g in generations for s in g]
        )
        return self.rank(pool)[: self.method.teacher_count(self.protocol.num_teachers)]

    def student_network(self, generation: int) -> torch.nn.Module:
        """A new, prepared network of the students of ``generation`` (the method may widen it)."""
        template = self.method.student_network(generation, self.network)
        return self.run_settings.prepare_network(build_network(template), self.device)

    def load_student(self, result: StudentResult) -> torch.nn.Module:
        return load_weights(self.student_network(result.generation), result.checkpoint, self.device).eval()

    def pseudo_label(
        self, generation: int, teachers: Sequence[StudentResult]
    ) -> tuple[PseudoLabelResult, bool]:
        """Pseudo-label the unlabeled set with the teachers, or reuse a finished set from an earlier run
        (:func:`monai_im.selftrain.generation.make_pseudo_labels`); returns the set and whether it was reused."""
        return make_pseudo_labels(self, generation, teachers)

    def train_generation(
        self,
        generation: int,
        items: Sequence[Mapping[str, Any]],
        teachers: Sequence[StudentResult] = (),
    ) -> list[StudentResult]:
        """Train (or reload) the students of a generation
        (:func:`monai_im.selftrain.generation.train_students`)."""
        return train_students(self, generation, items, teachers)

    def evaluate(self, result: StudentResult, loader: Any, prefix: str = "test_") -> dict[str, float]:
        """Key and additional metrics of a student's checkpoint on a labeled set."""
        net = self.load_student(result)
        evaluator = make_evaluator(
            net, loader, self.device, self.evaluation, prefix=prefix, run_settings=self.run_settings
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
        distributed study: rank 0 prepares the folder, the others wait for it. So does an Inconsistency
        Mask of a single teacher (:func:`monai_im.selftrain.degeneration.check_ensemble`).
        """
        check_ensemble(self.method, self.protocol.num_teachers, self.num_generations, exit_on_error=True)
        lock = StudyLock(self.output_dir)  # rank 0 holds it for the whole run; the OS frees it if it dies
        try:
            return self._run(lock)
        finally:
            lock.release()

    def _run(self, lock: StudyLock) -> list[dict[str, Any]]:
        dist = self.distributed
        error: StudyMismatchError | StudyLockedError | None = None
        if dist.is_main:  # only rank 0 locks: the other processes of a distributed study share the folder
            try:
                lock.acquire()  # before prepare_output_dir, whose cleanup removes a running study's partial writes
                self.prepare_output_dir()
            except (StudyLockedError, StudyMismatchError) as e:
                error = e
        message = dist.broadcast_object(str(error) if error is not None else None)
        if message is not None:
            raise SystemExit(f"error: {message}") from error
        settings = ", ".join(f"{k}={v}" for k, v in self.run_settings.describe(self.device).items())
        logger.info(f"run settings on {self.device}: {settings}")
        self.fire_event(StudyEvents.STUDY_STARTED)
        summaries: list[dict[str, Any]] = []
        history: list[list[StudentResult]] = []  # the students of every generation so far
        key, patience = f"val_{self.key_metric_name}", self.protocol.generation_patience
        for g in range(self.num_generations + 1):
            if patience_exhausted(summaries, key, self.higher_is_better, patience):
                logger.info(
                    f"generation_patience={patience}: no better generation in the last {patience}; stopping"
                )
                break
            summary, resumed = self._generation(g, history)
            summaries.append(dict(summary))
            mark_standing(summaries, key, self.higher_is_better)
            self.fire_event(StudyEvents.GENERATION_FINISHED, summary=summaries[-1], resumed=resumed)
            history.append([StudentResult.from_dict(d) for d in summary["students"]])
        if dist.is_main:
            finish_study(self, summaries, key)
        dist.barrier()  # the other processes end with the study's files written
        return summaries

    def _generation(self, g: int, history: list[list[StudentResult]]) -> tuple[dict[str, Any], bool]:
        """Generation ``g``'s summary: read when an earlier run finished it (rank 0 decides), else run."""
        finished = self.distributed.broadcast_object(self.layout.summary_file(g).is_file())
        summary = self.layout.read_summary(g) if finished else None
        if finished and summary is None:
            raise not_shared(self, self.layout.summary_file(g))
        if summary is not None:
            return summary, True
        return run_generation(self, g, history), False
