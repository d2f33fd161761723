"""Datalists, splits and synthetic demo datasets."""

from __future__ import annotations

from monai_im.data.datalist import (
    DATALIST_KEYS,
    IMAGE_EXTENSIONS,
    DatasetNotFoundError,
    list_images,
    load_datalist,
    split_labeled,
    write_datalist,
)
from monai_im.data.flare_like import (
    FLARE22_LABELS,
    ensure_flare_like_dataset,
    flare_like_sample,
    make_flare_like_dataset,
)
from monai_im.data.hela_like import hela_like_sample, position_radius
from monai_im.data.inference_plan import (
    VOLUME_EXTENSIONS,
    InferenceInputError,
    decode_error,
    plan_inference,
    plan_inference_or_exit,
)
from monai_im.data.isic_like import isic_like_sample
from monai_im.data.preflight import DatasetCheck, DatasetCheckError, load_checked_datalist, read_facts
from monai_im.data.synthetic import (
    DEMO_KINDS,
    DemoKind,
    ensure_demo_dataset,
    make_demo_dataset,
    make_hela_like_dataset,
    make_isic_like_dataset,
)

__all__ = [
    "FLARE22_LABELS",
    "ensure_flare_like_dataset",
    "flare_like_sample",
    "make_flare_like_dataset",
    "DATALIST_KEYS",
    "DatasetNotFoundError",
    "IMAGE_EXTENSIONS",
    "list_images",
    "load_datalist",
    "split_labeled",
    "write_datalist",
    "DatasetCheck",
    "DatasetCheckError",
    "load_checked_datalist",
    "read_facts",
    "DEMO_KINDS",
    "DemoKind",
    "ensure_demo_dataset",
    "make_demo_dataset",
    "make_hela_like_dataset",
    "make_isic_like_dataset",
    "isic_like_sample",
    "hela_like_sample",
    "position_radius",
    "InferenceInputError",
    "VOLUME_EXTENSIONS",
    "decode_error",
    "plan_inference",
    "plan_inference_or_exit",
]
