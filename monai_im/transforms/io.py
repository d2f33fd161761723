"""Writing segmentations: :class:`SaveSegmentationd` saves predicted masks as PNG files, atomically."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from monai_im.io import save_png

__all__ = ["SaveSegmentationd"]


class SaveSegmentationd(MapTransform):
    """Save each item's segmentation as ``<output_dir>/<input stem><output_postfix>.png``.

    The file name comes from the MetaTensor's ``filename_or_obj`` (the input image's path), so
    run it after ``Invertd`` has given the prediction the input's metadata and size. One channel
    is written as a grayscale PNG and three channels (e.g. alive, dead, position) as RGB; 0/1
    masks are scaled to 0/255. Files are written atomically, and an output that would overwrite
    the input image is refused.

    Args:
        keys: the prediction key(s).
        output_dir: the folder for the masks (created if missing).
        output_postfix: appended to the input file's stem.
        scale: factor from mask values to PNG values.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "./masks",
        output_postfix: str = "_mask",
        scale: float = 255.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.scale = scale

    def output_path(self, source: str | os.PathLike) -> Path:
        path = self.output_dir / f"{Path(str(source)).name.split('.')[0]}{self.output_postfix}.png"
        if path.resolve() == Path(str(source)).resolve():
            raise ValueError(f"refusing to overwrite the input image {source} with its segmentation")
        return path

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            meta = getattr(pred, "meta", {}) or {}
            source = meta.get("filename_or_obj")
            if not source:
                raise ValueError(
                    f"SaveSegmentationd: '{key}' carries no filename_or_obj to name its output file"
                )
            arr = convert_to_numpy(pred).astype(np.float32) * self.scale
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_png(self.output_path(source), arr)
        return d
