"""HeLa-like synthetic brightfield images: alive and dead cells with (alive, dead, position) masks.

Alive cells are large, flattened, irregular and textured, slightly darker than the background
with a dark rim and a faint bright halo; dead cells are small, round and compact with a bright
core and a thick dark ring. Cells often touch. Debris (some of it round and bright like a small
dead cell), out-of-focus ghosts, fibres, uneven illumination, noise and defocus make the task
non-trivial. Cell sizes are given for 256 x 256 images and scale with the image size.

With ``families=True`` every image also belongs to one of a few acquisition families (:data:`FAMILIES`,
drawn with unequal frequencies, from common to rare): brightfield, phase contrast (dark cells in bright
halos), trypan-blue staining (dead cells dark instead of bright), dark field (inverted contrast),
confluent cultures, spindle-shaped or rounded granular cell lines, and faint images full of debris.
Flips, rotations, brightness, contrast, blur and noise cannot turn one family into another. The families
are imaged at twice the classic magnification (:data:`FAMILY_ZOOM`): at 64 x 64 a dead cell is 5-9 px
across instead of 2-4, so that the rim where teachers disagree does not cover whole cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_im.datasets.drawing import Blob, bezier, draw_curves, draw_weighted, smooth_noise

__all__ = ["FAMILIES", "FAMILY_ZOOM", "Family", "hela_like_sample", "position_radius"]


@dataclass(frozen=True)
class Family:
    """An acquisition family of HeLa-like images (a cell line, a stain and a microscope setting).

    Attributes:
        name: a short name.
        weight: relative frequency of the family in a dataset.
        density: multiplier of the number of cells in the field of view.
        touching: probability that a new cell is placed next to an earlier one.
        shape: alive cell shape, ``"classic"``, ``"spindle"`` (long and thin) or ``"round"``.
        contrast: multiplier of every cell's and every speck's intensity offset.
        halo: brightness of the phase-contrast halo around every cell (0: the faint classic halo).
        dead: look of dead cells, ``"bright"`` (bright core in a dark ring) or ``"stained"`` (dark, as
            with trypan blue).
        texture: multiplier of the granular texture of alive cells.
        debris: multiplier of the number of specks and dead-cell look-alikes.
        inverted: dark-field contrast (the image is inverted: cells and rims light on a dark background).
    """

    name: str
    weight: float
    density: float = 1.0
    touching: float = 0.4
    shape: str = "classic"
    contrast: float = 1.0
    halo: float = 0.0
    dead: str = "bright"
    texture: float = 1.0
    debris: float = 1.0
    inverted: bool = False


#: The families of ``hela_like_sample(..., families=True)``, from common to rare.
FAMILIES = (
    Family("brightfield", 0.30),
    Family("phase-contrast", 0.18, halo=0.25, contrast=1.4),
    Family("trypan-blue", 0.13, dead="stained"),
    Family("confluent", 0.10, density=2.2, touching=0.85, contrast=0.8),
    Family("spindle", 0.09, shape="spindle", texture=1.5),
    Family("dark-field", 0.08, inverted=True, halo=0.1),
    Family("faint-debris", 0.07, contrast=0.55, debris=4.0),
    Family("round-granular", 0.05, shape="round", texture=3.0, dead="stained"),
)
CLASSIC = Family("classic", 1.0)
#: Magnification of the families relative to the classic images (cells this much larger in pixels,
#: the field of view this much smaller on each side).
FAMILY_ZOOM = 2.0
#: Cells per field of view of the families relative to the classic images (before ``Family.density``):
#: a zoomed field would otherwise hold a quarter of the cells.
FAMILY_DENSITY = 2.0


def draw_family(rng: np.random.Generator) -> Family:
    """One of :data:`FAMILIES`, drawn with their weights."""
    return draw_weighted(rng, FAMILIES)


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


#: (roughness range, aspect range) of alive cells per shape family.
_SHAPES = {
    "classic": ((0.1, 0.3), (1.0, 2.2)),
    "spindle": ((0.05, 0.15), (2.8, 4.5)),
    "round": ((0.04, 0.1), (1.0, 1.25)),
}


def _new_cell(
    rng: np.random.Generator, dead: bool, cy: float, cx: float, s: float, shape: str = "classic"
) -> _Cell:
    if dead:
        r = max(1.5, rng.uniform(5.0, 9.0) * s)
        blob = Blob.random(rng, cy, cx, r, roughness=0.04, harmonics=4, aspect=rng.uniform(1.0, 1.2))
    else:
        r = max(2.5, rng.uniform(9.0, 18.0) * s)
        roughness, aspect = _SHAPES[shape]
        blob = Blob.random(
            rng, cy, cx, r, roughness=rng.uniform(*roughness), harmonics=7, aspect=rng.uniform(*aspect)
        )
    return _Cell(blob, dead)


def _place_cells(
    rng: np.random.Generator, size: int, s: float, family: Family = CLASSIC, density: float = 1.0
) -> list[_Cell]:
    """Alive cells first, then dead ones; often next to an earlier cell so that they touch.

    No cell covers the centre of another (where its position disc goes), and overlaps stay small.
    ``density`` scales the classic 3-19 alive and 0-9 dead cells per image.
    """
    alive = int(rng.integers(max(1, round(3 * density)), max(2, round(20 * density))))
    kinds = [False] * alive + [True] * int(rng.integers(0, max(1, round(10 * density))))
    cells: list[_Cell] = []
    for dead in kinds:
        for _ in range(30):
            if cells and rng.random() < family.touching:
                other = cells[rng.integers(len(cells))].blob
                angle = rng.uniform(0, 2 * np.pi)
                d = (other.radius + (7.0 if dead else 13.0) * s) * rng.uniform(0.8, 1.1)
                cy, cx = other.cy + d * np.sin(angle), other.cx + d * np.cos(angle)
            else:
                cy, cx = rng.uniform(0, size - 1, 2)
            if not (0 <= cy <= size - 1 and 0 <= cx <= size - 1):
                continue
            cell = _new_cell(rng, dead, cy, cx, s, family.shape)
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
    rng: np.random.Generator, size: int, s: float, cells: list[_Cell], family: Family = CLASSIC
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intensity offsets ``(H, W)``, texture amplitude ``(H, W)`` and instance map (0 = none, i + 1 = cell i)."""
    delta = np.zeros((size, size))
    texture = np.zeros((size, size))
    inst = np.zeros((size, size), dtype=np.int32)
    for i, cell in enumerate(cells):
        win = cell.blob.window((size, size), scale=1.4, pad=2.0)
        rho = cell.blob.rho(win)
        inside = rho < 1.0
        if cell.dead and family.dead == "stained":  # the dye fills the whole dead cell: dark, no bright core
            ring = -rng.uniform(0.05, 0.15) * np.exp(-(((rho - 0.9) / 0.15) ** 2))
            halo = rng.uniform(0.03, 0.12) * np.exp(-(((rho - 1.15) / 0.12) ** 2))
            cell_value = -rng.uniform(0.2, 0.4) * (1.0 - 0.3 * rho**2) + ring
        elif cell.dead:
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
            texture[win][inside] = rng.uniform(0.02, 0.06) * family.texture
        if family.halo:  # phase contrast: a bright halo around every cell, a darker cell body
            halo = halo + family.halo * rng.uniform(0.7, 1.3) * np.exp(-(((rho - 1.15) / 0.15) ** 2))
            cell_value = cell_value - (0.0 if cell.dead else 0.5 * family.halo)
        cell_value, halo = family.contrast * cell_value, family.contrast * halo
        delta[win] = np.where(inside, cell_value, delta[win] + halo + np.minimum(ring, 0) * (rho < 1.1))
        if cell.dead:
            texture[win][inside] = 0.0
        inst[win][inside] = i + 1
    return delta, texture, inst


