"""Epoch checkpoints of a student's training, so that an interrupted training resumes where it stopped.

After every epoch :func:`monai_im.selftrain.student.train_student` writes ``last.pt`` beside the best
checkpoint (:class:`EpochCheckpoint`). It is a MONAI ``save_dict`` checkpoint: one state dict per object
of ``{"model": network, "optimizer": optimizer, "trainer": trainer, "training": TrainingState, "step":
iteration_update}`` (the step only when it has ``state_dict``), read back by MONAI's
:class:`monai.handlers.CheckpointLoader` (``Checkpoint.load_objects``, ``torch.load(weights_only=True)``:
resuming never unpickles arbitrary objects). What MONAI's objects do not hold is in
:class:`TrainingState`: the best metric so far and the key-metric saver's list (so the best ``model.pt``
is not overwritten by a worse epoch after a restart), the history, the random states (torch, numpy,
python, the loader's generator, the dataset's random transforms) and the AMP gradient scaler. A method's
own training step saves its second network, EMA teacher, random views and position in the unlabeled data.
Resumed training therefore gives the same weights as uninterrupted training on CPU.

Written atomically, not by MONAI's ``CheckpointSaver``: its interval checkpoints go through ignite's
``Checkpoint``, which removes the previous file before it writes the next one, and through a ``DiskSaver``
with ``atomic=False``, so a kill during the write would leave no epoch checkpoint or a truncated one. Here
the file is replaced in one rename (:func:`monai_im.io.atomic_write_bytes`): a kill at any moment leaves a
complete checkpoint of the last finished epoch.

A checkpoint of another format (e.g. format 1, which kept everything in one flat dict), of another
schedule or of another set of objects is ignored with a one-line warning and the student is trained
from the start, which gives the same result.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader
from torch.utils.data import DistributedSampler

from monai_im.io import atomic_write_bytes

__all__ = [
    "EpochCheckpoint",
    "TrainingState",
    "EpochShuffleSampler",
    "LAST_CHECKPOINT",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "random_transforms",
    "transform_states",
    "set_transform_states",
]

#: the file name of the epoch checkpoint in a student's folder
LAST_CHECKPOINT = "last.pt"
#: the format of the ``training`` entry (:class:`TrainingState`); 1 was a flat dict without MONAI's layout
FORMAT_VERSION = 2


class EpochShuffleSampler(DistributedSampler):
    """Shuffles a dataset with an order that is a function of ``(seed, epoch)`` alone.

    A single-process :class:`torch.utils.data.DistributedSampler` (one replica): MONAI's trainers call
    its ``set_epoch`` when an epoch starts, so epoch ``e`` sees the same order whether the training ran
    through or was resumed from an epoch checkpoint (a loader shuffling from its own generator draws
    from it a different number of times in the two cases).
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=int(seed), drop_last=False)


