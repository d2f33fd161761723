"""Pure building blocks of the self-training methods: Input Ensemble views, Noisy Student schedules and
augmentation, IM++ replication counts.

- :class:`View`, :func:`input_views`, :func:`predict_views`: the Input Ensemble of the paper (one teacher,
  several invertible geometric views of the batch, predictions mapped back to the original orientation).
- :func:`width_schedule`, :func:`noise_schedule`, :func:`noisy_student_augmentation`: Noisy Student students
  that grow wider and see noisier inputs generation after generation.
- :func:`replication_counts`: IM++ weights each pseudo-label by replicating it 1..5 times by its predicted IoU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    ScaleIntensityRanged,
)
from monai.utils import convert_to_tensor
from torch import Tensor

__all__ = [
    "View",
    "input_views",
    "predict_views",
    "width_schedule",
    "noise_schedule",
    "noisy_student_augmentation",
    "replication_counts",
]


@dataclass(frozen=True)
class View:
    """One invertible geometric view of a batch ``(B, C, *spatial)``, 2D or 3D.

    :meth:`apply` flips the spatial axes ``flips`` (0 = first spatial axis) and then rotates by
    ``rot90`` quarter turns in the plane of the first two spatial axes (``torch.rot90`` direction);
    :meth:`invert` undoes both in the reverse order. Both are pure permutations of the elements, so
    ``invert(apply(x))`` equals ``x`` bit for bit.

    Args:
        name: a readable name, e.g. ``"identity"``, ``"flip0"``, ``"flip1+rot90"``.
        flips: the spatial axes to flip, increasing and without repeats.
        rot90: quarter turns in the first two spatial axes, 0..3.
    """

    name: str
    flips: tuple[int, ...] = ()
    rot90: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rot90 <= 3:
            raise ValueError(f"View {self.name!r}: rot90 must be 0..3 quarter turns, got {self.rot90}.")
        if any(a < 0 for a in self.flips) or list(self.flips) != sorted(set(self.flips)):
            raise ValueError(
                f"View {self.name!r}: flips must be increasing non-negative spatial axes, got {self.flips}."
            )

    def _check(self, x: Tensor) -> int:
        """The number of spatial dims of ``x``, after checking that the view fits them."""
        spatial = x.ndim - 2
        needed = max([*(a + 1 for a in self.flips), 2 if self.rot90 else 0])
        if spatial < max(needed, 1):
            raise ValueError(
                f"View {self.name!r} needs a batch (B, C, *spatial) with at least {max(needed, 1)} spatial "
                f"dims, got shape {tuple(x.shape)}."
            )
        return spatial

    def apply(self, x: Tensor) -> Tensor:
        """The view of ``x`` (B, C, *spatial): flips, then quarter turns.

        Raises:
            ValueError: when an odd number of quarter turns meets non-square first two spatial dims.
        """
        self._check(x)
        if self.rot90 % 2 and x.shape[2] != x.shape[3]:
            raise ValueError(
                f"View {self.name!r} rotates by 90 degrees, which needs square first two spatial dims, got "
                f"spatial shape {tuple(x.shape[2:])}; use input_views(..., square=False)."
            )
        if self.flips:
            x = torch.flip(x, dims=[a + 2 for a in self.flips])
        if self.rot90:
            x = torch.rot90(x, k=self.rot90, dims=(2, 3))
        return x

    def invert(self, x: Tensor) -> Tensor:
        """Map ``x`` (a view, or a prediction on a view, (B, C, *spatial)) back to the original orientation."""
        self._check(x)
        if self.rot90:
            x = torch.rot90(x, k=-self.rot90, dims=(2, 3))
        if self.flips:
            x = torch.flip(x, dims=[a + 2 for a in self.flips])
        return x


def _view_name(flips: tuple[int, ...], rot90: int) -> str:
    parts = [f"flip{a}" for a in flips] + ([f"rot{90 * rot90}"] if rot90 else [])
    return "+".join(parts) or "identity"


def _all_views(spatial_dims: int, square: bool) -> list[View]:
    """Every distinct view, in the order documented by :func:`input_views`."""
    axes = range(spatial_dims)
    turns = range(4) if square else range(1)
    candidates: list[tuple[int, int, tuple[int, ...]]] = []  # (number of operations, turns, flips)
    for r in range(spatial_dims + 1):
        for flips in itertools.combinations(axes, r):
            for k in turns:
                candidates.append((len(flips) + (1 if k else 0), k, flips))
    # fewest operations first; among equals pure flips first, then by turns, then by flipped axes
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    probe = torch.arange(3**spatial_dims).reshape(1, 1, *([3] * spatial_dims))
    seen: set[tuple[int, ...]] = set()
    views = []
    for _, k, flips in candidates:
        view = View(_view_name(flips, k), flips, k)
        signature = tuple(view.apply(probe).flatten().tolist())
        if signature not in seen:  # e.g. flipping both axes of a plane is the 180-degree turn
            seen.add(signature)
            views.append(view)
    return views


def input_views(n: int, spatial_dims: int = 2, square: bool = True) -> list[View]:
    """``n`` distinct geometric views for an Input Ensemble, identity first, in a fixed order.

    The order is by the number of operations (one flip or one rotation counts one), pure flips before
    rotations, fewer quarter turns first, lower axes first; a view equal to an earlier one is
    skipped (flipping both axes of the rotation plane is the 180-degree turn). For 2D square
    images this is: identity, flip0, flip1, rot90, rot180, rot270, flip0+rot90, flip1+rot90
    (8 views, the dihedral group); 2D non-square: identity, flip0, flip1, flip0+flip1 (4).
    3D: 16 views when the first two spatial dims are equal, 8 (flips only) otherwise.

    Args:
        n: the number of views, 1..the maximum above.
        spatial_dims: 2 or 3.
        square: whether the first two spatial dims are equal; False gives flips only.

    Raises:
        ValueError: when ``n`` is not in 1..the maximum, or ``spatial_dims`` is not 2 or 3.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"input_views: spatial_dims must be 2 or 3, got {spatial_dims}.")
    views = _all_views(spatial_dims, square)
    if not 1 <= n <= len(views):
        kind = "square" if square else "non-square"
        raise ValueError(
            f"input_views: n={n} is out of range, {spatial_dims}D {kind} images have at most "
            f"{len(views)} distinct views (n must be 1..{len(views)})."
        )
    return views[:n]


