"""Drawing primitives shared by the synthetic demo datasets: seeded noise fields, blobs, curves.

Everything is vectorised numpy; lengths are in pixels; all randomness comes from the
``numpy.random.Generator`` passed in, so that a seed fixes every pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import ndimage

T = TypeVar("T")

__all__ = [
    "SPLIT_CODES",
    "image_rng",
    "smooth_noise",
    "Blob",
    "bezier",
    "draw_curves",
    "draw_weighted",
    "sigmoid",
]

#: Code of each split in the per-image seed, so that an image depends only on (seed, split, index).
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one image, derived from ``(seed, split, index)`` only.

    An image therefore does not change when the number of images of any split changes.
    """
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index)])


def draw_weighted(rng: np.random.Generator, items: Sequence[T]) -> T:
    """One of ``items`` (each with a ``weight`` attribute), drawn with probabilities proportional to the weights."""
    w = np.array([item.weight for item in items], dtype=float)
    return items[int(rng.choice(len(items), p=w / w.sum()))]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _resample(coarse: np.ndarray, n: int, scale: float, offset: float, axis: int) -> np.ndarray:
    """Cubic B-spline resampling of ``coarse`` along ``axis`` at ``arange(n) / scale + offset``.

    Each output sample mixes four neighbouring nodes, so this is four gathers and no dense matrix.
    """
    t = np.arange(n) / scale + offset
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    weights = (
        (1 - f) ** 3 / 6,
        (3 * f**3 - 6 * f**2 + 4) / 6,
        (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
        f**3 / 6,
    )
    shape = [1] * coarse.ndim
    shape[axis] = n
    return sum(w.reshape(shape) * np.take(coarse, i0 - 1 + k, axis=axis) for k, w in enumerate(weights))


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], scale: float, channels: int | None = None
) -> np.ndarray:
    """A smooth random field with zero mean, unit standard deviation and correlation length ``scale``.

    White noise on a coarse grid (one node every ``scale`` pixels) is resampled with separable cubic
    B-splines, much faster than a wide Gaussian blur of a full-size noise image.

    Args:
        rng: the random generator.
        shape: ``(H, W)`` of the output.
        scale: correlation length in pixels (values below 1 act as 1).
        channels: ``None`` for an ``(H, W)`` field, else ``(channels, H, W)`` independent fields.
    """
    h, w = shape
    scale = max(float(scale), 1.0)
    n = 1 if channels is None else channels
    coarse = rng.standard_normal((n, int(np.ceil(h / scale)) + 5, int(np.ceil(w / scale)) + 5))
    oy, ox = rng.uniform(0.0, 1.0, size=2)
    out = _resample(_resample(coarse, h, scale, 1.5 + oy, axis=1), w, scale, 1.5 + ox, axis=2)
    out -= out.mean(axis=(-2, -1), keepdims=True)
    out /= out.std(axis=(-2, -1), keepdims=True) + 1e-8
    return out[0] if channels is None else out


