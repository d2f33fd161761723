"""The public datasets' preparation (ISIC 2018, HeLa, FLARE22), safe archive handling, and the seeded
synthetic demo datasets (ISIC-like, HeLa-like, FLARE-like).

Imports :mod:`monai_im.data` (datalists), the base modules and :mod:`monai_im.runtime.progress`; the study
loop and the methods never import it.
"""

from __future__ import annotations

from monai_im.datasets.description import dataset_class_names, dataset_label, read_description
from monai_im.datasets.flare_like import (
    FLARE22_LABELS,
    ensure_flare_like_dataset,
    flare_like_sample,
    make_flare_like_dataset,
)
from monai_im.datasets.hela_like import hela_like_sample, position_radius
from monai_im.datasets.isic_like import isic_like_sample
from monai_im.datasets.synthetic import (
    DEMO_KINDS,
    DemoKind,
    dataset_variety,
    ensure_demo_dataset,
    make_demo_dataset,
    make_hela_like_dataset,
    make_isic_like_dataset,
)

__all__ = [
    "dataset_class_names",
    "dataset_label",
    "read_description",
    "FLARE22_LABELS",
    "ensure_flare_like_dataset",
    "flare_like_sample",
    "make_flare_like_dataset",
    "hela_like_sample",
    "position_radius",
    "isic_like_sample",
    "DEMO_KINDS",
    "DemoKind",
    "dataset_variety",
    "ensure_demo_dataset",
    "make_demo_dataset",
    "make_hela_like_dataset",
    "make_isic_like_dataset",
]
