"""Training and evaluating one student with MONAI engines."""

from __future__ import annotations

import copy
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
from monai_im.selftrain.checkpoint import LAST_CHECKPOINT, EpochCheckpoint
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
    checkpoint = EpochCheckpoint(
        save_dir / LAST_CHECKPOINT,
        trainer,
        evaluator,
        saver,
        optimizer,
        history,
        train_loader,
        iteration_update,
        generation,
        index,
        scheduler=scheduler,
    )
    _run(trainer, checkpoint, training)
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


def _run(trainer: SupervisedTrainer, checkpoint: EpochCheckpoint, training: StudentTraining) -> None:
    """Resume from the epoch checkpoint (when ``training.resume`` and it is there), attach the extra handlers,
    save an epoch checkpoint after every epoch (when ``training.resume``) and train the remaining epochs."""
    finished = False
    if training.resume:  # before the handlers attach: they see the epoch it resumes after
        finished = checkpoint.restore(training.epochs)
    for h in training.handlers:
        h.attach(trainer)
    if training.resume:  # the last handler of an epoch: everything of the epoch is done when it is saved
        checkpoint.attach(trainer)
    if not finished:
        trainer.run()


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
