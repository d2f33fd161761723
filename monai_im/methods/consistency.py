"""Consistency Loss: fine-tune the best model so far with a consistency term on unlabeled images.

Generation 0 is labeled-only training. Every later generation's students start from the best
model of the previous generation and train with their own step
(:class:`monai_im.methods.steps.ConsistencyIteration`): the supervised loss on a labeled batch plus
``weight`` times the mean squared difference between the predictions of two random photometric views of
an unlabeled batch (IM_METHOD section 4; the paper trains 100 epochs). No pseudo-labels are written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from monai_im.methods.base import Method
from monai_im.methods.context import StudentContext

__all__ = ["ConsistencyLoss", "step_seed"]


def step_seed(seed: int) -> int:
    """The seed of a student's consistency step (its views and unlabeled order): the student's seed
    below ``2**31``."""
    return int(seed) % 2**31


class ConsistencyLoss(Method):
    """Consistency Loss: the best model so far, fine-tuned with a consistency term on unlabeled images.

    Args:
        mode: "binary", "multiclass" or "multilabel" (sigmoid or softmax predictions are compared).
        consistency_weight: weight of the consistency term.
        view_brightness: range of the random brightness change of a view (+-).
        view_contrast: range of the random contrast change of a view (+-).
        view_noise: standard deviation of the Gaussian noise of a view.
    """

    name = "consistency_loss"
    runs_generations = True

    def __init__(
        self,
        mode: str = "binary",
        consistency_weight: float = 1.0,
        view_brightness: float = 0.2,
        view_contrast: float = 0.2,
        view_noise: float = 0.05,
    ) -> None:
        super().__init__(mode=mode)
        values = (consistency_weight, view_brightness, view_contrast, view_noise)
        if min(float(v) for v in values) < 0:
            raise ValueError(f"consistency_weight and the view_* ranges must be >= 0, got {values}")
        self.weight = float(consistency_weight)
        self.brightness = float(view_brightness)
        self.contrast = float(view_contrast)
        self.noise = float(view_noise)

    def teacher_count(self, num_teachers: int) -> int:  # noqa: D102
        return 1

    def initial_weights(self, generation: int, teachers: Sequence[Any]) -> Any:  # noqa: D102
        return teachers[0] if generation > 0 and teachers else None

    def iteration(self, context: StudentContext) -> Callable | None:  # noqa: D102
        if context.generation <= 0:
            return None
        from monai_im.methods.steps import ConsistencyIteration, photometric_views

        seed = step_seed(context.seed)
        views = photometric_views(
            torch.Generator().manual_seed(seed),
            brightness=self.brightness,
            contrast=self.contrast,
            noise=self.noise,
        )
        return ConsistencyIteration(
            context.unlabeled_loader(seed),
            views=views,
            weight=self.weight,
            activation="softmax" if self.mode == "multiclass" else "sigmoid",
            seed=seed,
        )

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "method": self.name,
            "mode": self.mode,
            "consistency_weight": self.weight,
            "view_brightness": self.brightness,
            "view_contrast": self.contrast,
            "view_noise": self.noise,
        }
