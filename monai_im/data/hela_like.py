"""HeLa-like synthetic brightfield images: alive and dead cells with (alive, dead, position) masks.

Alive cells are large, flattened, irregular and textured, slightly darker than the background
with a dark rim and a faint bright halo; dead cells are small, round and compact with a bright
core and a thick dark ring. Cells often touch. Debris (some of it round and bright like a small
dead cell), out-of-focus ghosts, fibres, uneven illumination, noise and defocus make the task
non-trivial. Cell sizes are given for 256 x 256 images and scale with the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_im.data.drawing import Blob, bezier, draw_curves, smooth_noise

__all__ = ["hela_like_sample", "position_radius"]


@dataclass(frozen=True)
class _Cell:
    blob: Blob
    dead: bool


def position_radius(nn_distance: float, scale: float = 1.0) -> float:
    """Radius (px) of a cell's position disc from the distance to its nearest neighbour.

    As in the paper's data preparation: 3..8 px at 256 x 256, smaller for closer neighbours;
    ``scale`` is ``image size / 256``. Two neighbouring discs never touch.
    """
    r = float(np.clip(0.3 * nn_distance / scale, 3.0, 8.0)) * scale
    return max(1.0, min(r, (nn_distance - 1.0) / 2.0))


def _new_cell(rng: np.random.Generator, dead: bool, cy: float, cx: float, s: float) -> _Cell:
    if dead:
        r = max(1.5, rng.uniform(5.0, 9.0) * s)
        blob = Blob.random(rng, cy, cx, r, roughness=0.04, harmonics=4, aspect=rng.uniform(1.0, 1.2))
    else:
        r = max(2.5, rng.uniform(9.0, 18.0) * s)
        blob = Blob.random(
            rng, cy, cx, r, roughness=rng.uniform(0.1, 0.3), harmonics=7, aspect=rng.uniform(1.0, 2.2)
        )
    return _Cell(blob, dead)


def _place_cells(rng: np.random.Generator, size: int, s: float) -> list[_Cell]:
    """Alive cells first, then dead ones; often next to an earlier cell so that they touch.

    No cell covers the centre of another (where its position disc goes), and overlaps stay small.
    """
    kinds = [False] * int(rng.integers(3, 20)) + [True] * int(rng.integers(0, 10))
    cells: list[_Cell] = []
    for dead in kinds:
        for _ in range(30):
            if cells and rng.random() < 0.4:
                other = cells[rng.integers(len(cells))].blob
                angle = rng.uniform(0, 2 * np.pi)
                d = (other.radius + (7.0 if dead else 13.0) * s) * rng.uniform(0.8, 1.1)
                cy, cx = other.cy + d * np.sin(angle), other.cx + d * np.cos(angle)
            else:
                cy, cx = rng.uniform(0, size - 1, 2)
            if not (0 <= cy <= size - 1 and 0 <= cx <= size - 1):
                continue
            cell = _new_cell(rng, dead, cy, cx, s)
            if all(_compatible(cell.blob, c.blob) for c in cells):
                cells.append(cell)
                break
    return cells


def _compatible(a: Blob, b: Blob) -> bool:
    """Neither blob covers (or comes close to) the other's centre, and they overlap little."""
    d = np.hypot(a.cy - b.cy, a.cx - b.cx)
    return bool(
        d >= 0.75 * (a.radius + b.radius) and a.rho_at(b.cy, b.cx) > 1.15 and b.rho_at(a.cy, a.cx) > 1.15
    )