def _debris(rng: np.random.Generator, size: int, s: float, amount: float = 1.0) -> np.ndarray:
    """Unlabelled clutter: specks, small dead-cell look-alikes, fibres and out-of-focus ghosts."""
    shape = (size, size)
    out = np.zeros(shape)
    for _ in range(int(rng.integers(3, 30) * amount)):
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


def hela_like_sample(
    size: int, rng: np.random.Generator, families: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One HeLa-like brightfield image and its masks.

    Args:
        size: side of the square image in pixels (cell sizes are set for 256 and scale with it).
        rng: the random generator of this image.
        families: draw the image's acquisition family first (:data:`FAMILIES`, imaged at
            :data:`FAMILY_ZOOM` times the classic magnification); ``False`` gives the classic images.

    Returns:
        ``(image, mask)``: ``image`` is ``(size, size)`` uint8 grayscale; ``mask`` is ``(size, size, 3)``
        uint8 0/255 with channels (alive, dead, position).
    """
    family = draw_family(rng) if families else CLASSIC
    zoom, density = (
        (FAMILY_ZOOM, FAMILY_DENSITY * family.density / FAMILY_ZOOM**2) if families else (1.0, 1.0)
    )
    s = zoom * size / 256.0
    shape = (size, size)
    cells = _place_cells(rng, size, s, family, density)
    delta, texture, inst = _render_cells(rng, size, s, cells, family)
    delta = delta + texture * smooth_noise(rng, shape, max(1.0, 1.5 * s))
    delta = delta + family.contrast * _debris(rng, size, s, family.debris)
    background = (
        rng.uniform(0.45, 0.6)
        + 0.05 * smooth_noise(rng, shape, size / 2)
        + 0.02 * smooth_noise(rng, shape, size / 10)
    )
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    gy, gx = rng.normal(0, 0.1, 2)
    illumination = 1.0 + gy * yy + gx * xx + rng.uniform(0.03, 0.12) * smooth_noise(rng, shape, size / 1.5)
    image = (background + rng.uniform(0.7, 1.3) * delta) * illumination
    if family.inverted:  # dark field: what scatters light (rims, halos, debris) is light on black
        image = 0.15 + 2.0 * np.abs(image - background * illumination)
    blur = rng.uniform(0.4, 1.2) * s
    if blur > 0.3:
        image = ndimage.gaussian_filter(image, blur)
    image = image + rng.uniform(0.01, 0.04) * rng.standard_normal(shape)
    image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return image, _masks(size, s, cells, inst)
