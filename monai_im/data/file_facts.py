"""What decoding one file finds: :func:`read_facts` and the cached :class:`FileFacts` of the preflight.

A file is first bounded by its header (:func:`monai_im.transforms.headers.header_size_problem`: a
small corrupt file declaring billions of voxels is refused before any array is allocated), then
decoded completely with the reader training uses and described: shape, stored type, value range,
the distinct values of masks, the affine of volumes, the stored colour mode of 2D images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_im.transforms.encoding import distinct_values, image_value_range
from monai_im.transforms.readers import (
    MAX_VOXELS,
    FileHeader,
    Image2DReader,
    VolumeReader,
    header_size_problem,
    read_header,
)

__all__ = ["FACTS_VERSION", "FileFacts", "MAX_VALUES", "decode_reason", "read_facts", "reader_for"]

#: Bumped whenever :class:`FileFacts` or the way it is filled changes: older cache entries are re-read.
FACTS_VERSION = 2
#: distinct values kept per mask (enough to show what a mask holds).
MAX_VALUES = 16


@dataclass
class FileFacts:
    """What decoding one file found (cached between runs).

    ``error`` says why a file cannot be used at all: the decoder's reason, or (``size_refused``) the
    size its header declares; the other fields are then empty.
    """

    size: int
    mtime_ns: int
    error: str | None = None
    shape: list[int] = field(default_factory=list)
    dtype: str = ""
    mode: str | None = None
    value_range: list[float] | None = None  # the stored type's range; None for float data
    range_error: str | None = None
    minimum: float = 0.0
    maximum: float = 0.0
    finite: bool = True
    values: list[float] = field(default_factory=list)  # up to MAX_VALUES distinct values
    num_values: int = 0
    channels_identical: bool = True
    affine: list[list[float]] | None = None  # volumes: the 4 x 4 affine (RAS) of the file's header
    stored_mode: str | None = None  # 2D images: the PIL mode stored in the file (before LA/CMYK conversion)
    declared_values: int = 0  # values (voxels times channels) the header declares; 0 if not known
    size_refused: bool = False  # refused for declared_values alone (re-checked on every run)
    version: int = 0


def reader_for(path: str | os.PathLike, max_voxels: int = MAX_VOXELS) -> Any:
    """The reader training uses for ``path``: volumes (NIfTI, NRRD, MHA, DICOM) or 2D images."""
    volume = VolumeReader()
    is_volume = volume.verify_suffix(str(path)) or Path(path).is_dir()
    return volume if is_volume else Image2DReader(max_voxels=max_voxels)


def decode_reason(error: BaseException) -> str:
    """One line saying why a file did not decode, from whatever the decoder raised."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "cannot find a suitable reader" in reason:
        return "truncated, corrupt or of an unsupported format"
    return reason


def _header(path: str | os.PathLike) -> FileHeader | None:
    try:
        return read_header(path)
    except Exception:  # an unreadable header: decoding the file reports it, with its reason
        return None


def read_facts(path: str | os.PathLike, with_values: bool = False, max_voxels: int = MAX_VOXELS) -> FileFacts:
    """Bound ``path`` by its header, decode it completely (MONAI ``LoadImage`` with the reader training
    uses) and describe it.

    Args:
        path: the file.
        with_values: also count the distinct values and compare the channels (masks).
        max_voxels: the largest number of values (voxels times channels) its header may declare.
    """
    import torch
    from monai.transforms import LoadImage

    st = os.stat(path)
    facts = FileFacts(size=st.st_size, mtime_ns=st.st_mtime_ns, version=FACTS_VERSION)
    header = _header(path)
    if header is not None:
        facts.declared_values, facts.stored_mode = header.num_values, header.mode
        facts.error = header_size_problem(header, max_voxels)
        if facts.error is not None:
            facts.size_refused = True
            return facts
    reader = reader_for(path, max_voxels)
    try:
        img = LoadImage(image_only=True, dtype=None, ensure_channel_first=True, reader=reader)(str(path))
    except Exception as e:  # any decoder failure: truncated, not an image, unknown format
        facts.error = decode_reason(e)
        return facts
    t = img.as_tensor()
    facts.shape = [int(s) for s in t.shape]
    facts.mode = img.meta.get("mode") if isinstance(img.meta.get("mode"), str) else None
    facts.dtype = str(t.dtype).replace("torch.", "")
    if isinstance(reader, VolumeReader):
        facts.affine = [[float(v) for v in row] for row in img.affine.tolist()]
    try:
        bounds = image_value_range(img)
        facts.value_range = list(bounds) if bounds is not None else None
    except ValueError as e:
        facts.range_error = str(e).split(": ", 1)[-1]
    values = t.to(torch.uint8) if t.dtype == torch.bool else t  # integer min/max without a float copy
    if t.is_floating_point():
        facts.finite = bool(torch.isfinite(t).all())
        if not facts.finite:
            values = t[torch.isfinite(t)]
    if values.numel():
        facts.minimum, facts.maximum = float(values.min()), float(values.max())
    if with_values:
        facts.values, facts.num_values = distinct_values(t, MAX_VALUES)
        if t.shape[0] in (3, 4):
            colour = t[:3]
            facts.channels_identical = bool((colour == colour[:1]).all())
    return facts
