"""Training and evaluating one student with MONAI engines."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointSaver, LrScheduleHandler, ValidationHandler

from monai_im.methods.context import StudentResult
from monai_im.runtime.acceleration import RunSettings
from monai_im.runtime.epoch_progress import EpochProgressBar
from monai_im.selftrain.checkpoint import (
    FORMAT_VERSION,
    LAST_CHECKPOINT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    set_transform_states,
    transform_states,
)
from monai_im.selftrain.settings import Evaluation, StudentTraining

__all__ = [
    "StudentResult",
    "StudentTraining",
    "build_network",
    "build_metrics",
    "make_evaluator",
    "train_student",
    "load_weights",
]


def build_network(network: torch.nn.Module | Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """A freshly initialised network from a factory, or from a template module (deep copy, parameters reset)."""
    if isinstance(network, torch.nn.Module):
        net = copy.deepcopy(network)
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return net
    return network()


def build_metrics(
    metrics: Mapping[str, Metric | Callable[[], Metric]], prefix: str = ""
) -> dict[str, Metric]:
    """Fresh, unattached metric handlers (ignite metrics are stateful and attach to one engine)."""
    out = {}
    for name, m in metrics.items():
        out[f"{prefix}{name}"] = copy.deepcopy(m) if isinstance(m, Metric) else m()
    return out


def make_evaluator(
    network: torch.nn.Module,
    loader: Any,
    device: torch.device,
    evaluation: Evaluation,
    prefix: str = "",
    handlers: Sequence[Any] = (),
    run_settings: RunSettings | None = None,
) -> SupervisedEvaluator:
    """A MONAI SupervisedEvaluator with fresh copies of the key and additional metrics.

    Args:
        network: the network, prepared here with ``run_settings`` (it then runs at the inference precision).
        loader: the labeled batches.
        device: where the network runs.
        evaluation: the metrics (named ``<prefix><name>``), post-processing, inferer and metric direction.
        prefix: the prefix of the metric names (``val_``, ``test_``).
        handlers: the evaluator's ``val_handlers``.
        run_settings: the speed policy (default :class:`RunSettings` ()).
    """
    settings = run_settings if run_settings is not None else RunSettings()
    network = settings.prepare_network(network, device)
    higher_is_better = evaluation.higher_is_better
    return SupervisedEvaluator(
        device=device,
        val_data_loader=loader,
        network=network,
        inferer=evaluation.inferer,
        postprocessing=evaluation.postprocessing,
        key_val_metric=build_metrics(evaluation.key_metric, prefix),
        additional_metrics=build_metrics(evaluation.additional_metrics or {}, prefix),
        metric_cmp_fn=(lambda cur, best: cur > best) if higher_is_better else (lambda cur, best: cur < best),
        val_handlers=list(handlers),
    )


def load_weights(
    network: torch.nn.Module, path: str | Path, device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """Load a checkpoint saved by a student, weights only (no arbitrary objects are unpickled)."""
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    network.load_state_dict(state)
    return network


def train_student(
    *,
    generation: int,
    index: int,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_function: Callable,
    train_loader: Any,
    val_loader: Any,
    device: torch.device,
    save_dir: str | Path,
    training: StudentTraining,
    iteration_update: Callable | None = None,
) -> StudentResult:
    """Train one student from scratch and keep its best checkpoint on the validation key metric.

    The checkpoint is written as ``<save_dir>/model.pt`` (a state dict, atomically, by MONAI's
    CheckpointSaver) whenever the key metric improves. The network is prepared with
    ``training.run_settings``: training steps run at its training precision, validation at its inference
    precision. ``iteration_update`` replaces MONAI's supervised step (``SupervisedTrainer(iteration_update=...)``,
    e.g. a consistency-loss step); its output dict must hold the ``loss``; if it has ``state_dict`` /
    ``load_state_dict``, its state goes into the epoch checkpoint. ``training.lr_scheduler`` (if any) is
    made here from ``optimizer`` and stepped once per epoch.

    With ``training.resume`` an epoch checkpoint ``<save_dir>/last.pt`` is written after every epoch
    (:mod:`monai_im.selftrain.checkpoint`) and, when one is there at the start, training continues from it
    instead of starting over; a checkpoint of a different schedule (epochs, batches per epoch) is
    ignored with a warning. The caller removes it once the result is stored.

    Returns:
        The best validation key metric, its epoch, the checkpoint path and the per-epoch history.
    """
    settings = training.run_settings
    network = settings.prepare_network(network, device)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    evaluator, saver = _validator(network, val_loader, device, save_dir, training)
    scheduler = training.lr_scheduler(optimizer) if training.lr_scheduler is not None else None
    handlers: list[Any] = [
        ValidationHandler(interval=training.val_interval, validator=evaluator, epoch_level=True)
    ]
    if scheduler is not None:
        handlers.append(LrScheduleHandler(scheduler, print_lr=False, epoch_level=True))
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=training.epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        decollate=False,
        iteration_update=iteration_update,
        **settings.trainer_amp(device),
        train_handlers=handlers,
    )
    history = _track_epochs(trainer, evaluator, training, f"gen {generation} student {index}")
    resumable = _Resumable(trainer, evaluator, saver, history, iteration_update, scheduler, generation, index)
    _run(trainer, resumable, training, save_dir / LAST_CHECKPOINT)
    return StudentResult(
        generation=generation,
        index=index,
        best_metric=float(evaluator.state.best_metric),
        best_epoch=int(evaluator.state.best_metric_epoch),
        checkpoint=str(save_dir / "model.pt"),
        history=history,
    )


def _validator(
    network: torch.nn.Module, loader: Any, device: torch.device, save_dir: Path, training: StudentTraining
) -> tuple[SupervisedEvaluator, CheckpointSaver]:
    """The validation evaluator of a student, and its saver of the best checkpoint ``<save_dir>/model.pt``."""
    saver = CheckpointSaver(
        save_dir=str(save_dir),
        save_dict={"model": network},
        save_key_metric=True,
        key_metric_filename="model.pt",
        key_metric_negative_sign=not training.evaluation.higher_is_better,
    )
    evaluator = make_evaluator(
        network,
        loader,
        device,
        training.evaluation,
        prefix="val_",
        handlers=[saver, *training.val_handlers],
        run_settings=training.run_settings,
    )
    return evaluator, saver


def _track_epochs(
    trainer: SupervisedTrainer, evaluator: SupervisedEvaluator, training: StudentTraining, description: str
) -> list[dict[str, float]]:
    """Validate after the last epoch too, record every epoch's row of the history (returned, filled as
    the training runs) and show the progress bar."""
    epochs, device = training.epochs, trainer.state.device
    if epochs % training.val_interval != 0:  # always validate the last epoch too
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=epochs), lambda e: evaluator.run(e.state.epoch))
    history: list[dict[str, float]] = []
    loss_sum: dict[str, Any] = {"total": torch.zeros((), device=device), "count": 0}

    @trainer.on(Events.EPOCH_STARTED)
    def _reset(engine) -> None:
        loss_sum["total"] = torch.zeros((), device=device)
        loss_sum["count"] = 0

    @trainer.on(Events.ITERATION_COMPLETED)
    def _accumulate(engine) -> None:
        loss_sum["total"] += engine.state.output["loss"].detach()
        loss_sum["count"] += 1

    @trainer.on(Events.EPOCH_COMPLETED)
    def _record(engine) -> None:
        engine.state.epoch_loss = float(loss_sum["total"]) / max(loss_sum["count"], 1)
        row = {"epoch": engine.state.epoch, "train_loss": engine.state.epoch_loss}
        # the epoch means a method's own training step reports (e.g. supervised and unsupervised loss)
        row.update({k: float(v) for k, v in engine.state.metrics.items() if _is_number(v)})
        if evaluator.state.epoch == engine.state.epoch:
            row.update({k: float(v) for k, v in evaluator.state.metrics.items() if _is_number(v)})
        history.append(row)
        engine.state.history_row = row

    EpochProgressBar(
        desc=description,
        metric_name=f"val_{training.evaluation.key_metric_name}",
        validator=evaluator,
        disable=not training.progress,
    ).attach(trainer)
    return history


def _run(trainer: SupervisedTrainer, resumable: _Resumable, training: StudentTraining, last: Path) -> None:
    """Resume from ``last`` (when ``training.resume`` and it is there), attach the extra handlers, save an
    epoch checkpoint after every epoch (when ``training.resume``) and train the remaining epochs."""
    finished = False
    if training.resume and last.is_file():  # before the handlers attach: they see the epoch it resumes after
        finished = resumable.restore(last, training.epochs)
    for h in training.handlers:
        h.attach(trainer)
    if training.resume:  # the last handler of an epoch: everything of the epoch is done when it is saved
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: resumable.save(last))
    if not finished:
        trainer.run()


class _Resumable:
    """Writes and restores the epoch checkpoint of one student's training (see ``train_student``)."""

    def __init__(
        self,
        trainer: SupervisedTrainer,
        evaluator: SupervisedEvaluator,
        saver: CheckpointSaver,
        history: list[dict[str, float]],
        step: Any,
        scheduler: Any,
        generation: int,
        index: int,
    ) -> None:
        self.trainer, self.evaluator, self.optimizer = trainer, evaluator, trainer.optimizer
        self.history, self.loader, self.generation, self.index = (
            history,
            trainer.data_loader,
            generation,
            index,
        )
        self.step = step if hasattr(step, "state_dict") and hasattr(step, "load_state_dict") else None
        self.scheduler = scheduler
        self.generator = getattr(self.loader, "generator", None)
        if not isinstance(self.generator, torch.Generator):
            self.generator = None
        self.dataset = getattr(self.loader, "dataset", None)
        self.key_saver = getattr(saver, "_key_metric_checkpoint", None)

    def save(self, path: Path) -> None:
        state = {
            "format": FORMAT_VERSION,
            "generation": self.generation,
            "index": self.index,
            "model": self.trainer.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": dict(self.trainer.state_dict()),
            "best_metric": float(self.evaluator.state.best_metric),
            "best_epoch": int(self.evaluator.state.best_metric_epoch),
            "saver": self.key_saver.state_dict() if self.key_saver is not None else None,
            "history": list(self.history),
            "rng": rng_state(),
            "loader": self.generator.get_state() if self.generator is not None else None,
            "transforms": transform_states(self.dataset),
            "step": self.step.state_dict() if self.step is not None else None,
        }
        if self.scheduler is not None:
            state["lr_scheduler"] = self.scheduler.state_dict()
        if getattr(self.trainer, "scaler", None) is not None:
            state["scaler"] = self.trainer.scaler.state_dict()
        save_checkpoint(state, path)

    def restore(self, path: Path, epochs: int) -> bool:
        """Continue from ``path``; returns whether its training had already finished."""
        try:
            state = load_checkpoint(path)
        except Exception as e:  # a damaged or foreign file: start over, loudly
            warnings.warn(
                f"gen {self.generation} student {self.index}: ignoring {path} ({e}); training from the start.",
                stacklevel=2,
            )
            return False
        saved = state["trainer"]
        length = len(self.loader) if hasattr(self.loader, "__len__") else saved.get("epoch_length")
        if saved.get("max_epochs") != epochs or saved.get("epoch_length") != length:
            warnings.warn(
                f"gen {self.generation} student {self.index}: {path} is of another schedule "
                f"({saved.get('max_epochs')} epochs of {saved.get('epoch_length')} batches, now {epochs} of "
                f"{length}); training from the start.",
                stacklevel=2,
            )
            return False
        self.trainer.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.trainer.load_state_dict(saved)
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_epoch"]
        if self.key_saver is not None and state.get("saver") is not None:
            self.key_saver.load_state_dict(state["saver"])
        self.history[:] = state["history"]
        set_rng_state(state["rng"])
        if self.generator is not None and state.get("loader") is not None:
            self.generator.set_state(state["loader"])
        set_transform_states(self.dataset, state.get("transforms") or [])
        if self.step is not None and state.get("step") is not None:
            self.step.load_state_dict(state["step"])
        if self.scheduler is not None and state.get("lr_scheduler") is not None:
            self.scheduler.load_state_dict(state["lr_scheduler"])
        if "scaler" in state:  # MONAI makes the AMP scaler when the run starts: restore it then
            scaler_state = state["scaler"]

            def _restore_scaler(engine) -> None:
                if getattr(engine, "scaler", None) is not None:
                    engine.scaler.load_state_dict(scaler_state)

            self.trainer.add_event_handler(Events.STARTED, _restore_scaler)
        done = int(saved["iteration"]) // max(int(saved["epoch_length"]), 1)
        print(
            f"gen {self.generation} student {self.index}: resuming after epoch {done} of {epochs}", flush=True
        )
        return done >= epochs


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