def predict_views(
    network: Callable[..., Tensor],
    images: Tensor,
    views: Sequence[View],
    inferer: Callable[[Tensor, Callable], Tensor] | None = None,
) -> Tensor:
    """Logits of ``network`` on every view of ``images``, mapped back to the original orientation.

    One network call per view on the whole batch (never one call per image), under ``torch.no_grad``;
    the caller puts the network in eval mode.

    Args:
        network: the teacher.
        images: the batch (B, C, *spatial).
        views: the views, e.g. from :func:`input_views`.
        inferer: how the network is applied, ``inferer(x, network)`` (e.g. a sliding-window inferer);
            None = a direct call.

    Returns:
        float32 logits (V, B, C_out, *spatial), in the orientation of ``images``.
    """
    if not views:
        raise ValueError("predict_views: views is empty, give at least one View.")
    run = inferer if inferer is not None else (lambda x, net: net(x))
    images = convert_to_tensor(images, track_meta=False)
    outs = []
    with torch.no_grad():
        for view in views:
            logits = convert_to_tensor(run(view.apply(images), network), track_meta=False)
            outs.append(view.invert(logits).float())
    return torch.stack(outs)


def _linear(name: str, generation: int, num_generations: int, start: float, end: float) -> float:
    if num_generations < 0 or not 0 <= generation <= max(num_generations, 0):
        raise ValueError(
            f"{name}: generation {generation} is outside 0..num_generations ({num_generations})."
        )
    if num_generations == 0:
        return float(start)
    return float(start + (end - start) * generation / num_generations)


def width_schedule(generation: int, num_generations: int, start: float, end: float) -> float:
    """The width multiplier (alpha) of the Noisy Student students of ``generation``.

    Linear from ``start`` at generation 0 to ``end`` at generation ``num_generations``, e.g.
    0.5 -> 1.5 (ISIC) or 1 -> 2 (the other datasets); ``num_generations`` 0 gives ``start``.

    Args:
        generation: 0..num_generations.
        num_generations: the number of self-training generations after generation 0.
        start: the width of generation 0 (> 0).
        end: the width of the last generation (> 0).
    """
    if start <= 0 or end <= 0:
        raise ValueError(f"width_schedule: widths must be > 0, got start={start}, end={end}.")
    return _linear("width_schedule", generation, num_generations, start, end)


def noise_schedule(generation: int, num_generations: int, start: float = 0.0, end: float = 0.1) -> float:
    """The standard deviation of the Noisy Student input noise of ``generation``, linear ``start`` -> ``end``.

    Args:
        generation: 0..num_generations.
        num_generations: the number of self-training generations after generation 0 (0 gives ``start``).
        start: the noise of generation 0 (>= 0), on images scaled to [0, 1].
        end: the noise of the last generation (>= 0).
    """
    if start < 0 or end < 0:
        raise ValueError(f"noise_schedule: noise stds must be >= 0, got start={start}, end={end}.")
    return _linear("noise_schedule", generation, num_generations, start, end)


