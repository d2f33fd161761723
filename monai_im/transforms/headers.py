"""Reading what an image or volume file declares, without its pixel data, and bounding its size.

:func:`read_header` reads a file's header only (nibabel for NIfTI, SimpleITK's ``ReadImageInformation``
for NRRD / MHA / MHD / DICOM, PIL's lazy ``open`` for PNG / JPEG / BMP / TIFF), so that
:func:`header_size_problem` refuses a small corrupt file declaring billions of voxels before any array is
allocated. PIL's own decompression-bomb refusal (images over about 179 million pixels) is lifted while
opening: :data:`MAX_VOXELS` bounds sizes instead, so that a 30000 x 30000 scan is read, not refused as
corrupt.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.config import PathLike

__all__ = [
    "FileHeader",
    "IMAGE_2D_SUFFIXES",
    "MAX_VOXELS",
    "NIFTI_SUFFIXES",
    "SIMPLEITK_SUFFIXES",
    "declared_size_problem",
    "header_size_problem",
    "open_2d",
    "read_header",
]

SIMPLEITK_SUFFIXES: tuple[str, ...] = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: NIfTI file name endings (read by MONAI's ``NibabelReader``).
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: 2D image file name endings read by :class:`Image2DReader`.
IMAGE_2D_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Largest number of values (voxels times channels) a file's header may declare: 2**31, 8 GiB as float32.
MAX_VOXELS = 2**31
#: The metadata :class:`VolumeReader` keeps (``LoadImage`` adds ``filename_or_obj``): every format alike.

_PIL_GUARD = threading.Lock()


@contextmanager
def _pil_size_guard_lifted() -> Any:
    """PIL's decompression-bomb refusal off while an image is opened: :data:`MAX_VOXELS` bounds sizes here.

    PIL refuses images over ``2 * Image.MAX_IMAGE_PIXELS`` (about 179 million pixels) on opening; a
    30000 x 30000 scan is real data. The module-wide setting is changed under a lock and restored.
    """
    from PIL import Image

    with _PIL_GUARD:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def open_2d(path: PathLike, **kwargs: Any) -> Any:
    """``PIL.Image.open`` (lazy: the header only) without PIL's size refusal.

    Args:
        path: the image file.
        kwargs: ``Image.open`` arguments.
    """
    from PIL import Image

    with _pil_size_guard_lifted():
        return Image.open(path, **kwargs)


@dataclass(frozen=True)
class FileHeader:
    """What a file's header declares, read without its pixel data.

    Args:
        shape: the spatial sizes as stored (``(width, height)`` of 2D images, ``(x, y, z)`` of volumes).
        channels: values per pixel (colour bands, vector components, NIfTI dimensions beyond the third).
        mode: the PIL mode of a 2D image (``"RGB"``, ``"LA"``, ``"CMYK"``, ``"I;16"``...), None otherwise.
    """

    shape: tuple[int, ...]
    channels: int = 1
    mode: str | None = None

    @property
    def num_values(self) -> int:
        """Values the file holds: the product of the sizes and the channels."""
        return int(np.prod([int(s) for s in self.shape], dtype=object)) * int(self.channels)

    def describe(self) -> str:
        """``"2000x2000x2000"`` (with ``" x 3 channels"`` when there are several)."""
        size = "x".join(str(int(s)) for s in self.shape)
        return size + (f" x {self.channels} channels" if self.channels > 1 else "")


def read_header(path: PathLike) -> FileHeader | None:
    """The header of an image or volume file, without reading its pixel data; None for other names.

    NIfTI through nibabel (``header.get_data_shape()``), NRRD / MHA / MHD / DICOM files through
    SimpleITK's ``ReadImageInformation``, PNG / JPEG / BMP / TIFF through PIL's lazy ``open``.

    Args:
        path: the file.

    Raises:
        Exception: whatever the library raises for a header it cannot read.
    """
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        shape = tuple(int(s) for s in nib.load(str(path)).header.get_data_shape())
        return FileHeader(shape[:3], int(np.prod(shape[3:], dtype=object)) if len(shape) > 3 else 1)
    if name.endswith(SIMPLEITK_SUFFIXES) and Path(path).is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return FileHeader(tuple(int(s) for s in reader.GetSize()), int(reader.GetNumberOfComponents()))
    if name.endswith(IMAGE_2D_SUFFIXES):
        with open_2d(path) as im:
            return FileHeader(tuple(im.size), len(im.getbands()), im.mode)
    return None


def header_size_problem(header: FileHeader, max_voxels: int = MAX_VOXELS) -> str | None:
    """Why a file with ``header`` is refused for its declared size (one line without the path), or None.

    Args:
        header: the file's header (:func:`read_header`).
        max_voxels: the largest number of values (voxels times channels) accepted.
    """
    if header.num_values <= max_voxels:
        return None
    return (
        f"its header declares {header.describe()} ({header.num_values:.3g} values), more than "
        f"max_voxels = {max_voxels}; if the file really is that large raise max_voxels, otherwise the "
        "file is corrupt: replace it"
    )


def declared_size_problem(path: PathLike, max_voxels: int = MAX_VOXELS) -> str | None:
    """Why ``path`` is refused for the size its header declares (one line without the path), or None.

    Only the header is read, so that a small corrupt file declaring billions of voxels is refused before
    anything is allocated. A header that cannot be read gives None: decoding the file reports it.

    Args:
        path: the file.
        max_voxels: the largest number of values (voxels times channels) accepted.
    """
    try:
        header = read_header(path)
    except Exception:  # an unreadable header is reported by the decoder, with its own reason
        return None
    return None if header is None else header_size_problem(header, int(max_voxels))
