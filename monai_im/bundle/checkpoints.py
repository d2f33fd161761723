"""A checkpoint given to a bundle's inference or evaluation, checked against the bundle's network first.

MONAI's ``CheckpointLoader`` reports a checkpoint of another task as a page of size mismatches, a
missing file or a file that is not a checkpoint as a traceback, and it does so once the evaluator runs.
:func:`check_checkpoint`, called in ``initialize``, says in one line what the file holds and what the
bundle expects. The file is read with ``torch.load(weights_only=True)``: a pickle that would run code is
refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from monai_im.bundle.overrides import current_launch

__all__ = ["check_checkpoint", "checkpoint_mismatch", "find_state_dict"]

#: The key under which MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` keep the network's weights.
MODEL_KEY = "model"
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _weights(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, list(value)[:4])) + (", ..." if len(value) > 4 else "")
        return f"a dict of {keys}" if value else "an empty dict"
    return f"a {type(value).__name__}"


def find_state_dict(content: Any) -> Mapping[str, torch.Tensor] | None:
    """The network weights of a loaded checkpoint, as ``CheckpointLoader(load_dict={"model": net})`` finds
    them: a plain state dict (what a study's ``model.pt`` holds) or one under ``"model"`` (an epoch
    checkpoint of ``CheckpointSaver``); None when neither."""
    if _weights(content):
        return content
    if isinstance(content, Mapping) and _weights(content.get(MODEL_KEY)):
        return content[MODEL_KEY]
    return None


def _layout(weights: Mapping[str, torch.Tensor]) -> tuple[int, int, int] | None:
    """(spatial dims, input channels, output channels) from the first and last convolution kernels."""
    convs = [w for w in weights.values() if w.dim() >= 3]
    if not convs:
        return None
    return convs[0].dim() - 2, int(convs[0].shape[1]), int(convs[-1].shape[0])


def checkpoint_mismatch(weights: Mapping[str, torch.Tensor], network: torch.nn.Module) -> str | None:
    """Why ``weights`` do not load into ``network``, in words; None when they do (same keys, same shapes).

    The first of: other layer names (another network), other spatial dimensions (2D vs 3D), other input or
    output channels (another task), another layer shape (another width).
    """
    expected = network.state_dict()
    name = type(network).__name__
    missing = [k for k in expected if k not in weights]
    foreign = [k for k in weights if k not in expected]
    if missing or foreign:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} of its {len(expected)} weights (e.g. {missing[0]!r})")
        if foreign:
            parts.append(f"holds {len(foreign)} it does not have (e.g. {foreign[0]!r})")
        return (
            f"not the weights of the bundle's {name}: the checkpoint {' and '.join(parts)}; another network?"
        )
    wrong = [k for k, v in expected.items() if tuple(weights[k].shape) != tuple(v.shape)]
    if not wrong:
        return None
    have, want = _layout(weights), _layout(expected)
    if have and want and have[0] != want[0]:
        return f"{have[0]}D weights into the bundle's {want[0]}D {name}: a checkpoint of a {have[0]}D bundle?"
    if have and want and have[1:] != want[1:]:
        channels = [
            f"{what} channels {a} vs {b}"
            for what, a, b in (("input", have[1], want[1]), ("output", have[2], want[2]))
            if a != b
        ]
        return f"{', '.join(channels)} (checkpoint vs bundle): a checkpoint of another task?"
    key = wrong[0]
    got, own = tuple(weights[key].shape), tuple(expected[key].shape)
    alpha = getattr(network, "alpha", None)
    guess = f" {alpha * got[0] / own[0]:g}" if isinstance(alpha, float) and got[1:] == own[1:] else ""
    return (
        f"{key!r} is {got} in the checkpoint, {own} in the bundle's {name}: a network of another width "
        f"(--alpha{guess})?"
    )


def _load(path: Path, key: str) -> Any:
    """``torch.load(path, weights_only=True)``; a file that is none, or not one safely, ends the program."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _GLOBAL.search(str(e))
        if code:
            raise SystemExit(
                f"error: --{key} {path}: refused: it holds Python objects ({code.group(1)}) besides weights, "
                "which loading would run; a model.pt of a study holds weights only"
            ) from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if line.startswith("WeightsUnpickler error")), lines[0] if lines else ""
        )
        raise SystemExit(f"error: --{key} {path}: not a PyTorch checkpoint ({detail})") from None
    except Exception as e:  # noqa: BLE001 - whatever a file that is no checkpoint makes the unpickler raise
        detail = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise SystemExit(f"error: --{key} {path}: not a PyTorch checkpoint ({detail})") from None


def check_checkpoint(
    checkpoint: str | os.PathLike, network: torch.nn.Module, key: str = "checkpoint"
) -> None:
    """Refuse, in one line, a checkpoint that does not fit ``network``, before any file is written.

    For a bundle's ``initialize``: ``"$monai_im.bundle.check_checkpoint(@checkpoint, @network_def)"``.

    Args:
        checkpoint: the file given as ``--checkpoint`` (or the config's default).
        network: the bundle's network (``@network_def``), whose state dict the weights must match.
        key: the config key of the checkpoint, named in the messages.

    Raises:
        SystemExit: ``error: ...``, naming the file and what it holds against what the bundle expects.
    """
    path = Path(checkpoint)
    launch = current_launch()
    given = launch is None or key in launch.overrides
    if not path.exists():
        if not given:
            raise SystemExit(
                f"error: no --{key} given and the default {path} does not exist: pass the model a study "
                f"wrote, --{key} runs/<study>/model.pt"
            )
        raise SystemExit(
            f"error: --{key} {path}: no such file; pass the model a study wrote, runs/<study>/model.pt"
        )
    if path.is_dir():
        inside = path / "model.pt"
        hint = f": pass --{key} {inside}" if inside.is_file() else ": pass the model.pt a study wrote"
        raise SystemExit(f"error: --{key} {path} is a folder{hint}")
    content = _load(path, key)
    weights = find_state_dict(content)
    if weights is None:
        raise SystemExit(
            f"error: --{key} {path} holds {_describe(content)}, not network weights (a state dict, or one "
            f"under {MODEL_KEY!r})"
        )
    problem = checkpoint_mismatch(weights, network)
    if problem:
        raise SystemExit(f"error: --{key} {path}: {problem}")
