"""The preflight's rules across files: image/label geometry, the foreground rule, dataset-wide warnings.

Each rule takes the :class:`~monai_im.data.file_facts.FileFacts` the preflight decoded and returns its
findings as one-line messages; :class:`monai_im.data.DatasetCheck` collects them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monai_im.data.file_facts import MAX_VALUES, FileFacts

__all__ = [
    "DIRECTION_TOLERANCE",
    "ORIGIN_TOLERANCE",
    "SPACING_TOLERANCE",
    "dataset_warnings",
    "foreground_rule_problems",
    "geometry_difference",
]

#: Relative difference of voxel spacings accepted between an image and its label (0.1 %).
SPACING_TOLERANCE = 1e-3
#: Difference of the axis direction cosines accepted.
DIRECTION_TOLERANCE = 1e-3
#: Distance of the origins accepted, as a fraction of the image's smallest voxel size (1 %).
ORIGIN_TOLERANCE = 1e-2
#: 16-bit images whose values all lie below this are probably 12-bit data.
TWELVE_BIT_LIMIT = 4096
_SIXTEEN_BIT = [0.0, 65535.0]


def fmt(v: float) -> str:
    """A number as short as it reads: ``3`` for 3.0, 4 significant digits otherwise."""
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def _vector(values: Sequence[float]) -> str:
    return "(" + ", ".join(fmt(round(float(v), 3)) for v in values) + ")"


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(str(c) for c in nib.orientations.aff2axcodes(affine))


def geometry_difference(
    label_affine: Sequence[Sequence[float]], image_affine: Sequence[Sequence[float]]
) -> str | None:
    """How a label's geometry differs from its image's (spacing, axis directions, origin), or None.

    Tolerances: :data:`SPACING_TOLERANCE` (relative), :data:`DIRECTION_TOLERANCE` (direction cosines),
    :data:`ORIGIN_TOLERANCE` (of the image's smallest voxel size).

    Args:
        label_affine: the label's 4 x 4 affine (as read, RAS).
        image_affine: the image's 4 x 4 affine.
    """
    lab, img = np.asarray(label_affine, dtype=np.float64), np.asarray(image_affine, dtype=np.float64)
    rank = min(lab.shape[0], img.shape[0]) - 1
    lab, img = lab[: rank + 1, : rank + 1], img[: rank + 1, : rank + 1]
    s_lab, s_img = np.linalg.norm(lab[:rank, :rank], axis=0), np.linalg.norm(img[:rank, :rank], axis=0)
    found = []
    if np.any(np.abs(s_lab - s_img) > SPACING_TOLERANCE * np.maximum(s_img, 1e-12)):
        found.append(f"spacing {_vector(s_lab)} vs {_vector(s_img)} mm")
    d_lab = lab[:rank, :rank] / np.maximum(s_lab, 1e-12)
    d_img = img[:rank, :rank] / np.maximum(s_img, 1e-12)
    turn = float(np.abs(d_lab - d_img).max())
    if turn > DIRECTION_TOLERANCE:
        codes = (_axcodes(lab), _axcodes(img)) if rank == 3 else ("", "")
        found.append(
            f"orientation {codes[0]} vs {codes[1]}"
            if codes[0] != codes[1]
            else f"axis directions differ by up to {turn:.3g}"
        )
    o_lab, o_img = lab[:rank, rank], img[:rank, rank]
    if float(np.abs(o_lab - o_img).max()) > ORIGIN_TOLERANCE * float(s_img.min()):
        found.append(f"origin {_vector(o_lab)} vs {_vector(o_img)} mm")
    return "; ".join(found) if found else None


def foreground_rule_problems(mode: str, label_threshold: float, masks: Sequence[FileFacts]) -> list[str]:
    """A foreground rule under which every labeled/validation mask is empty (or every one full).

    Binary and multi-label masks: every mask empty under ``label > label_threshold`` (0/1 masks read
    with a 0/255 threshold), or every mask all foreground (a 1/2 encoding with threshold 0). Class maps
    (multi-class, 2D or 3D): every map holding only class 0. A single empty mask is fine.

    Args:
        mode: "binary", "multilabel" or "multiclass".
        label_threshold: the foreground rule of binary and multi-label masks.
        masks: the facts of the labeled and validation masks.
    """
    if not masks:
        return []
    values = sorted({v for m in masks for v in m.values})
    shown = ", ".join(fmt(v) for v in values[:MAX_VALUES])
    if mode == "multiclass":
        if all(m.maximum <= 0 for m in masks):
            return [
                f"every labeled and validation class map holds only background (class 0; values found: "
                f"{{{shown}}}): nothing would be learnt; check that the label files hold the classes "
                "1..num_classes-1 and that the datalist names the right files"
            ]
        return []
    t = label_threshold
    if all(m.maximum <= t for m in masks):
        return [
            f"every labeled and validation mask is empty under the foreground rule label > {fmt(t)} "
            f"(mask values found: {{{shown}}}); set label_threshold below the foreground value"
        ]
    if all(m.minimum > t for m in masks):
        return [
            f"every labeled and validation mask is all foreground under the rule label > {fmt(t)} "
            f"(mask values found: {{{shown}}}); set label_threshold to the background value"
        ]
    return []


def dataset_warnings(images: Mapping[str, FileFacts], intensity_range: Any) -> list[str]:
    """Warnings about the images (not problems: training runs): CMYK files, 12-bit data in 16-bit files.

    Args:
        images: the facts of every decoded image, by path.
        intensity_range: the scaling rule of training (``None``: by the stored type).
    """
    found = []
    cmyk = sorted(p for p, f in images.items() if f.stored_mode == "CMYK")
    if cmyk:
        found.append(
            f"{len(cmyk)} CMYK image(s), the first {cmyk[0]}: read as RGB by PIL's conversion, without a "
            "colour profile (colours may differ from a colour-managed viewer); save them as RGB for exact "
            "colours"
        )
    sixteen = [f for f in images.values() if f.value_range == _SIXTEEN_BIT and not f.error]
    if intensity_range is None and sixteen and all(f.maximum < TWELVE_BIT_LIMIT for f in sixteen):
        top = max(f.maximum for f in sixteen)
        found.append(
            f"all {len(sixteen)} 16-bit image(s) hold values below {TWELVE_BIT_LIMIT} (largest {fmt(top)}): "
            f"12-bit data? intensity_range null scales them by 0..65535, so they use at most "
            f"{top / 65535:.1%} of [0, 1]; set intensity_range to [0, 4095] (or [0, {fmt(top)}])"
        )
    return found
