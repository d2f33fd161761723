"""ISIC-like synthetic dermoscopy images: one skin lesion per image and its binary mask.

The images imitate what makes ISIC 2018 Task 1 hard: lesions of every size, irregular shapes,
fuzzy borders and contrasts from strong to faint; internal structure (pigment network, dots);
and distractors that are not lesions: freckles and dark skin patches, hairs crossing the image,
uneven lighting, gel bubbles and the dark circular corners of a dermoscope.

With ``families=True`` every image also belongs to one of a few acquisition families (:data:`FAMILIES`,
drawn with unequal frequencies, from common to rare): a dermoscope's colour cast, a skin type, a lesion
palette (pigmented, pink amelanotic or light hypopigmented), the number of freckles, a texture and a
shape family (compact, lobed, elongated, with satellites). Flips, rotations, brightness, contrast,
blur and noise cannot turn one family into another, so a few labeled images cover the rare families
thinly, as on real multi-centre data, while the unlabeled ones cover them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from monai_im.datasets.drawing import Blob, bezier, draw_curves, draw_weighted, sigmoid, smooth_noise

__all__ = ["FAMILIES", "Family", "isic_like_sample"]

#: Skin tones (RGB in [0, 1]) from light to medium-dark.
SKIN_TONES = (
    np.array([[238, 200, 180], [226, 178, 150], [208, 156, 122], [184, 130, 98], [150, 102, 74]]) / 255.0
)
#: Lesion colours: light brown, brown, dark brown, near black, blue-grey, reddish.
LESION_COLOURS = (
    np.array([[176, 124, 92], [134, 84, 58], [92, 58, 42], [58, 42, 38], [104, 100, 122], [158, 96, 96]])
    / 255.0
)


#: Pink and red lesion colours of amelanotic lesions (little pigment, mostly vessels).
PINK_COLOURS = np.array([[214, 132, 130], [196, 110, 118], [226, 156, 146]]) / 255.0
#: Whitish colours of hypopigmented lesions and regression areas (lighter than the skin around them).
LIGHT_COLOURS = np.array([[240, 222, 212], [232, 214, 206], [246, 232, 222]]) / 255.0
PALETTES = {"pigmented": LESION_COLOURS, "pink": PINK_COLOURS, "light": LIGHT_COLOURS}


@dataclass(frozen=True)
class Family:
    """An acquisition family of ISIC-like images.

    Attributes:
        name: a short name.
        weight: relative frequency of the family in a dataset.
        cast: 3 x 3 colour matrix applied to every RGB pixel (the dermoscope's white balance).
        skin: range of skin-tone positions in :data:`SKIN_TONES` (0 light .. 4 medium-dark).
        palette: lesion colours, a key of :data:`PALETTES`: ``"pigmented"``, ``"pink"`` (amelanotic)
            or ``"light"`` (hypopigmented, lighter than the skin).
        shape: ``"classic"``, ``"compact"``, ``"lobed"``, ``"elongated"`` or ``"satellites"``.
        texture: ``"classic"``, ``"homogeneous"`` (no network or dots) or ``"globules"`` (many dots).
        hairs: hair density multiplier (0: none).
        freckles: multiplier of the number of freckles (dark pigment that is not the lesion).
    """

    name: str
    weight: float
    cast: tuple[tuple[float, float, float], ...] = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    skin: tuple[float, float] = (0.0, 4.0)
    palette: str = "pigmented"
    shape: str = "classic"
    texture: str = "classic"
    hairs: float = 1.0
    freckles: float = 1.0


#: The families of ``isic_like_sample(..., families=True)``, from common to rare.
FAMILIES = (
    Family("standard", 0.34),
    Family(
        "polarised-blue",
        0.18,
        cast=((0.80, 0.05, 0.05), (0.02, 0.92, 0.10), (0.10, 0.18, 1.12)),
        shape="lobed",
        texture="homogeneous",
    ),
    Family(
        "amelanotic",
        0.12,
        cast=((1.05, 0.0, 0.0), (0.0, 0.95, 0.0), (0.0, 0.0, 0.92)),
        skin=(0.0, 2.0),
        palette="pink",
        shape="compact",
        texture="homogeneous",
        hairs=0.3,
    ),
    Family(
        "green-hairy",
        0.10,
        cast=((0.85, 0.12, 0.0), (0.05, 1.05, 0.05), (0.0, 0.10, 0.80)),
        shape="elongated",
        hairs=3.0,
    ),
    Family(
        "dark-skin",
        0.08,
        cast=((1.0, 0.05, 0.0), (0.0, 0.95, 0.0), (0.0, 0.0, 0.85)),
        skin=(3.0, 4.0),
        shape="satellites",
        texture="globules",
    ),
    Family(
        "grey-faded",
        0.07,
        cast=((0.55, 0.35, 0.10), (0.30, 0.60, 0.10), (0.30, 0.35, 0.35)),
        shape="lobed",
        texture="globules",
        hairs=0.5,
    ),
    Family(
        "hypopigmented",
        0.06,
        cast=((1.0, 0.0, 0.0), (0.02, 0.96, 0.0), (0.0, 0.04, 0.9)),
        skin=(2.0, 4.0),
        palette="light",
        texture="homogeneous",
        freckles=4.0,
    ),
    Family(
        "vascular-freckled",
        0.05,
        cast=((0.95, 0.0, 0.08), (0.0, 0.9, 0.1), (0.04, 0.0, 1.05)),
        skin=(0.0, 1.5),
        palette="pink",
        shape="lobed",
        freckles=5.0,
    ),
)
CLASSIC = Family("classic", 1.0)


def _composite(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend ``colour`` (``(3,)`` or ``(H, W, 3)``) over ``image`` with coverage ``alpha`` ``(H, W)``."""
    a = alpha[..., None]
    return image * (1.0 - a) + colour * a


def _skin(rng: np.random.Generator, size: int, tones: tuple[float, float] = (0.0, 4.0)) -> np.ndarray:
    """Skin: a tone with smooth low-frequency colour variation, reddish blotches and fine pores."""
    i = rng.uniform(*tones)
    lo = int(np.floor(i))
    base = SKIN_TONES[lo] * (1 - (i - lo)) + SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] * (i - lo)
    shape = (size, size)
    colour = 0.02 * np.moveaxis(smooth_noise(rng, shape, size / rng.uniform(2, 5), channels=3), 0, -1)
    brightness = rng.uniform(0.02, 0.06) * smooth_noise(rng, shape, size / rng.uniform(4, 10))
    redness = rng.uniform(0.0, 0.035) * np.clip(smooth_noise(rng, shape, size / 12), 0, None)
    pores = rng.uniform(0.005, 0.02) * smooth_noise(rng, shape, max(1.0, 1.5 * size / 256))
    skin = base + colour + (brightness + pores)[..., None]
    skin[..., 1:] -= redness[..., None]
    return skin


