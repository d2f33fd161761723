"""The image readers of the pipeline: volumes (NIfTI, NRRD, MHA/MHD, DICOM) and 2D images (PIL).

:class:`VolumeReader` reads every volume format and returns one metadata layout whatever the format
(:data:`VOLUME_META_KEYS`, numeric values only), so that NIfTI, NRRD and MHA items collate in one batch.
:class:`Image2DReader` reads PNG, JPEG, BMP and TIFF, without PIL's decompression-bomb refusal of large
images (:data:`MAX_VOXELS` bounds the size instead), turning grey+alpha into grey and CMYK into RGB.
File headers and their size bound are in :mod:`monai_im.transforms.headers` (re-exported here).

MONAI's ``ITKReader`` needs the ``itk`` package; :class:`SimpleITKReader` gives the same arrays and
metadata from SimpleITK: the array in MONAI's ``(x, y, z)`` axis order (vector pixels as the last axis),
``affine`` / ``original_affine`` built from ITK's direction, spacing and origin (LPS), turned into RAS
by default so that it matches ``NibabelReader`` on the same volume. NIfTI files are left to
``NibabelReader``: :meth:`SimpleITKReader.read` refuses them, and ``LoadImage`` then tries its default
readers.

Example::

    LoadImaged(keys="image", reader=SimpleITKReader(), ensure_channel_first=True, image_only=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.config import DtypeLike, PathLike
from monai.data import ImageReader, PILReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images
from monai.data.utils import orientation_ras_lps
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from monai_im.transforms.headers import (
    IMAGE_2D_SUFFIXES,
    MAX_VOXELS,
    NIFTI_SUFFIXES,
    SIMPLEITK_SUFFIXES,
    FileHeader,
    declared_size_problem,
    header_size_problem,
    open_2d,
    read_header,
)

__all__ = [
    "FileHeader",
    "IMAGE_2D_SUFFIXES",
    "Image2DReader",
    "MAX_VOXELS",
    "NIFTI_SUFFIXES",
    "SIMPLEITK_SUFFIXES",
    "SimpleITKReader",
    "VOLUME_META_KEYS",
    "VolumeReader",
    "declared_size_problem",
    "header_size_problem",
    "read_header",
    "volume_meta",
]

#: The metadata :class:`VolumeReader` keeps (``LoadImage`` adds ``filename_or_obj``): every format alike.
VOLUME_META_KEYS: tuple[str, ...] = (
    MetaKeys.AFFINE,
    MetaKeys.ORIGINAL_AFFINE,
    MetaKeys.SPATIAL_SHAPE,
    MetaKeys.SPACE,
    MetaKeys.ORIGINAL_CHANNEL_DIM,
    "spacing",
)


class SimpleITKReader(ImageReader):
    """Load NRRD, MHA/MHD, DICOM files and DICOM series folders with SimpleITK, the way MONAI's readers do.

    A sequence of files is stacked into channels (MONAI's convention); a directory is read as the DICOM
    series it holds.

    Args:
        channel_dim: the channel dimension of the stored image (``original_channel_dim`` in the metadata,
            read by ``EnsureChannelFirst``). None: ``"no_channel"`` for scalar images, -1 for vector pixels
            (and for images of more than 3 dimensions).
        series_id: the DICOM series to read from a folder holding several (its Series Instance UID);
            None reads the only series there and refuses a folder with several.
        affine_lps_to_ras: convert ITK's LPS affine to RAS (as ``ITKReader``; consistent with
            ``NibabelReader``); False keeps LPS. ``meta["space"]`` says which.
        dtype: the array's data type; None keeps the stored type.
    """

    def __init__(
        self,
        channel_dim: str | int | None = None,
        series_id: str | None = None,
        affine_lps_to_ras: bool = True,
        dtype: DtypeLike | None = None,
    ) -> None:
        super().__init__()
        self.channel_dim = float("nan") if channel_dim == "no_channel" else channel_dim
        self.series_id = series_id
        self.affine_lps_to_ras = affine_lps_to_ras
        self.dtype = dtype

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every name is a NRRD, MHA/MHD or DICOM file or a directory; False for NIfTI and 2D formats.

        Args:
            filename: a file name or a sequence of file names.
        """
        return all(
            Path(n).is_dir() or str(n).lower().endswith(SIMPLEITK_SUFFIXES) for n in ensure_tuple(filename)
        )

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> sitk.Image | list[sitk.Image]:
        """Read one image, or several to stack as channels in :meth:`get_data`.

        Args:
            data: a file name, a DICOM series folder, or a sequence of them.
            kwargs: unused (the ``ImageReader`` interface).

        Raises:
            ValueError: a name this reader does not take (NIfTI, 2D formats), so that ``LoadImage`` tries
                its other readers; or a folder with several DICOM series and no ``series_id``.
            FileNotFoundError: a missing file, or a folder without a DICOM series.
        """
        names = ensure_tuple(data)
        images = [self._read_one(Path(name)) for name in names]
        return images if len(names) > 1 else images[0]

    def _read_one(self, path: Path) -> sitk.Image:
        if not self.verify_suffix(path):
            raise ValueError(
                f"{path}: not a format of SimpleITKReader (one of {', '.join(SIMPLEITK_SUFFIXES)})"
            )
        if path.is_dir():
            return self._read_series(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        try:
            return sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise RuntimeError(
                f"{path}: SimpleITK cannot read it: {str(err).strip().splitlines()[-1]}"
            ) from err

    def _read_series(self, folder: Path) -> sitk.Image:
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
        if not ids:
            raise FileNotFoundError(f"{folder}: no DICOM series in this folder")
        if self.series_id is None and len(ids) > 1:
            raise ValueError(
                f"{folder}: holds {len(ids)} DICOM series ({', '.join(ids)}); choose one with series_id"
            )
        series_id = ids[0] if self.series_id is None else self.series_id
        if series_id not in ids:
            raise ValueError(f"{folder}: no DICOM series {series_id!r} (found {', '.join(ids)})")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id))
        return reader.Execute()

    def get_data(self, img: sitk.Image | Sequence[sitk.Image]) -> tuple[np.ndarray, dict]:
        """The array (MONAI's ``(x, y, z[, c])`` order) and metadata of one image, or of several stacked.

        The metadata holds the image's non-ITK header fields, ``spacing``, ``affine`` and
        ``original_affine`` (direction * spacing and origin; RAS when ``affine_lps_to_ras``), ``space``,
        ``spatial_shape`` and ``original_channel_dim``. Several images (same affine and shape) are stacked
        into a new first channel axis (scalar images) or concatenated along their channel axis.

        Args:
            img: a SimpleITK image or a sequence of them (from :meth:`read`).
        """
        arrays: list[np.ndarray] = []
        meta: dict = {}
        for image in [img] if isinstance(img, sitk.Image) else img:
            array = sitk.GetArrayFromImage(image)  # (z, y, x[, c])
            array = array.T if image.GetNumberOfComponentsPerPixel() == 1 else np.moveaxis(array.T, 0, -1)
            if self.dtype is not None:
                array = array.astype(self.dtype, copy=False)
            arrays.append(array)
            header = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if not k.startswith("ITK_")}
            header["spacing"] = np.asarray(image.GetSpacing())
            header[MetaKeys.ORIGINAL_AFFINE] = self._get_affine(image)
            header[MetaKeys.AFFINE] = header[MetaKeys.ORIGINAL_AFFINE].copy()
            header[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
            header[MetaKeys.SPATIAL_SHAPE] = self._get_spatial_shape(image)
            if self.channel_dim is None:
                scalar = array.ndim == len(header[MetaKeys.SPATIAL_SHAPE])
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan") if scalar else -1
            else:
                header[MetaKeys.ORIGINAL_CHANNEL_DIM] = self.channel_dim
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta

    def _get_affine(self, image: sitk.Image) -> np.ndarray:
        rank = min(image.GetDimension(), 3)
        direction = np.asarray(image.GetDirection()).reshape(image.GetDimension(), -1)
        affine = np.eye(rank + 1)
        affine[:rank, :rank] = direction[:rank, :rank] @ np.diag(np.asarray(image.GetSpacing())[:rank])
        affine[:rank, -1] = np.asarray(image.GetOrigin())[:rank]
        return orientation_ras_lps(affine) if self.affine_lps_to_ras else affine

    def _get_spatial_shape(self, image: sitk.Image) -> np.ndarray:
        size = list(image.GetSize())
        if isinstance(self.channel_dim, int) and image.GetNumberOfComponentsPerPixel() == 1:
            size.pop(self.channel_dim)
        return np.asarray(size[: min(image.GetDimension(), 3)])


class VolumeReader(ImageReader):
    """One reader for every volume format: NIfTI through MONAI's ``NibabelReader``, NRRD, MHA/MHD and
    DICOM (files or series folders) through :class:`SimpleITKReader`.

    Given to ``LoadImage(d)(reader=VolumeReader())`` it reads what either reads, picked by the file name,
    without the failed attempts (and their log lines) of a reader that refuses a format.

    The metadata is the same for every format: only :data:`VOLUME_META_KEYS`, with numeric values
    (``affine`` and ``original_affine`` float64 ``4 x 4``, ``spatial_shape`` int64, ``spacing`` float64
    from the file's own affine) and ``space``. The format's own header fields (NIfTI's ``pixdim``,
    ``descrip``..., NRRD's ``NRRD_space``, MHA's ``Modality``, NIfTI fields copied into an MHA by the
    tool that converted it) are left out: they differ between formats, some are strings, and a batch
    mixing such items cannot be collated.

    Args:
        kwargs: passed to :class:`SimpleITKReader` (``series_id``, ``affine_lps_to_ras``, ``dtype``...).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        from monai.data import NibabelReader

        self.nifti = NibabelReader()
        self.itk = SimpleITKReader(**kwargs)

    def _reader(self, data: Sequence[PathLike] | PathLike) -> ImageReader:
        names = [str(d) for d in ensure_tuple(data)]
        if all(n.lower().endswith(NIFTI_SUFFIXES) for n in names):
            return self.nifti
        return self.itk

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:  # noqa: D102
        return self.nifti.verify_suffix(filename) or self.itk.verify_suffix(filename)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> tuple[ImageReader, Any]:  # noqa: D102
        reader = self._reader(data)
        return reader, reader.read(data, **kwargs)

    def get_data(self, img: tuple[ImageReader, Any]) -> tuple[np.ndarray, dict]:  # noqa: D102
        reader, image = img
        array, meta = reader.get_data(image)
        return array, volume_meta(meta)


def volume_meta(meta: dict) -> dict:
    """The metadata of :data:`VOLUME_META_KEYS` from a reader's ``meta``, numeric (see :class:`VolumeReader`).

    Args:
        meta: the metadata a reader's ``get_data`` returned (with ``affine`` and ``spatial_shape``).
    """
    affine = np.asarray(meta[MetaKeys.AFFINE], dtype=np.float64)
    original = np.asarray(meta.get(MetaKeys.ORIGINAL_AFFINE, affine), dtype=np.float64)
    channel_dim = meta.get(MetaKeys.ORIGINAL_CHANNEL_DIM, float("nan"))
    return {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: original,
        MetaKeys.SPATIAL_SHAPE: np.asarray(meta[MetaKeys.SPATIAL_SHAPE], dtype=np.int64),
        MetaKeys.SPACE: meta.get(MetaKeys.SPACE, SpaceKeys.RAS),
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if channel_dim == "no_channel" else channel_dim,
        "spacing": np.sqrt((original[:-1, :-1] ** 2).sum(axis=0)),
    }


def _convert_mode(img: Any) -> Any:
    """Grey+alpha (``LA``, ``La``) becomes grey, dropping the alpha as RGBA images do; CMYK becomes RGB."""
    target = {"LA": "L", "La": "L", "CMYK": "RGB"}.get(img.mode)
    if target is None:
        return img
    out = img.convert(target)
    out.format = img.format  # the metadata of a converted image keeps its file's format
    img.close()
    return out


class Image2DReader(PILReader):
    """MONAI's ``PILReader`` for 2D datasets: also TIFF (8/16-bit and float), large images, LA and CMYK.

    - PNG, JPEG, BMP and TIFF files are taken (:data:`IMAGE_2D_SUFFIXES`);
    - PIL's decompression-bomb refusal of images over about 179 million pixels is not applied; instead
      a file whose header declares more than ``max_voxels`` values is refused, naming its size;
    - grey+alpha images (mode ``LA``) are read as grey, their alpha dropped (as RGBA images become RGB);
      CMYK images (print JPEGs) are converted to RGB by PIL (``convert("RGB")``, without a colour
      profile) instead of being read as four channels.

    Args:
        max_voxels: the largest number of values (pixels times channels) of an image.
        kwargs: passed to ``PILReader`` (``converter``, ``reverse_indexing``, ``Image.open`` arguments).
    """

    def __init__(self, max_voxels: int = MAX_VOXELS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_voxels = int(max_voxels)

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:  # noqa: D102
        return all(str(n).lower().endswith(IMAGE_2D_SUFFIXES) for n in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Open one image, or several to stack as channels (``PILReader.read``), converted as stated above.

        Args:
            data: a file name or a sequence of them.
            kwargs: ``Image.open`` arguments.

        Raises:
            ValueError: an image whose header declares more than ``max_voxels`` values.
        """
        names = ensure_tuple(data)
        images = [self._read_one(name, {**self.kwargs, **kwargs}) for name in names]
        return images if len(names) > 1 else images[0]

    def _read_one(self, name: PathLike, kwargs: dict) -> Any:
        img = open_2d(name, **kwargs)
        problem = header_size_problem(
            FileHeader(tuple(img.size), len(img.getbands()), img.mode), self.max_voxels
        )
        if problem is not None:
            img.close()
            raise ValueError(f"{name}: {problem}")
        img = _convert_mode(img)
        return self.converter(img) if callable(self.converter) else img
