"""How stored files become network inputs and targets: intensity scaling rules and label encodings.

Real datasets store their images as 8-bit, 16-bit or floating-point files and their masks as 0/1,
0/255, palette or RGB files. The rules here are explicit, so that a mask is never read as empty and a
16-bit image never saturates without a word:

- :class:`ScaleImageIntensity`: ``intensity_range=None`` scales an integer image by the range of its
  stored bit depth (8-bit: 0..255, 16-bit: 0..65535, signed types by their signed range) and leaves a
  floating-point image as it is (it must already lie in [0, 1]); ``(low, high)`` maps that range to
  [0, 1] and clips; ``"minmax"`` maps each image's own minimum and maximum to 0 and 1.
- :class:`ReadLabel`: binary and multi-label masks are foreground where ``label > label_threshold``
  (default 0, so 0/1, 0/255 and 0/k masks are all read right); multi-class masks are integer class
  maps. RGB(A) copies of a one-channel mask (identical colour channels, the alpha channel ignored) are
  accepted.

Both take images loaded with ``LoadImage(dtype=None)`` (the stored type is kept); the PIL reader's
``mode`` in the metadata tells the stored bit depth even where torch widens ``uint16`` to ``int32``.
:func:`image_value_range` and :func:`label_channel_problem` are shared with the dataset preflight
(:mod:`monai_im.data.preflight`), so that what the preflight accepts is what training reads.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform
from monai.transforms.transform import Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_im.constants import IM_MODES
from monai_im.transforms.readers import Image2DReader  # noqa: F401 (re-exported; its home is readers)

__all__ = [
    "IntensityRange",
    "PIL_MODE_RANGES",
    "Image2DReader",
    "image_value_range",
    "label_channel_problem",
    "source_of",
    "ScaleImageIntensity",
    "ScaleImageIntensityd",
    "ReadLabel",
    "ReadLabeld",
    "distinct_values",
]

#: ``None`` (the stored type's range), ``(low, high)`` or ``"minmax"``.
IntensityRange = None | Sequence[float] | str

#: Value range of each PIL image mode; modes absent here (32-bit "I") need an explicit range.
PIL_MODE_RANGES: dict[str, tuple[float, float] | None] = {
    "1": (0.0, 1.0),
    "L": (0.0, 255.0),
    "LA": (0.0, 255.0),
    "P": (0.0, 255.0),
    "PA": (0.0, 255.0),
    "RGB": (0.0, 255.0),
    "RGBA": (0.0, 255.0),
    "CMYK": (0.0, 255.0),
    "YCbCr": (0.0, 255.0),
    "I;16": (0.0, 65535.0),
    "I;16L": (0.0, 65535.0),
    "I;16B": (0.0, 65535.0),
    "I;16N": (0.0, 65535.0),
    "F": None,
}

_DTYPE_RANGES: dict[torch.dtype, tuple[float, float]] = {
    torch.bool: (0.0, 1.0),
    torch.uint8: (0.0, 255.0),
    torch.int8: (-128.0, 127.0),
    torch.int16: (-32768.0, 32767.0),
}


def source_of(img: Any) -> str:
    """The file an image was read from (``filename_or_obj`` of a MetaTensor), or ``"an image"``."""
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj") or "an image")


def image_value_range(img: NdarrayOrTensor) -> tuple[float, float] | None:
    """The value range of the stored type of ``img``: ``(low, high)``, or None for floating-point data.

    The PIL ``mode`` in a MetaTensor's metadata takes precedence (a 16-bit PNG arrives as ``int32``).

    Raises:
        ValueError: a 32-bit (or wider) integer image, whose stored range says nothing about its content.
    """
    mode = (getattr(img, "meta", None) or {}).get("mode")
    if isinstance(mode, str) and mode in PIL_MODE_RANGES:
        return PIL_MODE_RANGES[mode]
    t = convert_to_tensor(img, track_meta=False)
    if t.is_floating_point():
        return None
    if t.dtype in _DTYPE_RANGES:
        return _DTYPE_RANGES[t.dtype]
    raise ValueError(
        f"{source_of(img)}: {t.dtype} image data (PIL mode {mode!r}) has no standard intensity range; "
        "set intensity_range to [low, high] or 'minmax'"
    )


def _check_range(intensity_range: IntensityRange) -> IntensityRange:
    if intensity_range is None or intensity_range == "minmax":
        return intensity_range
    if isinstance(intensity_range, str) or len(intensity_range) != 2:
        raise ValueError(f"intensity_range must be None, 'minmax' or [low, high], got {intensity_range!r}")
    low, high = (float(v) for v in intensity_range)
    if not high > low:
        raise ValueError(f"intensity_range [low, high] needs high > low, got {intensity_range!r}")
    return (low, high)


class ScaleImageIntensity(Transform):
    """Scale a channel-first image to [0, 1] by a stated rule (see the module docstring).

    Args:
        intensity_range: ``None`` (the stored type's range; floating-point images are kept as they are),
            ``(low, high)`` (mapped to 0 and 1, then clipped) or ``"minmax"`` (per image).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, intensity_range: IntensityRange = None) -> None:
        self.intensity_range = _check_range(intensity_range)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: (C, *spatial), as loaded (any dtype).

        Returns:
            float32 image of the same shape and metadata.
        """
        t = convert_to_tensor(img, track_meta=False).to(torch.float32)
        rule = self.intensity_range
        if rule == "minmax":
            low, high = float(t.min()), float(t.max())
            out = (t - low) / (high - low) if high > low else torch.zeros_like(t)
        else:
            bounds = rule if rule is not None else image_value_range(img)
            if bounds is None:  # floating-point data is taken as already scaled
                out = t
            else:
                low, high = bounds
                out = ((t - low) / (high - low)).clamp_(0.0, 1.0)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


def label_channel_problem(channels: int, mode: str, num_channels: int) -> str | None:
    """Why a mask with ``channels`` channels cannot serve a ``mode`` task with ``num_channels`` outputs.

    Returns None when it can (possibly after dropping an alpha channel or identical colour copies;
    see :class:`ReadLabel`); otherwise a short reason.
    """
    want = num_channels if mode == "multilabel" else 1
    if channels == want or (channels == 4 and want == 3):
        return None
    if want == 1 and channels in (3, 4):
        return None  # accepted when the colour channels are identical; checked on the values
    kind = {"binary": "a binary", "multiclass": "a class-index", "multilabel": f"a {want}-channel"}[mode]
    return f"has {channels} channels; {kind} mask needs {want}"


class ReadLabel(Transform):
    """Turn a stored mask into the training target of a ``mode`` task.

    - channels: an RGBA mask drops its alpha channel; an RGB(A) copy of a one-channel mask (all colour
      channels equal) becomes one channel; any other channel count that the task cannot use is a
      ``ValueError`` naming the file.
    - ``"binary"`` / ``"multilabel"``: ``(label > label_threshold)`` as 0/1 float per channel.
    - ``"multiclass"``: the integer class index map (one channel, float); values outside
      ``0..num_channels - 1`` or non-integers are a ``ValueError``.

    Args:
        mode: ``"binary"``, ``"multilabel"`` or ``"multiclass"``.
        num_channels: the network's output channels (classes for ``"multiclass"``).
        label_threshold: foreground rule of binary and multi-label masks: ``label > label_threshold``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, mode: str = "binary", num_channels: int = 1, label_threshold: float = 0.0) -> None:
        if mode not in IM_MODES:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {', '.join(IM_MODES)}.")
        self.mode = mode
        self.num_channels = int(num_channels)
        self.label_threshold = float(label_threshold)

    def _channels(self, t: torch.Tensor, source: str) -> torch.Tensor:
        problem = label_channel_problem(t.shape[0], self.mode, self.num_channels)
        if problem is not None:
            raise ValueError(f"{source}: mask {problem}")
        want = self.num_channels if self.mode == "multilabel" else 1
        if t.shape[0] == want:
            return t
        colour = t[:3] if t.shape[0] == 4 else t
        if want == 3:
            return colour
        if not bool((colour == colour[:1]).all()):
            raise ValueError(
                f"{source}: mask has {t.shape[0]} different colour channels; a {self.mode} mask needs 1"
            )
        return colour[:1]

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            label: (C, *spatial), as loaded.

        Returns:
            float32 target: (num_channels or 1, *spatial), with the input's metadata.
        """
        source = source_of(label)
        t = self._channels(convert_to_tensor(label, track_meta=False), source)
        if self.mode == "multiclass":
            tf = t.to(torch.float32)
            if (
                not bool((tf == tf.round()).all())
                or float(tf.min()) < 0
                or float(tf.max()) >= self.num_channels
            ):
                values = torch.unique(tf)[:8].tolist()
                raise ValueError(
                    f"{source}: class map values {values} are not all integers in 0..{self.num_channels - 1}"
                )
            out = tf
        else:
            out = (t > self.label_threshold).to(torch.float32)
        return convert_to_dst_type(out, label, dtype=torch.float32)[0]


class ScaleImageIntensityd(MapTransform):
    """Dictionary wrapper of :class:`ScaleImageIntensity`."""

    backend = ScaleImageIntensity.backend

    def __init__(
        self, keys: KeysCollection, intensity_range: IntensityRange = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleImageIntensity(intensity_range)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class ReadLabeld(MapTransform):
    """Dictionary wrapper of :class:`ReadLabel`."""

    backend = ReadLabel.backend

    def __init__(
        self,
        keys: KeysCollection,
        mode: str = "binary",
        num_channels: int = 1,
        label_threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = ReadLabel(mode, num_channels, label_threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.reader(d[key])
        return d


def distinct_values(t: NdarrayOrTensor, limit: int = 256) -> tuple[list[float], int]:
    """Up to ``limit`` distinct values of ``t`` (sorted) and how many distinct values it has."""
    values = np.unique(np.asarray(convert_to_tensor(t, track_meta=False).cpu()))
    return [float(v) for v in values[:limit]], int(values.size)