def _soft_blob(
    rng: np.random.Generator, size: int, cy: float, cx: float, radius: float, roughness: float, blur: float
) -> np.ndarray:
    """Blurred full-size coverage of a random blob (freckles, patches, globules)."""
    blob = Blob.random(rng, cy, cx, radius, roughness=roughness, aspect=rng.uniform(1.0, 1.8))
    out = np.zeros((size, size))
    win = blob.window(out.shape, pad=3 * blur + 2)
    if win is not None:
        out[win] = (blob.rho(win) < 1.0).astype(np.float64)
    return ndimage.gaussian_filter(out, blur) if blur > 0.3 else out


def _distractors(rng: np.random.Generator, size: int, skin: np.ndarray, freckles: float = 1.0) -> np.ndarray:
    """Freckles and large faint dark patches: pigment that is not a lesion."""
    for _ in range(rng.poisson(freckles * rng.uniform(0.5, 6.0))):
        alpha = _soft_blob(
            rng, size, *rng.uniform(0, size, 2), size * rng.uniform(0.008, 0.035), 0.2, size * 0.004
        )
        skin = _composite(skin, LESION_COLOURS[rng.integers(0, 3)], rng.uniform(0.2, 0.6) * alpha)
    if rng.random() < 0.35:
        alpha = _soft_blob(
            rng, size, *rng.uniform(0, size, 2), size * rng.uniform(0.1, 0.3), 0.3, size * 0.04
        )
        skin = _composite(skin, LESION_COLOURS[rng.integers(0, 2)], rng.uniform(0.1, 0.25) * alpha)
    return skin


#: (roughness range, harmonics, aspect range) of each lesion shape family
_SHAPES = {
    "classic": ((0.05, 0.35), 8, (1.0, 1.7)),
    "compact": ((0.02, 0.08), 4, (1.0, 1.25)),
    "lobed": ((0.6, 1.0), 4, (1.0, 1.4)),
    "elongated": ((0.05, 0.25), 6, (2.2, 3.5)),
    "satellites": ((0.05, 0.25), 6, (1.0, 1.5)),
}


