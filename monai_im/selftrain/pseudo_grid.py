"""The grid of a volume's pseudo-label files: that of its source image.

The teachers label a volume on the grid the preprocessing made of it (reoriented, resampled to the
training spacing). Its pseudo-label and IM are written back on the source image's own grid (the shape and
affine the reader found in its file, which MONAI keeps in the volume's metadata as ``spatial_shape`` and
``original_affine``), resampled through scanner coordinates with nearest-neighbour interpolation: what the
``Invertd`` of the FLARE bundle's inference does to its masks, without inverting the transforms
themselves, which the reading thread goes on using. A pseudo-label file then opens as a segmentation of its
source image (ITK-SNAP, 3D Slicer), and the next generation's training transforms read it like a
ground-truth label, resampling image and label together from their files.

Images (2D) have no such metadata in the batch and are written as the teachers saw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import SpatialResample
from monai.utils import convert_to_tensor

from monai_im.selftrain.pseudo_files import batch_affines

__all__ = ["SourceGrid", "batch_volumes"]


def batch_volumes(images: Any) -> list[MetaTensor] | None:
    """The volumes of a collated batch, each with its metadata (affine, the transforms applied to it), or
    None for a batch without metadata (2D chains drop it)."""
    if batch_affines(images) is None:
        return None
    return list(decollate_batch(images, detach=True))


class SourceGrid:
    """Maps arrays on a preprocessed volume's grid onto its source image's grid (used by one thread)."""

    def __init__(self) -> None:
        self._nearest = SpatialResample(mode="nearest", padding_mode="zeros")
        self._linear = SpatialResample(mode="bilinear", padding_mode="zeros")

    @staticmethod
    def source_of(volume: MetaTensor) -> tuple[np.ndarray, tuple[int, ...]] | None:
        """The affine and spatial shape of the file ``volume`` was read from, or None when its metadata
        does not say."""
        affine, shape = volume.meta.get("original_affine"), volume.meta.get("spatial_shape")
        if affine is None or shape is None:
            return None
        affine = np.asarray(convert_to_tensor(affine, track_meta=False).cpu(), dtype=np.float64)
        shape = tuple(int(v) for v in np.asarray(convert_to_tensor(shape, track_meta=False).cpu()).ravel())
        if affine.shape != (4, 4) or len(shape) != 3:
            return None
        return affine, shape

    def __call__(
        self, volume: MetaTensor, arrays: Sequence[np.ndarray], nearest: bool = True, outside: float = 0.0
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """``arrays`` (each ``(C, *spatial)`` on the grid of ``volume``) on the source image's grid, and
        that grid's affine; where the source's grid is unknown, the arrays as they are with their grid's.

        Args:
            volume: one preprocessed volume of the batch (:func:`batch_volumes`).
            arrays: label maps, masks or images on its grid.
            nearest: nearest-neighbour interpolation (labels and masks); False: linear (images).
            outside: the value of source voxels the preprocessed volume does not reach (a cropping
                preprocessing, the rim of a resampled one): 0 for labels, 1 for an IM (voxels no teacher
                saw are left out like those they disagree on).
        """
        affine = np.asarray(volume.affine, dtype=np.float64)
        source = self.source_of(volume)
        if source is None:
            return list(arrays), affine
        source_affine, shape = source
        if shape == tuple(volume.shape[1:]) and np.allclose(affine, source_affine, atol=1e-6):
            return list(arrays), source_affine
        resample = self._nearest if nearest else self._linear
        out = []
        for array in arrays:
            moved = resample(  # zero padding: resample (outside - array) and take it back from outside
                MetaTensor(torch.as_tensor(outside - array), affine=torch.as_tensor(affine)),
                dst_affine=torch.as_tensor(source_affine),
                spatial_size=shape,
            )
            out.append(outside - np.asarray(convert_to_tensor(moved, track_meta=False), dtype=np.float32))
        return out, source_affine
