"""The grid of a volume's pseudo-label files: that of its source image.

The teachers label a volume on the grid the preprocessing made of it (reoriented, resampled to the
training spacing). Its pseudo-label and IM are written back on the source image's own grid (its shape and
affine), through MONAI's ``Invertd`` of that preprocessing with nearest-neighbour interpolation, as the
FLARE bundle's inference writes its masks: a pseudo-label file opens as a segmentation of its source image
(ITK-SNAP, 3D Slicer), and the next generation's training transforms read it like a ground-truth label,
resampling image and label together from their files.

Images (2D) have no such metadata in the batch and are written as the teachers saw them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd

from monai_im.selftrain.pseudo_files import batch_affines

__all__ = ["SourceGrid", "batch_volumes"]

logger = logging.getLogger("monai_im")

_KEY = "written"  # the key of an array being inverted, beside the volume's own "image"


def batch_volumes(images: Any) -> list[MetaTensor] | None:
    """The volumes of a collated batch, each with its metadata (affine, the transforms applied to it), or
    None for a batch without metadata (2D chains drop it)."""
    if batch_affines(images) is None:
        return None
    return list(decollate_batch(images, detach=True))


class SourceGrid:
    """Maps arrays on a preprocessed volume's grid onto its source image's grid.

    Args:
        transform: the dictionary transforms that made the volumes (key ``image``), as given to the
            pseudo-labeler; a copy of it is inverted (the reading thread goes on using the original).
    """

    def __init__(self, transform: Callable) -> None:
        self._transform = transform
        self._inverters: dict[bool, Invertd] = {}
        self._failed = False

    def _inverter(self, nearest: bool) -> Invertd:
        if not self._inverters:
            own = copy.deepcopy(self._transform)
            for mode in (True, False):
                self._inverters[mode] = Invertd(
                    keys=_KEY, transform=own, orig_keys="image", nearest_interp=mode, to_tensor=True
                )
        return self._inverters[nearest]

    def __call__(
        self, volume: MetaTensor, arrays: Sequence[np.ndarray], nearest: bool = True
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """``arrays`` (each ``(C, *spatial)`` on the grid of ``volume``) on the source image's grid, and
        that grid's affine.

        Args:
            volume: one preprocessed volume of the batch (:func:`batch_volumes`).
            arrays: label maps, masks or images on its grid.
            nearest: nearest-neighbour interpolation (labels and masks); False: the transforms' own modes.

        A volume whose preprocessing changed no geometry is already on its source grid. When the
        preprocessing cannot be inverted, the arrays stay on the preprocessed grid with its affine (where
        they align in world coordinates), with one warning per pass.
        """
        affine = np.asarray(volume.affine, dtype=np.float64)
        if not volume.applied_operations or self._failed:
            return list(arrays), affine
        out, source_affine = [], affine
        try:
            for array in arrays:
                data = {"image": volume, _KEY: MetaTensor(torch.as_tensor(array))}
                inverted = self._inverter(nearest)(data)[_KEY]
                out.append(inverted.numpy())
                source_affine = np.asarray(inverted.affine, dtype=np.float64)
        except (RuntimeError, ValueError, KeyError, TypeError, NotImplementedError) as error:
            self._failed = True
            logger.warning(
                f"the pseudo-labelling transforms cannot be inverted ({type(error).__name__}: {error}); "
                "volumes' pseudo-labels are written on the preprocessed grid instead of their source images'"
            )
            return list(arrays), affine
        return out, source_affine
