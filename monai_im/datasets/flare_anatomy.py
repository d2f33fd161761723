"""The anatomy of a FLARE22-like synthetic CT volume (see :mod:`monai_im.datasets.flare_like`): body, spine
and the 13 FLARE22 organs, each with its own shape, mean intensity and texture, drawn by vectorised numpy
from the generator passed in."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_im.datasets.drawing import _resample, bezier, smooth_noise

__all__ = ["FLARE22_LABELS", "HU_RANGE", "flare_like_sample", "smooth_field_3d"]

#: The 13 FLARE22 organs in label order (label ``i + 1`` is ``FLARE22_LABELS[i]``; 0 is background).
FLARE22_LABELS = (
    "liver",
    "right_kidney",
    "spleen",
    "pancreas",
    "aorta",
    "inferior_vena_cava",
    "right_adrenal_gland",
    "left_adrenal_gland",
    "gallbladder",
    "esophagus",
    "stomach",
    "duodenum",
    "left_kidney",
)

AIR, FAT, MUSCLE, BONE_CORTEX, BONE_CANCELLOUS, DISC, CSF = -1000.0, -100.0, 50.0, 800.0, 450.0, 90.0, 10.0
HU_RANGE = (-1024.0, 3071.0)


def smooth_field_3d(rng: np.random.Generator, shape: tuple[int, int, int], scale: float) -> np.ndarray:
    """A smooth 3D random field (zero mean, unit standard deviation) with correlation length ``scale`` voxels.

    Coarse white noise (one node every ``scale`` voxels) resampled with separable cubic B-splines.
    """
    scale = max(float(scale), 1.0)
    out = rng.standard_normal(tuple(int(np.ceil(n / scale)) + 5 for n in shape))
    for axis, n in enumerate(shape):
        out = _resample(out, n, scale, 1.5 + float(rng.uniform()), axis=axis)
    out -= out.mean()
    return out / (out.std() + 1e-8)


class _Grid:
    """Normalised coordinates: ``u`` (to the patient's right) and ``v`` (anterior) in units of half the
    smaller in-plane side, ``w`` in [0, 1] from the lowest (inferior) to the highest slice."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        nx, ny, nz = shape
        self.shape = shape
        self.s = min(nx, ny) / 2.0
        self.u = ((np.arange(nx) - (nx - 1) / 2) / self.s)[:, None, None]
        self.v = ((np.arange(ny) - (ny - 1) / 2) / self.s)[None, :, None]
        self.w = (np.arange(nz) / max(nz - 1, 1))[None, None, :]
        self.dw = 1.0 / max(nz - 1, 1)

    def min_radius(self, voxels: float = 1.4) -> float:
        """An in-plane radius of ``voxels`` voxels, in grid units (keeps small organs visible)."""
        return voxels / self.s


def _ellipsoid(
    g: _Grid, centre: tuple[float, float, float], radii: tuple[float, float, float], angle: float
) -> np.ndarray:
    """Ellipsoidal radial coordinate (< 1 inside), rotated by ``angle`` in the axial plane."""
    du, dv = g.u - centre[0], g.v - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    a, b = (
        (du * c + dv * s) / max(radii[0], g.min_radius()),
        (dv * c - du * s) / max(radii[1], g.min_radius()),
    )
    return np.sqrt(a * a + b * b + ((g.w - centre[2]) / max(radii[2], 1.5 * g.dw)) ** 2)


def _tube_z(
    g: _Grid,
    rng: np.random.Generator,
    centre: tuple[float, float],
    radii: tuple[float, float],
    z: tuple[float, float],
) -> np.ndarray:
    """Radial coordinate of a tube along z with a gently winding centre line; > 1 outside ``z``."""
    amp, phase = rng.uniform(0.0, 0.03, 2), rng.uniform(0, 2 * np.pi, 2)
    cu = centre[0] + amp[0] * np.sin(2 * np.pi * g.w + phase[0])
    cv = centre[1] + amp[1] * np.sin(2 * np.pi * g.w + phase[1])
    rho = np.hypot((g.u - cu) / max(radii[0], g.min_radius()), (g.v - cv) / max(radii[1], g.min_radius()))
    return np.where((g.w >= z[0]) & (g.w <= z[1]), rho, np.inf)


def _tube_xy(
    g: _Grid,
    points: tuple[tuple[float, float], ...],
    radius: tuple[float, float],
    z_centre: tuple[float, float],
    z_radius: float,
) -> np.ndarray:
    """Radial coordinate of a curved tube in the axial plane (a quadratic Bezier through ``points``).

    The radius goes from ``radius[0]`` at the start of the curve to ``radius[1]`` at its end, the
    z centre from ``z_centre[0]`` to ``z_centre[1]``; the z extent is ``z_radius`` (rounded ends).
    """
    curve = bezier(*points, step=0.01)
    du = g.u[:, :, 0, None] - curve[None, None, :, 0]
    dv = g.v[:, :, 0, None] - curve[None, None, :, 1]
    dist2 = du * du + dv * dv
    nearest = np.argmin(dist2, axis=-1)
    dist = np.sqrt(np.take_along_axis(dist2, nearest[..., None], axis=-1))
    t = nearest[..., None] / max(len(curve) - 1, 1)
    r = np.maximum(radius[0] + (radius[1] - radius[0]) * t, g.min_radius())
    zc = z_centre[0] + (z_centre[1] - z_centre[0]) * t
    dz = (g.w - zc) / max(z_radius, 1.5 * g.dw)
    return np.sqrt((dist / r) ** 2 + dz * dz)


def _body(g: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Body radial coordinate ``(X, Y, 1)`` (< 1 inside), fat thickness and the spine centre ``(u, v)``."""
    a, b = rng.uniform(0.80, 0.92), rng.uniform(0.58, 0.70)
    cu, cv = rng.normal(0.0, 0.02), rng.normal(-0.02, 0.02)
    back = np.where(g.v < cv, rng.uniform(0.82, 0.92), 1.0)  # the back is flatter than the belly
    outline = 1.0 + 0.025 * smooth_noise(rng, g.shape[:2], g.s / 2)[:, :, None]
    rho = np.hypot((g.u - cu) / a, (g.v - cv) / (b * back)) * outline
    return rho, float(rng.uniform(0.08, 0.16)), float(cu), float(cv - 0.6 * b)


def _spine(
    g: _Grid, rng: np.random.Generator, su: float, sv: float, fine: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """HU values of the spine region and its mask: vertebral bodies and discs, canal, posterior elements."""
    r = rng.uniform(0.10, 0.13)
    body = np.hypot(g.u - su, (g.v - sv) / 0.9)
    period, phase = rng.uniform(0.17, 0.24), rng.uniform(0, 1)
    disc = ((g.w / period + phase) % 1.0) < rng.uniform(0.18, 0.26)
    vertebra = np.where(body > 0.8 * r, BONE_CORTEX, BONE_CANCELLOUS) + rng.uniform(-80, 80) + 60 * fine
    hu = np.where(disc, DISC, vertebra)
    canal_v = sv - r - 0.05
    canal = np.hypot(g.u - su, g.v - canal_v)
    arch = (canal < 0.08) | ((np.abs(g.u - su) < 0.025) & (g.v < canal_v) & (g.v > canal_v - 0.14))
    muscles = np.hypot((np.abs(g.u - su) - 0.13) / 0.09, (g.v - canal_v + 0.05) / 0.08) < 1.0
    hu = np.where(body < r, hu, np.where(canal < 0.04, CSF, np.where(arch, BONE_CORTEX + 100 * fine, MUSCLE)))
    mask = (body < r) | arch | muscles
    return np.broadcast_to(hu, g.shape), np.broadcast_to(mask, g.shape)


@dataclass
class _Draw:
    """The random draws of one volume's organs: jitter, size factors, rough outlines and textured HU."""

    g: _Grid
    rng: np.random.Generator
    fine: np.ndarray
    coarse: np.ndarray
    wobble: np.ndarray

    def j(self, value: float, sd: float = 0.03) -> float:
        return float(value + self.rng.normal(0.0, sd))

    def k(self) -> float:  # size factor of one organ
        return float(self.rng.uniform(0.85, 1.15))

    def rough(self, rho: np.ndarray, amount: float) -> np.ndarray:
        phi = self.rng.uniform(0, 2 * np.pi)
        return rho * (1.0 + amount * (np.cos(phi) * self.wobble + np.sin(phi) * self.coarse))

    def hu(self, mean: float, spread: float, texture: float) -> np.ndarray:
        return self.j(mean, spread) + texture * self.fine


def _organs(
    g: _Grid, rng: np.random.Generator, fine: np.ndarray, coarse: np.ndarray, wobble: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(label, mask, HU values)`` of each organ, in painting order (later organs cover earlier ones)."""
    d = _Draw(g, rng, fine, coarse, wobble)
    yield from _upper_organs(d)
    yield from _central_organs(d)


def _upper_organs(d: _Draw) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Liver, spleen, stomach, kidneys and duodenum."""
    # 1 liver: large, on the patient's right, from the upper abdomen to the top of the volume
    rho = d.rough(
        _ellipsoid(
            d.g, (d.j(0.42), d.j(0.02), d.j(0.74)), (0.40 * d.k(), 0.45 * d.k(), 0.36 * d.k()), d.j(0.2, 0.1)
        ),
        0.08,
    )
    yield 1, rho < 1, d.hu(60, 8, 6) + 4 * d.coarse
    # 3 spleen: on the left, posterior and high, an oblique crescent-like ellipsoid
    rho = d.rough(
        _ellipsoid(
            d.g,
            (d.j(-0.56), d.j(-0.18), d.j(0.70)),
            (0.12 * d.k(), 0.22 * d.k(), 0.17 * d.k()),
            d.j(-0.6, 0.1),
        ),
        0.06,
    )
    yield 3, rho < 1, d.hu(50, 8, 5)
    # 11 stomach: left upper quadrant; wall, fluid/food at the back, air at the front (supine patient)
    centre = (d.j(-0.28), d.j(0.18), d.j(0.72))
    radii = (0.22 * d.k(), 0.20 * d.k(), 0.19 * d.k())
    rho = d.rough(_ellipsoid(d.g, centre, radii, d.j(0.3, 0.1)), 0.07)
    level = centre[1] + d.rng.uniform(0.0, 0.6) * radii[1]
    content = np.where(d.g.v > level, AIR + 30 * d.fine, d.hu(20, 10, 15) + 15 * d.coarse)
    yield 11, rho < 1, np.where(rho > 0.75, d.hu(45, 5, 5), content)
    # 2 right and 13 left kidney: beside the spine at the back, brighter cortex around the medulla
    for label, side, cw in ((2, 1.0, 0.32), (13, -1.0, 0.37)):
        rho = d.rough(
            _ellipsoid(
                d.g,
                (d.j(0.33 * side), d.j(-0.30), d.j(cw)),
                (0.10 * d.k(), 0.14 * d.k(), 0.17 * d.k()),
                d.j(0.5 * side, 0.1),
            ),
            0.04,
        )
        medulla = d.j(30, 5)
        yield label, rho < 1, np.where(rho > 0.65, medulla + d.rng.uniform(40, 100), medulla) + 5 * d.fine
    # 12 duodenum: a C-shaped tube around the pancreatic head, below it; fluid inside a wall
    rho = _tube_xy(
        d.g,
        ((d.j(0.12), d.j(0.12)), (d.j(0.45), d.j(0.0)), (d.j(0.02), d.j(-0.10))),
        (0.05, 0.045),
        (d.j(0.40), d.j(0.34)),
        0.10,
    )
    yield 12, rho < 1, np.where(rho > 0.6, d.hu(45, 5, 5), d.hu(15, 8, 8))


def _central_organs(d: _Draw) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Pancreas, gallbladder, the great vessels, the adrenal glands and the esophagus."""
    # 4 pancreas: an elongated lobulated curve from the head (right) to the tail (left, near the spleen)
    rho = _tube_xy(
        d.g,
        ((d.j(0.16), d.j(-0.02)), (d.j(-0.05), d.j(-0.06)), (d.j(-0.44), d.j(-0.12))),
        (0.07, 0.04),
        (d.j(0.46), d.j(0.53)),
        0.07,
    )
    yield 4, d.rough(rho, 0.1) < 1, d.hu(45, 8, 12)
    # 9 gallbladder: a small pear-shaped sac under the liver, near the front
    rho = d.rough(
        _ellipsoid(
            d.g, (d.j(0.32), d.j(0.30), d.j(0.47)), (0.06 * d.k(), 0.10 * d.k(), 0.09 * d.k()), d.j(0.8, 0.2)
        ),
        0.05,
    )
    yield 9, rho < 1, d.hu(10, 5, 3)
    # 6 inferior vena cava: a flattened tube on the right of the aorta, from the bottom to the liver
    contrast = d.rng.uniform(0.0, 1.0)  # arterial (0) to portal venous (1) phase
    yield (
        6,
        _tube_z(d.g, d.rng, (d.j(0.14, 0.02), d.j(-0.17, 0.02)), (0.075, 0.055), (0.0, d.j(0.85))) < 1,
        d.hu(90 + 60 * contrast, 10, 4),
    )
    # 5 aorta: a round contrast-filled tube in front of the spine, slightly to the left, along all slices
    yield (
        5,
        _tube_z(d.g, d.rng, (d.j(-0.07, 0.02), d.j(-0.20, 0.02)), (0.065, 0.065), (0.0, 1.0)) < 1,
        d.hu(220 - 60 * contrast, 15, 4),
    )
    # 7 right and 8 left adrenal gland: small thin bodies just above the kidneys
    for label, side in ((7, 1.0), (8, -1.0)):
        rho = _ellipsoid(
            d.g,
            (d.j(0.22 * side, 0.015), d.j(-0.23, 0.015), d.j(0.56)),
            (0.035, 0.075, 0.06),
            d.j(0.9 * side, 0.2),
        )
        yield label, rho < 1, d.hu(40, 6, 3)
    # 10 esophagus: a thin tube in front of the aorta at the top of the volume, sometimes with air inside
    rho = _tube_z(d.g, d.rng, (d.j(-0.04, 0.01), d.j(-0.10, 0.01)), (0.04, 0.035), (d.j(0.84), 1.0))
    yield 10, rho < 1, np.where(rho < 0.35 * d.rng.integers(0, 2), AIR + 30 * d.fine, d.hu(40, 5, 4))


def flare_like_sample(
    shape: tuple[int, int, int], rng: np.random.Generator, num_organs: int = 13
) -> tuple[np.ndarray, np.ndarray]:
    """One FLARE22-like CT volume and its organ labels.

    Args:
        shape: ``(X, Y, Z)``, voxel axes in RAS order (patient's left to right, posterior to anterior,
            inferior to superior); each side at least 8 voxels.
        rng: the random generator of this volume.
        num_organs: keep labels ``1 .. num_organs`` of :data:`FLARE22_LABELS` (1 to 13); the other
            organs are still drawn in the image, but labelled background. The image does not depend on it.

    Returns:
        ``(image, label)``: ``image`` is float32 HU in [-1024, 3071] and ``label`` uint8 in ``0 .. num_organs``,
        both ``(X, Y, Z)``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sides of at least 8 voxels, got {shape}")
    if not 1 <= num_organs <= len(FLARE22_LABELS):
        raise ValueError(f"num_organs must be 1 .. {len(FLARE22_LABELS)}, got {num_organs}")
    g = _Grid(shape)
    fine = smooth_field_3d(rng, shape, 1.5)
    coarse = smooth_field_3d(rng, shape, g.s / 4)
    wobble = smooth_field_3d(rng, shape, g.s / 6)

    body_rho, fat, su, sv = _body(g, rng)
    wall = 1.0 - fat
    cavity_edge = wall - rng.uniform(0.04, 0.07)
    bowel = np.where(coarse > rng.uniform(-0.3, 0.3), rng.uniform(20, 45) + 10 * fine, FAT + 15 * fine)
    image = np.where(
        body_rho < cavity_edge, bowel, np.where(body_rho < wall, MUSCLE + 8 * fine, FAT + 10 * fine)
    )
    image = np.where(body_rho < 1.0, image, AIR)
    spine_hu, spine = _spine(g, rng, su, sv, fine)
    image = np.where(spine, spine_hu, image)

    cavity = (body_rho < cavity_edge) & ~ndimage.binary_dilation(spine[:, :, :1], iterations=1)
    label = np.zeros(shape, dtype=np.uint8)
    for organ, mask, values in _organs(g, rng, fine, coarse, wobble):
        mask = mask & cavity
        label[mask] = organ
        image = np.where(mask, values, image)

    sigma_xy = rng.uniform(0.4, 0.8)
    image = ndimage.gaussian_filter(image, (sigma_xy, sigma_xy, rng.uniform(0.2, 0.5)))
    image = image + rng.uniform(6.0, 14.0) * rng.standard_normal(shape)
    image = np.clip(image, *HU_RANGE).astype(np.float32)
    label[label > num_organs] = 0
    return image, label
