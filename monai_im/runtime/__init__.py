"""How networks run: precision and memory format, distribution over processes, threads, inferers, progress.

Imports only the package's base modules (:mod:`monai_im.io`, :mod:`monai_im.utils`, :mod:`monai_im.constants`),
MONAI and torch: every other wing may use it, it uses none of them.
"""

from __future__ import annotations

from monai_im.runtime.acceleration import PRECISIONS, RunSettings, cpu_supports_bf16, reuse_freed_cpu_memory
from monai_im.runtime.concurrency import prefetch, run_concurrently, student_dataset
from monai_im.runtime.distributed import DistributedContext
from monai_im.runtime.epoch_progress import EpochProgressBar
from monai_im.runtime.inferers import AdaptiveInferer, ensemble_predict
from monai_im.runtime.progress import progress_bar, progress_mode

__all__ = [
    "PRECISIONS",
    "RunSettings",
    "cpu_supports_bf16",
    "reuse_freed_cpu_memory",
    "prefetch",
    "run_concurrently",
    "student_dataset",
    "DistributedContext",
    "EpochProgressBar",
    "AdaptiveInferer",
    "ensemble_predict",
    "progress_bar",
    "progress_mode",
]
