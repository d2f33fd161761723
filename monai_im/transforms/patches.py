"""Patches of volumes for training: class-balanced where the label has classes, uniform where it has none
(used by :func:`monai_im.transforms.presets.volume_patch_transforms`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.transforms import RandCropByLabelClassesd, RandSpatialCropSamplesd
from monai.transforms.transform import MapTransform, Randomizable

__all__ = ["ClassBalancedPatchesd"]


class ClassBalancedPatchesd(Randomizable, MapTransform):
    """``RandCropByLabelClassesd`` patches, or uniformly placed ones where the label holds no class.

    A pseudo-labeled volume whose voxels are all inside the IM (ignored by the loss) has no class to
    centre a patch on, and MONAI's class-balanced crop cannot draw from it; such an item gets
    ``RandSpatialCropSamplesd`` patches instead (it then only adds its ignored voxels: no gradient).

    Args:
        keys: the keys cropped together (image and label).
        label_key: the class map (``(1, *spatial)``, class indices; other values are ignored voxels).
        spatial_size: the patch size.
        num_classes: classes of the label map, background included.
        num_samples: patches per item.
        ratios: sampling weight per class (None = equal).
    """

    def __init__(
        self,
        keys: Sequence[str],
        label_key: str,
        spatial_size: Sequence[int],
        num_classes: int,
        num_samples: int,
        ratios: Sequence[float] | None = None,
    ) -> None:
        MapTransform.__init__(self, keys)
        self.label_key, self.num_classes = label_key, int(num_classes)
        self.by_class = RandCropByLabelClassesd(
            keys=list(keys),
            label_key=label_key,
            spatial_size=tuple(spatial_size),
            num_classes=self.num_classes,
            ratios=list(ratios) if ratios is not None else None,
            num_samples=int(num_samples),
            warn=False,
        )
        self.uniform = RandSpatialCropSamplesd(
            keys=list(keys), roi_size=tuple(spatial_size), num_samples=int(num_samples), random_size=False
        )

    def set_random_state(self, seed: int | None = None, state: Any = None) -> ClassBalancedPatchesd:  # noqa: D102
        super().set_random_state(seed, state)
        self.by_class.set_random_state(seed, state)
        self.uniform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:  # noqa: D102
        pass

    def __call__(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``num_samples`` patches of the item (a list of dicts)."""
        label = data[self.label_key]
        has_class = bool(((label >= 0) & (label < self.num_classes)).any())
        return self.by_class(data) if has_class else self.uniform(data)
