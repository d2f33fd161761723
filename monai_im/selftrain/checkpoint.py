"""Epoch checkpoints of a student's training, so that an interrupted training resumes where it stopped.

After every epoch :func:`monai_im.selftrain.student.train_student` writes ``last.pt`` beside the best
checkpoint (atomically, so a kill while writing leaves the previous one). It holds everything the next
epoch depends on: the network and optimizer, the trainer's epoch and iteration, the best metric so far
and the key-metric saver's list (so the best ``model.pt`` is not overwritten by a worse epoch after a
restart), the history, the random states (torch, numpy, python, the loader's generator, the dataset's
random transforms) and the state of a method's own training step (its second network, EMA teacher,
random views and position in the unlabeled data). Resumed training therefore gives the same weights
as uninterrupted training on CPU.

Everything is stored as tensors, numbers, strings and containers, and read with
``torch.load(weights_only=True)``: resuming never unpickles arbitrary objects.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from monai_im.io import atomic_write_bytes

__all__ = [
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
FORMAT_VERSION = 1


class EpochShuffleSampler(DistributedSampler):
    """Shuffles a dataset with an order that is a function of ``(seed, epoch)`` alone.

    A single-process :class:`torch.utils.data.DistributedSampler` (one replica): MONAI's trainers call
    its ``set_epoch`` when an epoch starts, so epoch ``e`` sees the same order whether the training ran
    through or was resumed from an epoch checkpoint (a loader shuffling from its own generator draws
    from it a different number of times in the two cases).
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=int(seed), drop_last=False)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` written atomically (:func:`monai_im.io.atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """An epoch checkpoint written by :func:`save_checkpoint` (weights only; no arbitrary objects)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an epoch checkpoint of this version (format {FORMAT_VERSION}).")
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
