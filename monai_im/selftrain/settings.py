"""The settings of a study and of one student's training, as records a bundle builds with ``_target_``.

A :class:`monai_im.selftrain.SelfTrainingStudy` is made of a :class:`StudyProtocol` (how many students,
teachers, generations, epochs, ...), a :class:`StudyData` (the datalist and its transforms) and an
:class:`Evaluation` (the metrics and how predictions are made); :func:`monai_im.selftrain.train_student`
takes a :class:`StudentTraining`. Each record checks its own values when it is made and refuses a bad one
with a one-line ``ValueError`` naming the option.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monai_im.runtime.acceleration import RunSettings
from monai_im.selftrain.degeneration import DEFAULT_MAX_IM_WARNING

__all__ = [
    "TEACHER_POOLS",
    "StudyProtocol",
    "StudyData",
    "Evaluation",
    "StudentTraining",
    "check_lr_scheduler",
]

#: Where teachers come from: the previous generation's students, or every generation's so far.
TEACHER_POOLS = ("last", "all")


def check_lr_scheduler(factory: Any) -> None:
    """Refuse an ``lr_scheduler`` that is not None or a factory taking the optimizer."""
    if factory is not None and not callable(factory):
        raise ValueError(
            "lr_scheduler must be a factory taking the optimizer (in JSON: _mode_ 'callable'), "
            f"got {type(factory).__name__}"
        )


def _at_least(owner: Any, minimum: int, *names: str) -> None:
    """Refuse a value of ``names`` below ``minimum`` (or not an integer), naming the option."""
    for name in names:
        value = getattr(owner, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or int(value) != value
            or value < minimum
        ):
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        setattr(owner, name, int(value))


@dataclass
class StudyProtocol:
    """The protocol of a study: its students, teachers, generations and training schedule.

    Args:
        num_students: students per generation (K).
        num_teachers: teachers per generation (n, the top-n students; a method may use fewer, see
            :meth:`monai_im.methods.Method.teacher_count`); checked against ``num_students`` by
            :meth:`check_teachers` when the method has later generations.
        num_generations: generations after generation 0 (G).
        epochs: training epochs per student.
        min_steps: a floor on the optimiser steps of every student (0 = none): a student whose training
            set is small gets ``ceil(min_steps / batches per epoch)`` epochs instead, and validates
            proportionally less often (see :meth:`schedule`).
        batch_size: training batch size (and of the unlabeled batches of methods with their own step).
        eval_batch_size: the batch size of validation, test and pseudo-labelling; None = ``batch_size``.
        val_interval: validate every this many epochs (and after the last epoch).
        seed: base seed of the students (see :meth:`student_seed`).
        teacher_pool: ``"last"``: teachers are the previous generation's best students (the paper);
            ``"all"``: the best of every generation so far.
        concurrent_students: how many students of a generation train at the same time (1 = one after
            the other; the results do not depend on it).
        generation_patience: end the study early when this many generations in a row score no better on
            validation than the best generation before them (None = run every generation). The final
            model is the best generation's either way.
        max_im_warning: warn of (and flag in the pseudo-label statistics) a generation whose Inconsistency
            Mask covers more than this share of the unlabeled pixels on average (None = no warning; see
            :mod:`monai_im.selftrain.degeneration`).
    """

    num_students: int = 5
    num_teachers: int = 3
    num_generations: int = 5
    epochs: int = 50
    min_steps: int = 0
    batch_size: int = 32
    eval_batch_size: int | None = None
    val_interval: int = 1
    seed: int = 42
    teacher_pool: str = "last"
    concurrent_students: int = 1
    generation_patience: int | None = None
    max_im_warning: float | None = DEFAULT_MAX_IM_WARNING

    def __post_init__(self) -> None:
        if self.eval_batch_size is None:
            self.eval_batch_size = self.batch_size
        _at_least(self, 1, "num_students", "epochs", "batch_size", "eval_batch_size", "val_interval")
        _at_least(self, 1, "concurrent_students")
        _at_least(self, 0, "num_generations", "min_steps")
        if self.generation_patience is not None:
            _at_least(self, 1, "generation_patience")
        if self.max_im_warning is not None:
            value = self.max_im_warning
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
                raise ValueError(f"max_im_warning must be in [0, 1] or None, got {self.max_im_warning!r}")
            self.max_im_warning = float(self.max_im_warning)
        if self.teacher_pool not in TEACHER_POOLS:
            raise ValueError(f"teacher_pool must be one of {TEACHER_POOLS}, got {self.teacher_pool!r}")

    def check_teachers(self) -> None:
        """Refuse a ``num_teachers`` outside ``1..num_students`` (for methods with later generations)."""
        if not 1 <= self.num_teachers <= self.num_students:
            raise ValueError(
                f"num_teachers must be in 1..num_students ({self.num_students}), got {self.num_teachers}"
            )

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
        """The seed of student ``index`` of ``generation``, ``100000 * seed + 1000 * generation + index``:
        distinct for every (seed, generation, index) with fewer than 100 generations and 1000 students."""
        return 100_000 * self.seed + 1000 * generation + index


@dataclass
class StudyData:
    """The data of a study and the transforms of each use.

    Args:
        datalist: the dataset, as returned by :func:`monai_im.data.load_datalist` (``labeled`` and
            ``validation`` are required; ``unlabeled`` and ``test`` are optional).
        train_transforms: dictionary transforms for labeled and pseudo-labeled items (keys image, label, im).
        eval_transforms: dictionary transforms for validation and test items (keys image, label).
        infer_transforms: dictionary transforms for unlabeled items (key image; label when present).
        unlabeled_transforms: the transforms of the unlabeled batches of the methods with their own
            training step (FixMatch, Mean Teacher, CPS, Consistency Loss); None = ``infer_transforms``.
            Volumes of different sizes need random patches here.
        num_workers: DataLoader workers.
        cache_rate: fraction of each dataset cached in memory after the deterministic transforms.
    """

    datalist: Mapping[str, Sequence[Mapping[str, Any]]]
    train_transforms: Callable
    eval_transforms: Callable
    infer_transforms: Callable
    unlabeled_transforms: Callable | None = None
    num_workers: int = 0
    cache_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.datalist.get("labeled") or not self.datalist.get("validation"):
            raise ValueError("datalist needs 'labeled' and 'validation' entries")
        _at_least(self, 0, "num_workers")
        if not 0.0 <= float(self.cache_rate) <= 1.0:
            raise ValueError(f"cache_rate must be in [0, 1], got {self.cache_rate!r}")
        if self.unlabeled_transforms is None:
            self.unlabeled_transforms = self.infer_transforms


@dataclass
class Evaluation:
    """How students are validated and tested.

    Args:
        key_metric: ``{name: metric handler}``; the validation key metric (logged as ``val_<name>``) that
            ranks students and picks checkpoints; the test metrics are ``test_<name>``.
        additional_metrics: further ``{name: metric handler}`` computed on validation and test.
        higher_is_better: direction of the key metric (False for errors such as MCCE).
        postprocessing: evaluator post-processing (activation + discretisation of ``pred``).
        inferer: how networks are applied in validation, test and pseudo-labelling (None = a direct call).
    """

    key_metric: Mapping[str, Any]
    additional_metrics: Mapping[str, Any] | None = None
    higher_is_better: bool = True
    postprocessing: Callable | None = None
    inferer: Any = None

    def __post_init__(self) -> None:
        if len(self.key_metric) != 1:
            raise ValueError(f"key_metric must hold exactly one metric, got {list(self.key_metric)}")
        self.key_metric = dict(self.key_metric)
        self.additional_metrics = dict(self.additional_metrics or {})

    @property
    def key_metric_name(self) -> str:
        """The name of the key metric (without the ``val_`` / ``test_`` prefix)."""
        return next(iter(self.key_metric))


@dataclass
class StudentTraining:
    """How one student is trained (:func:`monai_im.selftrain.train_student`).

    Args:
        epochs: training epochs.
        evaluation: the validation metrics, post-processing and inferer.
        val_interval: validate every this many epochs (and after the last epoch).
        run_settings: the speed policy (default :class:`RunSettings` ()).
        progress: show a progress bar.
        handlers: extra handlers of the ``SupervisedTrainer`` (each one's ``attach(trainer)`` is called).
        val_handlers: extra handlers of the validation ``SupervisedEvaluator``.
        lr_scheduler: a factory taking the optimizer and returning a learning-rate scheduler, stepped once
            per epoch (``monai.handlers.LrScheduleHandler``); None = a constant learning rate.
        resume: write an epoch checkpoint after every epoch and continue from one found at the start.
    """

    epochs: int
    evaluation: Evaluation
    val_interval: int = 1
    run_settings: RunSettings = field(default_factory=RunSettings)
    progress: bool = True
    handlers: Sequence[Any] = ()
    val_handlers: Sequence[Any] = ()
    lr_scheduler: Callable[[Any], Any] | None = None
    resume: bool = True

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "val_interval")
        if self.run_settings is None:
            self.run_settings = RunSettings()
        check_lr_scheduler(self.lr_scheduler)
