"""The runtime data path: datalists and splits, the dataset preflight, and inference planning.

Imports the base modules, :mod:`monai_im.transforms` (readers) and :mod:`monai_im.runtime.progress`. The
public datasets' preparation and the synthetic generators live in :mod:`monai_im.datasets`.
"""

from __future__ import annotations

from monai_im.data.datalist import (
    DATALIST_KEYS,
    IMAGE_EXTENSIONS,
    DatasetNotFoundError,
    entry_problems,
    list_images,
    load_datalist,
    split_labeled,
    write_datalist,
)
from monai_im.data.inference_plan import (
    VOLUME_EXTENSIONS,
    InferenceInputError,
    decode_error,
    input_problem,
    plan_inference,
    plan_inference_or_exit,
)
from monai_im.data.preflight import DatasetCheck, DatasetCheckError, load_checked_datalist, read_facts

__all__ = [
    "DATALIST_KEYS",
    "DatasetNotFoundError",
    "IMAGE_EXTENSIONS",
    "entry_problems",
    "list_images",
    "load_datalist",
    "split_labeled",
    "write_datalist",
    "DatasetCheck",
    "DatasetCheckError",
    "load_checked_datalist",
    "read_facts",
    "InferenceInputError",
    "VOLUME_EXTENSIONS",
    "decode_error",
    "input_problem",
    "plan_inference",
    "plan_inference_or_exit",
]