def noisy_student_augmentation(
    noise_std: float,
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
    prob: float = 1.0,
    spatial_dims: int = 2,
) -> Compose:
    """The noisy inputs of a Noisy Student: random geometry for image and label, noise on the image.

    Random flips along every spatial axis (probability ``0.5 * prob`` each) and 90-degree rotations
    in the first two spatial axes (probability ``0.75 * prob``, 1..3 quarter turns), so that
    ``prob=1`` draws a uniformly random orientation, applied jointly to ``keys`` and to ``"im"``
    where an item has it (missing keys are skipped); then, on ``image_key`` only and each with
    probability ``prob``: brightness (``RandScaleIntensityd``, factor in [0.8, 1.2]), contrast
    (``RandAdjustContrastd``, gamma in [0.7, 1.4]) and, when ``noise_std > 0``, Gaussian noise
    (``RandGaussianNoised``); finally the image is clipped to [0, 1]. Seed it with
    ``set_random_state`` of the returned ``Compose``.

    Args:
        noise_std: standard deviation of the Gaussian noise (e.g. from :func:`noise_schedule`); 0 adds
            no noise transform.
        keys: the keys transformed geometrically (image, label, ...).
        image_key: the key of the image for the photometric transforms.
        prob: probability of each augmentation, 0..1.
        spatial_dims: 2 or 3.
    """
    if noise_std < 0 or not math.isfinite(noise_std):
        raise ValueError(
            f"noisy_student_augmentation: noise_std must be a finite value >= 0, got {noise_std}."
        )
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"noisy_student_augmentation: prob must be in [0, 1], got {prob}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"noisy_student_augmentation: spatial_dims must be 2 or 3, got {spatial_dims}.")
    geometric = list(dict.fromkeys([*keys, "im"]))
    transforms: list = [
        RandFlipd(keys=geometric, prob=0.5 * prob, spatial_axis=axis, allow_missing_keys=True)
        for axis in range(spatial_dims)
    ]
    transforms += [
        RandRotate90d(
            keys=geometric, prob=0.75 * prob, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True
        ),
        RandScaleIntensityd(keys=image_key, factors=0.2, prob=prob),
        RandAdjustContrastd(keys=image_key, gamma=(0.7, 1.4), prob=prob),
    ]
    if noise_std > 0:
        transforms.append(RandGaussianNoised(keys=image_key, std=noise_std, prob=prob))
    transforms.append(
        ScaleIntensityRanged(keys=image_key, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)
    )
    return Compose(transforms)


def replication_counts(
    scores: Tensor, bins: Sequence[float] = (0.6, 0.7, 0.8, 0.9), max_copies: int = 5
) -> Tensor:
    """IM++ copies of each pseudo-label by its score (e.g. the EvalNet's predicted IoU).

    ``1 + (number of bins strictly below the score)``, capped at ``max_copies``; a NaN score gets 1 copy.
    With the defaults: score <= 0.6 -> 1, (0.6, 0.7] -> 2, (0.7, 0.8] -> 3, (0.8, 0.9] -> 4, > 0.9 -> 5.

    Args:
        scores: scores of any shape.
        bins: strictly increasing bin edges, ``max_copies - 1`` of them.
        max_copies: the most copies of one item (>= 1).

    Returns:
        int64 copies, the shape of ``scores``.
    """
    if max_copies < 1:
        raise ValueError(f"replication_counts: max_copies must be >= 1, got {max_copies}.")
    edges = [float(b) for b in bins]
    if len(edges) != max_copies - 1:
        raise ValueError(
            f"replication_counts: bins {tuple(edges)} must have max_copies - 1 = {max_copies - 1} edges, "
            f"got {len(edges)}."
        )
    if any(not math.isfinite(b) for b in edges) or any(b >= c for b, c in zip(edges, edges[1:])):
        raise ValueError(f"replication_counts: bins {tuple(edges)} must be finite and strictly increasing.")
    scores = convert_to_tensor(scores, track_meta=False)
    if not scores.is_floating_point():
        scores = scores.double()
    edge_t = torch.tensor(edges, dtype=scores.dtype, device=scores.device)
    # a NaN compares False with every edge, so it gets 0 bins below it: 1 copy
    counts = 1 + (scores.unsqueeze(-1) > edge_t).sum(dim=-1)
    return counts.clamp(max=max_copies).to(torch.int64)