def save_checkpoint(save_dict: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """The state dicts of the ``save_dict`` objects, written atomically in the layout MONAI's
    :class:`~monai.handlers.CheckpointLoader` reads (:func:`monai_im.io.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save({name: obj.state_dict() for name, obj in save_dict.items()}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The entries of an epoch checkpoint written by :func:`save_checkpoint` (weights only).

    Raises:
        ValueError: it is not an epoch checkpoint of :data:`FORMAT_VERSION`.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    training = state.get("training") if isinstance(state, Mapping) else None
    if not isinstance(training, Mapping) or training.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, Mapping) else None
        found = found if found is not None else (training or {}).get("format", "unknown")
        raise ValueError(f"an epoch checkpoint of format {found}; this version reads format {FORMAT_VERSION}")
    return dict(state)


def _state_dict(state: tuple) -> dict[str, Any]:
    """A numpy ``RandomState`` state tuple as tensors and numbers (loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _state_tuple(state: Mapping[str, Any]) -> tuple:
    """The inverse of :func:`_state_dict`."""
    return (
        state["name"],
        state["keys"].numpy().astype(np.uint32),
        state["pos"],
        state["has_gauss"],
        state["cached"],
    )


def rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and CUDA), numpy and python."""
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _state_dict(np.random.get_state()),
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_state_tuple(state["numpy"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def random_transforms(dataset: Any) -> list[Any]:
    """The MONAI random transforms (those with a ``RandomState`` ``R``) of a dataset's transform chain,
    in a fixed order."""
    transform = getattr(dataset, "transform", None)
    if transform is None:
        return []
    chain: Iterable[Any] = transform.flatten().transforms if hasattr(transform, "flatten") else [transform]
    return [t for t in chain if isinstance(getattr(t, "R", None), np.random.RandomState)]


def transform_states(dataset: Any) -> list[dict[str, Any]]:
    """The random states of :func:`random_transforms` (what a loader without workers draws from)."""
    return [_state_dict(t.R.get_state()) for t in random_transforms(dataset)]


def set_transform_states(dataset: Any, states: list[Mapping[str, Any]]) -> None:
    """Restore :func:`transform_states`; a different chain of transforms is an error."""
    transforms = random_transforms(dataset)
    if len(transforms) != len(states):
        raise ValueError(
            f"the checkpoint holds {len(states)} random transform states, the training set has "
            f"{len(transforms)} random transforms: the transforms changed since it was written."
        )
    for t, s in zip(transforms, states):
        t.R.set_state(_state_tuple(s))


class TrainingState:
    """What a student's training depends on beyond MONAI's objects, as one ``state_dict`` object of the
    epoch checkpoint's ``save_dict``: the best metric, the key-metric saver's list, the history, the random
    states (global, the loader's generator, the dataset's random transforms) and the AMP gradient scaler.

    Args:
        trainer: the ``SupervisedTrainer`` (its scaler is made when it runs: restored at ``STARTED``).
        evaluator: the validator (its best metric and epoch).
        saver: the ``CheckpointSaver`` of the best ``model.pt``, attached to ``evaluator``.
        history: the per-epoch rows, restored in place.
        loader: the training loader (its ``generator`` and its dataset's random transforms).
        generation: the student's generation.
        index: the student's index.
    """

    def __init__(
        self,
        trainer: Any,
        evaluator: Any,
        saver: Any,
        history: list,
        loader: Any,
        generation: int,
        index: int,
    ) -> None:
        self.trainer, self.evaluator, self.saver, self.history = trainer, evaluator, saver, history
        self.generation, self.index = generation, index
        generator = getattr(loader, "generator", None)
        self.generator = generator if isinstance(generator, torch.Generator) else None
        self.dataset = getattr(loader, "dataset", None)

    def state_dict(self) -> dict[str, Any]:
        """The state, as tensors, numbers, strings and containers."""
        key_saver = getattr(self.saver, "_key_metric_checkpoint", None)  # CheckpointSaver has no state_dict
        state = {
            "format": FORMAT_VERSION,
            "generation": self.generation,
            "index": self.index,
            "best_metric": float(self.evaluator.state.best_metric),
            "best_epoch": int(self.evaluator.state.best_metric_epoch),
            "saver": key_saver.state_dict() if key_saver is not None else None,
            "history": list(self.history),
            "rng": rng_state(),
            "loader": self.generator.get_state() if self.generator is not None else None,
            "transforms": transform_states(self.dataset),
        }
        if getattr(self.trainer, "scaler", None) is not None:
            state["scaler"] = self.trainer.scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_epoch"]
        if state.get("saver") is not None and getattr(self.saver, "_key_metric_checkpoint", None) is not None:
            self.saver.load_state_dict(state["saver"])
        self.history[:] = state["history"]
        set_rng_state(state["rng"])
        if self.generator is not None and state.get("loader") is not None:
            self.generator.set_state(state["loader"])
        set_transform_states(self.dataset, state.get("transforms") or [])
        if "scaler" in state:  # MONAI makes the AMP scaler when the run starts: restore it then
            scaler_state = state["scaler"]

            def _restore_scaler(engine: Any) -> None:
                if getattr(engine, "scaler", None) is not None:
                    engine.scaler.load_state_dict(scaler_state)

            self.trainer.add_event_handler(Events.STARTED, _restore_scaler)


class EpochCheckpoint:
    """Writes the epoch checkpoint of one student's training after every epoch and resumes from it.

    The ``save_dict`` is ``{"model": trainer.network, "optimizer": optimizer, "trainer": trainer,
    "training": TrainingState(...)}`` plus ``"step": step`` when the step has ``state_dict`` /
    ``load_state_dict``; :meth:`restore` loads it with MONAI's ``CheckpointLoader``.

    Args:
        path: the checkpoint file (``<student folder>/last.pt``).
        trainer: the ``SupervisedTrainer``.
        evaluator: its validator.
        saver: the ``CheckpointSaver`` of the best ``model.pt``.
        optimizer: the trainer's optimizer.
        history: the per-epoch rows (a list filled by the trainer's handlers).
        loader: the training loader.
        step: the trainer's ``iteration_update`` (or None).
        generation: the student's generation.
        index: the student's index.
        scheduler: the learning-rate scheduler stepped by the trainer (or None); saved as ``"lr_scheduler"``,
            after the optimizer, so that it is restored after the optimizer's state.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        trainer: Any,
        evaluator: Any,
        saver: Any,
        optimizer: torch.optim.Optimizer,
        history: list,
        loader: Any,
        step: Any,
        generation: int,
        index: int,
        scheduler: Any = None,
    ) -> None:
        self.path, self.trainer, self.loader = Path(path), trainer, loader
        self.name = f"gen {generation} student {index}"
        training = TrainingState(trainer, evaluator, saver, history, loader, generation, index)
        self.save_dict: dict[str, Any] = {
            "model": trainer.network,
            "optimizer": optimizer,
            "trainer": trainer,
            "training": training,
        }
        if hasattr(step, "state_dict") and hasattr(step, "load_state_dict"):
            self.save_dict["step"] = step
        if scheduler is not None:
            self.save_dict["lr_scheduler"] = scheduler

    def attach(self, engine: Any) -> None:
        """Save after every epoch; attach it last, so that everything of the epoch is done when it is saved."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any = None) -> Path:
        """Write the checkpoint."""
        return save_checkpoint(self.save_dict, self.path)

    def _check(self, state: Mapping[str, Any], epochs: int) -> None:
        missing = sorted(set(self.save_dict) - set(state))
        if missing:
            raise ValueError(f"it holds no {', '.join(missing)}")
        saved = state["trainer"]
        length = len(self.loader) if hasattr(self.loader, "__len__") else saved.get("epoch_length")
        if saved.get("max_epochs") != epochs or saved.get("epoch_length") != length:
            raise ValueError(
                f"it is of another schedule ({saved.get('max_epochs')} epochs of {saved.get('epoch_length')} "
                f"batches, now {epochs} of {length})"
            )

    def restore(self, epochs: int) -> bool:
        """Continue from the checkpoint when there is one of this format, schedule and objects (else warn
        and start over); returns whether its training had already finished. Call it before ``run``."""
        if not self.path.is_file():
            return False
        try:
            state = load_checkpoint(self.path)
            self._check(state, epochs)
        except Exception as e:  # a damaged, older or foreign file: start over, loudly
            warnings.warn(f"{self.name}: ignoring {self.path} ({e}); training from the start.", stacklevel=2)
            return False
        CheckpointLoader(str(self.path), self.save_dict, map_location="cpu")(self.trainer)
        saved = state["trainer"]
        done = int(saved["iteration"]) // max(int(saved["epoch_length"]), 1)
        print(f"{self.name}: resuming after epoch {done} of {epochs}", flush=True)
        return done >= epochs