def _lesion(rng: np.random.Generator, size: int, shape: str = "classic") -> tuple[Blob, np.ndarray]:
    """The lesion shape and its radial field (< 1 inside); sizes log-uniform from small to large, sometimes
    at the border. ``"satellites"`` adds a few small separate blobs next to the main one."""
    roughness, harmonics, aspect = _SHAPES[shape]
    radius = size * float(np.exp(rng.uniform(np.log(0.06), np.log(0.42))))
    if rng.random() < 0.12:  # pushed towards a border, often touching it
        edge = rng.integers(0, 4)
        along, across = rng.uniform(0.2, 0.8) * size, rng.uniform(0.0, 0.15) * size + 0.6 * radius
        cy, cx = [(across, along), (size - across, along), (along, across), (along, size - across)][edge]
    else:
        cy, cx = size / 2 + rng.normal(0, 0.1 * size, 2)
    blob = Blob.random(
        rng,
        cy,
        cx,
        radius,
        roughness=rng.uniform(*roughness),
        harmonics=harmonics,
        aspect=rng.uniform(*aspect),
        max_total=0.8 if shape == "lobed" else 0.6,
    )
    rho = blob.rho((slice(0, size), slice(0, size)))
    if shape == "satellites":
        yy, xx = np.meshgrid(
            np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij"
        )
        for _ in range(int(rng.integers(2, 6))):
            angle, gap = rng.uniform(0, 2 * np.pi), rng.uniform(1.2, 1.8) * radius
            sat = Blob.random(
                rng,
                cy + gap * np.sin(angle),
                cx + gap * np.cos(angle),
                max(1.5, radius * rng.uniform(0.12, 0.3)),
                roughness=0.1,
                harmonics=4,
            )
            rho = np.minimum(rho, sat.rho_at(yy, xx))
    # a little high-frequency wobble of the border on top of the harmonics
    rho = rho * (1.0 + rng.uniform(0.0, 0.06) * smooth_noise(rng, (size, size), max(1.0, radius / 6)))
    return blob, rho


def _lesion_appearance(
    rng: np.random.Generator, size: int, rho: np.ndarray, radius: float, family: Family = CLASSIC
) -> tuple[np.ndarray, np.ndarray]:
    """Colour ``(H, W, 3)`` and opacity ``(H, W)`` of the lesion: two-tone pigment, network, dots, fuzzy border."""
    shape = (size, size)
    inside = (rho < 1.0).astype(np.float64)
    palette = PALETTES[family.palette]
    c1, c2 = palette[rng.choice(len(palette), 2, replace=False)]
    mix = sigmoid(2.5 * smooth_noise(rng, shape, max(2.0, radius / rng.uniform(1, 3))) + rng.normal(0, 1.0))
    mix = np.clip(mix + rng.uniform(-0.5, 0.5) * (1.0 - np.clip(rho, 0, 1)), 0, 1)  # darker or lighter centre
    colour = c1 * (1 - mix[..., None]) + c2 * mix[..., None]
    network = {"classic": 0.6, "homogeneous": 0.0, "globules": 0.3}[family.texture]
    if (
        rng.random() < network
    ):  # pigment network: thin dark lines along the zero crossings of a band-pass field
        net = np.exp(-((smooth_noise(rng, shape, size * rng.uniform(0.015, 0.03)) / 0.25) ** 2))
        colour = colour * (1.0 - rng.uniform(0.15, 0.45) * net[..., None])
    dots = np.zeros(shape)
    if family.texture == "classic":
        n_dots = rng.poisson(6) if rng.random() < 0.5 else 0
    else:
        n_dots = rng.poisson(25) if family.texture == "globules" else 0
    for _ in range(n_dots):
        ys, xs = np.nonzero(rho < 0.9)
        if ys.size:
            j = rng.integers(0, ys.size)
            dots += _soft_blob(rng, size, ys[j], xs[j], max(0.8, size * rng.uniform(0.005, 0.015)), 0.1, 0.6)
    colour = colour * (1.0 - 0.5 * np.clip(dots, 0, 1)[..., None])
    # contrast from strong to faint (faint lesions are close to the skin colour)
    contrast = rng.uniform(0.25, 0.45) if rng.random() < 0.3 else rng.uniform(0.5, 0.95)
    patchy = np.clip(
        1.0 - rng.uniform(0.0, 0.4) * (0.5 + 0.5 * smooth_noise(rng, shape, max(2.0, radius / 2))), 0, 1
    )
    fuzz = size * float(np.exp(rng.uniform(np.log(0.003), np.log(0.04))))
    alpha = contrast * patchy * ndimage.gaussian_filter(inside, fuzz)
    return colour, alpha


