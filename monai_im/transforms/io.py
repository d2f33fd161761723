"""Writing segmentations: :class:`SaveSegmentationd` saves predicted masks as PNG or NIfTI files, atomically.

The output file name of an input is :func:`segmentation_file_name`: the input's file name minus its last
extension (``.nii.gz`` counts as one), plus a postfix, plus ``.png`` for 2D inputs or ``.nii.gz`` for NIfTI
inputs. ``scan.v1.png`` and ``scan.v2.png`` therefore give ``scan.v1_mask.png`` and ``scan.v2_mask.png``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from monai_im.io import atomic_write_bytes, save_png

__all__ = ["NIFTI_EXTENSIONS", "SaveSegmentationd", "segmentation_file_name", "split_extension"]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")


def split_extension(name: str) -> tuple[str, str]:
    """Split a file name into ``(stem, last extension)``; ``.nii.gz`` counts as one extension.

    Args:
        name: a file name (or path; only its last component is used).

    Example: ``"scan.v1.png"`` -> ``("scan.v1", ".png")``, ``"ct.nii.gz"`` -> ``("ct", ".nii.gz")``.
    """
    name = Path(str(name)).name
    for ext in NIFTI_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    stem, ext = os.path.splitext(name)
    return stem, ext


def segmentation_file_name(
    source: str | os.PathLike, output_postfix: str = "_mask", ext: str | None = None
) -> str:
    """The file name of the segmentation of ``source``: its name minus the last extension + postfix + ext.

    Args:
        source: the input image's path or file name.
        output_postfix: appended to the input's name without its last extension.
        ext: the output extension; None picks ``.nii.gz`` for NIfTI inputs and ``.png`` otherwise.
    """
    stem, in_ext = split_extension(str(source))
    if ext is None:
        ext = ".nii.gz" if in_ext.lower() in NIFTI_EXTENSIONS else ".png"
    return f"{stem}{output_postfix}{ext}"


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_EXTENSIONS)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file (also through links, and by name when ``a`` is missing)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a ``(C, *spatial)`` mask as NIfTI (uint8) with ``affine``, atomically; ``.nii.gz`` is gzipped."""
    import nibabel as nib

    arr = np.asarray(array)
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    image = nib.Nifti1Image(np.ascontiguousarray(arr), np.asarray(affine, dtype=np.float64))
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6)
    return atomic_write_bytes(path, data)


class SaveSegmentationd(MapTransform):
    """Save each item's segmentation as a PNG (2D) or NIfTI (3D) file, atomically.

    Where the file goes:

    - with ``output_key`` (e.g. ``"output"``), the item carries the output path, as made by
      :func:`monai_im.data.plan_inference` (which has already checked that no two inputs share an
      output, that no output is an input, and that existing outputs may be replaced);
    - otherwise ``<output_dir>/<segmentation_file_name(input)>``, the input being the MetaTensor's
      ``filename_or_obj``.

    Either way an output that is the item's own input file is refused. Run it after ``Invertd`` has given
    the prediction the input's metadata and size. A path ending in ``.png`` is written as PNG: one channel
    as grayscale and three channels (e.g. alive, dead, position) as RGB, values multiplied by ``scale``
    (0/1 masks become 0/255). A path ending in ``.nii`` or ``.nii.gz`` is written as uint8 NIfTI with the
    prediction's affine (the input's, after ``Invertd``) and the mask values unscaled; one channel is
    stored as a volume, several as the last axis.

    Args:
        keys: the prediction key(s).
        output_dir: the folder for the masks (created if missing) when ``output_key`` is None.
        output_postfix: appended to the input's name without its last extension when ``output_key`` is None.
        scale: factor from mask values to PNG values.
        output_key: the item key holding the output path; None names the file from the input.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "./masks",
        output_postfix: str = "_mask",
        scale: float = 255.0,
        output_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.scale = scale
        self.output_key = output_key

    def output_path(self, source: str | os.PathLike) -> Path:
        """``<output_dir>/<segmentation_file_name(source)>``, refused when it is ``source`` itself."""
        path = self.output_dir / segmentation_file_name(source, self.output_postfix)
        self._check_not_input(path, source)
        return path

    @staticmethod
    def _check_not_input(path: Path, source: str | os.PathLike | None) -> None:
        if source and _same_file(path, Path(str(source))):
            raise ValueError(f"refusing to overwrite the input image {source} with its segmentation")

    def _target(self, d: Mapping[Hashable, object], key: Hashable, source: object) -> Path:
        if self.output_key is None:
            if not source:
                raise ValueError(
                    f"SaveSegmentationd: '{key}' carries no filename_or_obj to name its output file"
                )
            return self.output_path(str(source))
        if self.output_key not in d:
            raise ValueError(
                f"SaveSegmentationd: the item of {source or 'an input'} has no '{self.output_key}' output path"
            )
        value = d[self.output_key]
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise ValueError(
                f"SaveSegmentationd: '{self.output_key}' of {source or 'an input'} must be a file path, "
                f"got {type(value).__name__} (is the batch decollated?)"
            )
        path = Path(value)
        self._check_not_input(path, str(source) if source else None)
        return path

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            meta = getattr(pred, "meta", {}) or {}
            path = self._target(d, key, meta.get("filename_or_obj"))
            path.parent.mkdir(parents=True, exist_ok=True)
            if _is_nifti(path):
                affine = meta.get("affine")
                if affine is None:
                    affine = meta.get("original_affine", np.eye(4))
                _save_nifti(path, convert_to_numpy(pred).astype(np.float32), convert_to_numpy(affine))
            else:
                save_png(path, convert_to_numpy(pred).astype(np.float32) * self.scale)
        return d
