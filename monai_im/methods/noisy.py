"""Noisy Student and the IM variants built on it: IM+ and AIM+ (IM_METHOD section 4).

Noisy Student trains every generation's students WIDER than the last and on noisier inputs:
the width factor grows linearly from ``width_start`` to ``width_end`` and the input noise from
``noise_start`` to ``noise_end`` over ``schedule_generations`` generations (the paper: 5), then stay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from monai_im.methods.labeled import augmented_copies
from monai_im.methods.pseudo import AugmentedInconsistencyMask, InconsistencyMask, ModelEnsemble

__all__ = ["NoisySchedule", "NoisyStudent", "IMPlus", "AIMPlus"]


class NoisySchedule:
    """The widening and noise schedule of Noisy Student, as a mixin of the methods using it.

    Args:
        width_start: width factor of generation 0 (None: the bundle network's own, e.g. its ``alpha``).
        width_end: width factor reached at ``schedule_generations`` (None: ``width_start + 1``, the
            paper's 0.5 -> 1.5 for ISIC and 1 -> 2 otherwise).
        noise_start: standard deviation of the Gaussian input noise in generation 1.
        noise_end: the noise reached at ``schedule_generations``.
        schedule_generations: generations over which width and noise grow.
    """

    def __init__(
        self,
        width_start: float | None = None,
        width_end: float | None = None,
        noise_start: float = 0.02,
        noise_end: float = 0.1,
        schedule_generations: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)  # the method this schedule is mixed into
        if int(schedule_generations) < 1:
            raise ValueError(f"schedule_generations must be >= 1, got {schedule_generations}")
        if not 0.0 <= float(noise_start) <= float(noise_end):
            raise ValueError(f"need 0 <= noise_start <= noise_end, got {noise_start}, {noise_end}")
        for name, w in (("width_start", width_start), ("width_end", width_end)):
            if w is not None and float(w) <= 0:
                raise ValueError(f"{name} must be > 0, got {w}")
        self.width_start = None if width_start is None else float(width_start)
        self.width_end = None if width_end is None else float(width_end)
        self.noise_start = float(noise_start)
        self.noise_end = float(noise_end)
        self.schedule_generations = int(schedule_generations)

    def width(self, generation: int, base: float) -> float:
        """The width factor of ``generation`` for a network whose own width is ``base``."""
        from monai_im.methods.blocks import width_schedule

        start = base if self.width_start is None else self.width_start
        end = start + 1.0 if self.width_end is None else self.width_end
        return width_schedule(
            min(max(generation, 0), self.schedule_generations), self.schedule_generations, start, end
        )

    def noise(self, generation: int) -> float:
        """The input-noise standard deviation of ``generation`` (generation 0 is trained without noise)."""
        from monai_im.methods.blocks import noise_schedule

        if generation <= 0:
            return 0.0
        steps = self.schedule_generations - 1  # generation 1 has noise_start, schedule_generations noise_end
        if steps == 0:
            return self.noise_end
        return noise_schedule(min(generation - 1, steps), steps, self.noise_start, self.noise_end)

    def student_network(self, generation: int, template: Any) -> Any:
        """A copy of the template ``width(generation)`` wide (networks with a ``widened(alpha)`` method)."""
        if not isinstance(template, torch.nn.Module):  # a factory: widen what it makes
            factory = template
            return lambda: _widened(factory(), self, generation)
        return _widened(template, self, generation)

    def augmentation_for(self, generation: int) -> Callable | None:
        """Generation 0 as the base method; later ones: flips, rotations, brightness/contrast and noise."""
        if generation <= 0:
            return super().augmentation_for(generation)  # type: ignore[misc]
        from monai_im.methods.blocks import noisy_student_augmentation

        return noisy_student_augmentation(self.noise(generation))

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().describe(),  # type: ignore[misc]
            "width_start": self.width_start,
            "width_end": self.width_end,
            "noise_start": self.noise_start,
            "noise_end": self.noise_end,
            "schedule_generations": self.schedule_generations,
        }


def _widened(network: Any, schedule: NoisySchedule, generation: int) -> Any:
    if not hasattr(network, "widened") or not hasattr(network, "alpha"):
        raise ValueError(
            f"noisy-student methods widen the students: the network ({type(network).__name__}) needs an "
            "'alpha' width and a 'widened(alpha)' method, as monai_im.networks.IMUNet has"
        )
    alpha = schedule.width(generation, float(network.alpha))
    return network if alpha == float(network.alpha) else network.widened(alpha)


class NoisyStudent(NoisySchedule, ModelEnsemble):
    """Noisy Student: the best teacher's hard pseudo-labels, wider students on noisier inputs.

    Args:
        width_start, width_end, noise_start, noise_end, schedule_generations: see :class:`NoisySchedule`.
        kwargs: the options of :class:`~monai_im.methods.pseudo.ModelEnsemble` (mode, threshold).
    """

    name = "noisy_student"

    def teacher_count(self, num_teachers: int) -> int:  # noqa: D102
        return 1


class IMPlus(NoisySchedule, InconsistencyMask):
    """IM+: IM combined with Noisy Student (augmented IM pairs, growing noise, widening students).

    Args:
        width_start, width_end, noise_start, noise_end, schedule_generations: see :class:`NoisySchedule`.
        kwargs: the options of :class:`InconsistencyMask` (mode, threshold, im_dilation, acceptance).
    """

    name = "im_plus"


class AIMPlus(NoisySchedule, AugmentedInconsistencyMask):
    """AIM+: IM+ starting from ALDT (generation 0) and keeping the augmented labeled set (each labeled
    image with its ``augmented_copies`` augmented views) next to the IM pairs in every generation.

    Args:
        width_start, width_end, noise_start, noise_end, schedule_generations: see :class:`NoisySchedule`.
        kwargs: the options of :class:`AugmentedInconsistencyMask` (augmented_copies, augmentation) and of
            :class:`InconsistencyMask`.
    """

    name = "aim_plus"
    augment_labeled = True

    def training_items(self, datalist, pseudo_items, generation=0):  # noqa: D102
        return augmented_copies(datalist["labeled"], self.copies) + [dict(it) for it in pseudo_items]