def _render_cells(
    rng: np.random.Generator, size: int, s: float, cells: list[_Cell]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intensity offsets ``(H, W)``, texture amplitude ``(H, W)`` and instance map (0 = none, i + 1 = cell i)."""
    delta = np.zeros((size, size))
    texture = np.zeros((size, size))
    inst = np.zeros((size, size), dtype=np.int32)
    for i, cell in enumerate(cells):
        win = cell.blob.window((size, size), scale=1.4, pad=2.0)
        rho = cell.blob.rho(win)
        inside = rho < 1.0
        if cell.dead:
            core = rng.uniform(0.1, 0.45) * np.exp(-((rho / 0.55) ** 2))
            ring = -rng.uniform(0.15, 0.35) * np.exp(-(((rho - 0.85) / 0.15) ** 2))
            halo = rng.uniform(0.03, 0.12) * np.exp(-(((rho - 1.15) / 0.12) ** 2))
            cell_value = rng.uniform(-0.05, 0.05) + core + ring
        else:
            nucleus = Blob.random(
                rng,
                cell.blob.cy + rng.normal(0, 0.15 * cell.blob.radius),
                cell.blob.cx + rng.normal(0, 0.15 * cell.blob.radius),
                cell.blob.radius * rng.uniform(0.3, 0.45),
                roughness=0.05,
                aspect=rng.uniform(1.0, 1.4),
            )
            nrho = nucleus.rho(win)
            nuc = rng.uniform(-0.08, 0.03) * (nrho < 1.0) - 0.05 * np.exp(-(((nrho - 1.0) / 0.15) ** 2))
            ring = -rng.uniform(0.04, 0.16) * np.exp(-(((rho - 0.95) / 0.08) ** 2))
            halo = rng.uniform(0.0, 0.1) * np.exp(-(((rho - 1.12) / 0.1) ** 2))
            cell_value = -rng.uniform(0.01, 0.08) + nuc + ring
            texture[win][inside] = rng.uniform(0.02, 0.06)
        delta[win] = np.where(inside, cell_value, delta[win] + halo + np.minimum(ring, 0) * (rho < 1.1))
        if cell.dead:
            texture[win][inside] = 0.0
        inst[win][inside] = i + 1
    return delta, texture, inst


def _debris(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    """Unlabelled clutter: specks, small dead-cell look-alikes, fibres and out-of-focus ghosts."""
    shape = (size, size)
    out = np.zeros(shape)
    for _ in range(int(rng.integers(3, 30))):
        lookalike = rng.random() < 0.3
        r = max(0.6, (rng.uniform(2.0, 3.5) if lookalike else rng.uniform(0.7, 3.0)) * s)
        blob = Blob.random(rng, *rng.uniform(0, size, 2), r, roughness=0.05 if lookalike else 0.3)
        win = blob.window(shape, scale=1.3)
        if win is None:
            continue
        rho = blob.rho(win)
        if lookalike:
            value = rng.uniform(0.1, 0.3) * np.exp(-((rho / 0.55) ** 2)) - rng.uniform(0.1, 0.25) * np.exp(
                -(((rho - 0.9) / 0.2) ** 2)
            )
        else:
            value = rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.3) * (rho < 1.0)
        out[win] += value
    curves = [
        bezier(p0, p0 + rng.normal(0, 0.15 * size, 2), p0 + rng.normal(0, 0.3 * size, 2))
        for p0 in rng.uniform(0, size, (int(rng.integers(0, 3)), 2))
    ]
    out -= rng.uniform(0.03, 0.1) * draw_curves(shape, curves, [1.0] * len(curves))
    ghosts = np.zeros(shape)
    for _ in range(int(rng.integers(0, 4))):
        blob = Blob.random(rng, *rng.uniform(0, size, 2), rng.uniform(6, 16) * s, roughness=0.15)
        win = blob.window(shape)
        if win is not None:
            ghosts[win] += rng.uniform(-0.06, 0.06) * (blob.rho(win) < 1.0)
    return out + ndimage.gaussian_filter(ghosts, max(1.0, 4.0 * s))


def _masks(size: int, s: float, cells: list[_Cell], inst: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 0/255 masks: alive, dead, and a position disc per cell inside its region."""
    dead_ids = np.array([i + 1 for i, c in enumerate(cells) if c.dead], dtype=np.int32)
    dead = np.isin(inst, dead_ids)
    alive = (inst > 0) & ~dead
    position = np.zeros((size, size), dtype=bool)
    centres = np.array([(c.blob.cy, c.blob.cx) for c in cells]).reshape(-1, 2)
    for i, (cy, cx) in enumerate(centres):
        others = np.delete(centres, i, axis=0)
        r = position_radius(float(np.min(np.hypot(*(others - (cy, cx)).T))) if len(others) else np.inf, s)
        y0, y1 = max(0, int(np.floor(cy - r))), min(size, int(np.ceil(cy + r)) + 1)
        x0, x1 = max(0, int(np.floor(cx - r))), min(size, int(np.ceil(cx + r)) + 1)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        position[y0:y1, x0:x1] |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2) & (inst[y0:y1, x0:x1] == i + 1)
    return (np.stack([alive, dead, position], axis=-1) * 255).astype(np.uint8)


def hela_like_sample(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One HeLa-like brightfield image and its masks.

    Args:
        size: side of the square image in pixels (cell sizes are set for 256 and scale with it).
        rng: the random generator of this image.

    Returns:
        ``(image, mask)``: ``image`` is ``(size, size)`` uint8 grayscale; ``mask`` is ``(size, size, 3)``
        uint8 0/255 with channels (alive, dead, position).
    """
    s = size / 256.0
    shape = (size, size)
    cells = _place_cells(rng, size, s)
    delta, texture, inst = _render_cells(rng, size, s, cells)
    delta = delta + texture * smooth_noise(rng, shape, max(1.0, 1.5 * s)) + _debris(rng, size, s)
    background = (
        rng.uniform(0.45, 0.6)
        + 0.05 * smooth_noise(rng, shape, size / 2)
        + 0.02 * smooth_noise(rng, shape, size / 10)
    )
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    gy, gx = rng.normal(0, 0.1, 2)
    illumination = 1.0 + gy * yy + gx * xx + rng.uniform(0.03, 0.12) * smooth_noise(rng, shape, size / 1.5)
    image = (background + rng.uniform(0.7, 1.3) * delta) * illumination
    blur = rng.uniform(0.4, 1.2) * s
    if blur > 0.3:
        image = ndimage.gaussian_filter(image, blur)
    image = image + rng.uniform(0.01, 0.04) * rng.standard_normal(shape)
    image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return image, _masks(size, s, cells, inst)