def _hairs(rng: np.random.Generator, size: int, density: float = 1.0) -> tuple[np.ndarray, float]:
    """Coverage of dark hairs (curved lines crossing the image) and their shade."""
    n = 0 if rng.random() < 0.4 else int(round(density * rng.integers(1, 16)))
    curves, widths = [], []
    for _ in range(n):
        p0 = rng.uniform(-0.1, 1.1, 2) * size
        direction = rng.uniform(0, 2 * np.pi)
        length = size * rng.uniform(0.3, 1.3)
        p2 = p0 + length * np.array([np.sin(direction), np.cos(direction)])
        bend = rng.normal(0, 0.2) * length * np.array([np.cos(direction), -np.sin(direction)])
        curves.append(bezier(p0, (p0 + p2) / 2 + bend, p2))
        widths.append(max(1.0, rng.uniform(0.8, 2.5) * size / 256))
    return draw_curves((size, size), curves, widths), float(rng.uniform(0.05, 0.3))


def _bubbles(rng: np.random.Generator, size: int) -> np.ndarray:
    """Thin bright rings of air bubbles in the immersion gel."""
    rings = np.zeros((size, size))
    for _ in range(rng.integers(1, 5) if rng.random() < 0.2 else 0):
        blob = Blob.random(rng, *rng.uniform(0, size, 2), size * rng.uniform(0.02, 0.08), roughness=0.03)
        win = blob.window(rings.shape)
        if win is not None:
            rings[win] = np.maximum(rings[win], np.exp(-(((blob.rho(win) - 1.0) / 0.08) ** 2)))
    return rings


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multiplicative uneven lighting and, in half of the images, dermoscope vignetting (dark round corners)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    gy, gx = rng.normal(0, 0.08, 2)
    light = 1.0 + gy * yy + gx * xx + rng.uniform(0.02, 0.08) * smooth_noise(rng, (size, size), size / 2)
    if rng.random() < 0.5:
        r = np.hypot(yy - rng.normal(0, 0.05), xx - rng.normal(0, 0.05))
        light = light * sigmoid((rng.uniform(0.95, 1.35) - r) / rng.uniform(0.01, 0.06))
    return light


def draw_family(rng: np.random.Generator) -> Family:
    """One of :data:`FAMILIES`, drawn with their weights."""
    return draw_weighted(rng, FAMILIES)


def isic_like_sample(
    size: int, rng: np.random.Generator, families: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One ISIC-like image and its lesion mask.

    Args:
        size: side of the square image in pixels.
        rng: the random generator of this image.
        families: draw the image's acquisition family first (:data:`FAMILIES`); ``False`` gives the
            classic images, one family whose variety augmentation largely covers.

    Returns:
        ``(image, mask)``: ``image`` is ``(size, size, 3)`` uint8 RGB; ``mask`` is ``(size, size)``
        uint8 with 0 (skin) and 255 (lesion).
    """
    family = draw_family(rng) if families else CLASSIC
    image = _distractors(rng, size, _skin(rng, size, family.skin), family.freckles)
    blob, rho = _lesion(rng, size, family.shape)
    colour, alpha = _lesion_appearance(rng, size, rho, blob.radius, family)
    image = _composite(image, colour, alpha)
    image = image + 0.25 * _bubbles(rng, size)[..., None]
    hair, shade = _hairs(rng, size, family.hairs)
    image = _composite(image, np.array([shade, 0.8 * shade, 0.7 * shade]), rng.uniform(0.7, 1.0) * hair)
    image = image * _lighting(rng, size)[..., None]
    if family is not CLASSIC:
        image = image @ np.asarray(family.cast).T
    blur = rng.uniform(0.3, 0.9) * size / 256
    if blur > 0.3:
        image = ndimage.gaussian_filter(image, (blur, blur, 0))
    image = image + rng.uniform(0.005, 0.02) * rng.standard_normal(image.shape)
    image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    mask = np.where(rho < 1.0, 255, 0).astype(np.uint8)
    return image, mask
