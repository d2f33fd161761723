"""Writing segmentations: :class:`SaveSegmentationd` saves predicted masks as PNG or NIfTI files, atomically.

The output file name of an input is :func:`segmentation_file_name`: the input's file name minus its last
extension (``.nii.gz`` counts as one), plus a postfix, plus ``.png`` for 2D inputs or ``.nii.gz`` for volume
inputs (NIfTI, NRRD, MHA/MHD). ``scan.v1.png`` and ``scan.v2.png`` therefore give ``scan.v1_mask.png`` and ``scan.v2_mask.png``.
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
from monai_im.transforms.headers import SIMPLEITK_SUFFIXES

__all__ = [
    "NIFTI_EXTENSIONS",
    "VOLUME_FILE_EXTENSIONS",
    "PseudoLabelFormat",
    "SaveSegmentationd",
    "segmentation_file_name",
    "split_extension",
]

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: Volume file endings: their segmentations are written as NIfTI (``.nii.gz``).
VOLUME_FILE_EXTENSIONS = NIFTI_EXTENSIONS + SIMPLEITK_SUFFIXES


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
        ext: the output extension; None picks ``.nii.gz`` for volume inputs (NIfTI, NRRD, MHA/MHD, DICOM)
            and ``.png`` otherwise.
    """
    stem, in_ext = split_extension(str(source))
    if ext is None:
        ext = ".nii.gz" if in_ext.lower() in VOLUME_FILE_EXTENSIONS else ".png"
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


def _save_nifti(
    path: Path, array: np.ndarray, affine: np.ndarray, dtype: type = np.uint8, compress_level: int = 6
) -> Path:
    """Write a ``(C, *spatial)`` array as NIfTI with ``affine``, atomically; ``.nii.gz`` is gzipped.

    uint8 (masks, class maps) is rounded and clipped to 0..255; float32 is stored as it is."""
    import nibabel as nib

    arr = np.asarray(array)
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if dtype == np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    else:
        arr = arr.astype(dtype)
    image = nib.Nifti1Image(np.ascontiguousarray(arr), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=compress_level)
    return atomic_write_bytes(path, data)


class PseudoLabelFormat:
    """How the files of a pseudo-label set are written; the training transforms read them back.

    The one place that decides the format of pseudo-labels and Inconsistency Masks:

    - images (``(C, H, W)``): 8-bit PNG. Binary and multi-label masks are multiplied by ``label_scale``
      (0/255, as datasets store masks); multi-class maps are stored as their class indices; the IM as 0/255.
    - volumes (``(C, X, Y, Z)``): uint8 NIfTI (``.nii.gz``) with the affine they are given (a study writes
      each on its source volume's grid, so that a pseudo-label opens as a segmentation of its CT in 3D
      Slicer or ITK-SNAP; see :mod:`monai_im.selftrain.pseudo_grid`), masks as 0/1, class maps as class
      indices, the IM as 0/1.

    Reading: ``LoadImaged`` picks the reader by extension; :class:`monai_im.transforms.ReadLabeld` reads
    the label like any dataset label (``> label_threshold`` for masks, class indices for multi-class) and
    the IM is ``> 0.5``. The IM itself is applied in one place only, when a pair is loaded for training
    (:class:`monai_im.transforms.ApplyInconsistencyMaskd`).

    Args:
        mode: "binary", "multilabel" or "multiclass".
        label_scale: factor from 0/1 mask values to PNG values.
        compress_level: zlib level of the files (PNG and ``.nii.gz``), 0-9; 1 is fast and lossless.
    """

    def __init__(self, mode: str = "binary", label_scale: float = 255.0, compress_level: int = 1) -> None:
        if not 0 <= int(compress_level) <= 9:
            raise ValueError(f"PseudoLabelFormat: compress_level must be 0..9, got {compress_level}")
        self.mode, self.label_scale, self.compress_level = mode, float(label_scale), int(compress_level)

    @staticmethod
    def suffix(spatial_dims: int) -> str:
        """The file extension of a pseudo-label of ``spatial_dims`` dimensions."""
        if spatial_dims not in (2, 3):
            raise ValueError(
                f"PseudoLabelFormat: 2D or 3D data expected, got {spatial_dims} spatial dimensions"
            )
        return ".png" if spatial_dims == 2 else ".nii.gz"

    def path(self, folder: str | os.PathLike, name: str, spatial_dims: int) -> Path:
        """``<folder>/<name><suffix>``."""
        return Path(folder) / f"{name}{self.suffix(spatial_dims)}"

    def _write(self, path: Path, array: np.ndarray, scale: float, affine: np.ndarray | None) -> Path:
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3:
            return save_png(path, array * scale, compress_level=self.compress_level)
        return _save_nifti(
            path, array, np.eye(4) if affine is None else affine, compress_level=self.compress_level
        )

    def write_label(
        self, path: str | os.PathLike, label: np.ndarray, affine: np.ndarray | None = None
    ) -> Path:
        """Write a pseudo-label ``(C, *spatial)`` (0/1 masks or class indices) to ``path``."""
        scale = 1.0 if self.mode == "multiclass" or np.ndim(label) == 4 else self.label_scale
        return self._write(Path(path), label, scale, affine)

    def write_im(self, path: str | os.PathLike, im: np.ndarray, affine: np.ndarray | None = None) -> Path:
        """Write an Inconsistency Mask ``(1, *spatial)`` (0/1) to ``path``."""
        return self._write(Path(path), im, 255.0 if np.ndim(im) == 3 else 1.0, affine)

    def write_image(
        self,
        path: str | os.PathLike,
        image: np.ndarray,
        affine: np.ndarray | None = None,
        scale: float = 255.0,
    ) -> Path:
        """Write a (masked) preprocessed image for looking at: 8-bit PNG (``* scale``) or float32 NIfTI."""
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 3:
            return save_png(Path(path), array * scale, compress_level=self.compress_level)
        affine = np.eye(4) if affine is None else affine
        return _save_nifti(Path(path), array, affine, dtype=np.float32, compress_level=self.compress_level)


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