@dataclass(frozen=True)
class Blob:
    """An irregular star-shaped region: an ellipse whose radius is modulated by random Fourier harmonics.

    The boundary in polar coordinates (after rotation by ``angle`` and stretching by ``aspect``) is
    ``radius * (1 + sum_k amp_k * cos(k * theta + phase_k))``, ``k = 2 .. K``.
    """

    cy: float
    cx: float
    radius: float
    aspect: float
    angle: float
    amps: np.ndarray
    phases: np.ndarray

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        cy: float,
        cx: float,
        radius: float,
        roughness: float = 0.15,
        harmonics: int = 6,
        aspect: float = 1.0,
        max_total: float = 0.6,
    ) -> Blob:
        """Draw a blob centred at ``(cy, cx)``; ``roughness`` scales the harmonic amplitudes."""
        k = np.arange(2, harmonics + 1, dtype=np.float64)
        amps = roughness * rng.standard_normal(k.size) / k**0.8
        total = np.abs(amps).sum()
        if total > max_total:
            amps *= max_total / total
        phases = rng.uniform(0.0, 2 * np.pi, k.size)
        return cls(
            float(cy), float(cx), float(radius), float(aspect), float(rng.uniform(0, np.pi)), amps, phases
        )

    @property
    def extent(self) -> float:
        """An upper bound of the distance from the centre to the boundary."""
        return (
            self.radius
            * (1.0 + float(np.abs(self.amps).sum()))
            * float(np.sqrt(max(self.aspect, 1 / self.aspect)))
        )

    def window(
        self, shape: tuple[int, int], scale: float = 1.0, pad: float = 2.0
    ) -> tuple[slice, slice] | None:
        """The image window holding the blob grown ``scale`` times (plus ``pad`` px); ``None`` if outside."""
        r = self.extent * scale + pad
        y0, y1 = max(0, int(np.floor(self.cy - r))), min(shape[0], int(np.ceil(self.cy + r)) + 1)
        x0, x1 = max(0, int(np.floor(self.cx - r))), min(shape[1], int(np.ceil(self.cx + r)) + 1)
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def rho(self, window: tuple[slice, slice]) -> np.ndarray:
        """Normalised radial coordinate over ``window``: 0 at the centre, 1 on the boundary, < 1 inside."""
        yy, xx = np.meshgrid(
            np.arange(window[0].start, window[0].stop, dtype=np.float64),
            np.arange(window[1].start, window[1].stop, dtype=np.float64),
            indexing="ij",
        )
        return self.rho_at(yy, xx)

    def rho_at(self, y: np.ndarray | float, x: np.ndarray | float) -> np.ndarray:
        """Normalised radial coordinate at the points ``(y, x)`` (arrays of one shape, or scalars)."""
        dy, dx = np.asarray(y, dtype=np.float64) - self.cy, np.asarray(x, dtype=np.float64) - self.cx
        c, s = np.cos(self.angle), np.sin(self.angle)
        stretch = np.sqrt(self.aspect)
        u = (dx * c + dy * s) / stretch
        v = (-dx * s + dy * c) * stretch
        theta = np.arctan2(v, u)[None]
        k = np.arange(2, self.amps.size + 2, dtype=np.float64).reshape((-1,) + (1,) * u.ndim)
        amps = self.amps.reshape(k.shape)
        phases = self.phases.reshape(k.shape)
        modulation = 1.0 + np.sum(amps * np.cos(k * theta + phases), axis=0)
        return np.hypot(u, v) / (self.radius * modulation)


def bezier(p0: Sequence[float], p1: Sequence[float], p2: Sequence[float], step: float = 0.35) -> np.ndarray:
    """Points ``(N, 2)`` along a quadratic Bezier curve, about ``step`` px apart."""
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    length = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    t = np.linspace(0.0, 1.0, max(2, int(np.ceil(length / step)) + 1))[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def draw_curves(shape: tuple[int, int], curves: Sequence[np.ndarray], widths: Sequence[float]) -> np.ndarray:
    """Anti-aliased coverage ``(H, W)`` in [0, 1] of thin curves of the given widths (px).

    Each curve is a ``(N, 2)`` array of dense ``(y, x)`` points; the coverage falls off linearly
    over one pixel around ``width / 2`` from the nearest curve (one distance transform for all).
    """
    if not curves:
        return np.zeros(shape, dtype=np.float64)
    ids = np.zeros(shape, dtype=np.int32)
    for i, pts in enumerate(curves, start=1):
        p = np.rint(pts).astype(np.int64)
        keep = (p[:, 0] >= 0) & (p[:, 0] < shape[0]) & (p[:, 1] >= 0) & (p[:, 1] < shape[1])
        ids[p[keep, 0], p[keep, 1]] = i
    if not ids.any():
        return np.zeros(shape, dtype=np.float64)
    dist, (iy, ix) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
    width = np.concatenate([[0.0], np.asarray(widths, dtype=np.float64)])[ids[iy, ix]]
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)
