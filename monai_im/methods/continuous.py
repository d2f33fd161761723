"""Continuous semi-supervised methods: FixMatch, Mean Teacher, Cross Pseudo Supervision, each also with IM.

They train only in generation 0, from scratch, with their own training step
(:mod:`monai_im.methods.ssl_steps`): every step takes a labeled batch (the study's ``loss_function``) and
an unlabeled batch of the study's unlabeled images. No pseudo-labels are written and no later
generation runs. The "+IM" variants leave the Inconsistency Mask of an ensemble of predictions out of the
unsupervised loss (exactly zero gradient there):

- ``fixmatch_im``: the predictions on ``im_views`` random weak views (flips, quarter turns), mapped back;
- ``mean_teacher_im``: the EMA teacher's and the student's predictions;
- ``cps_im``: the predictions of the two networks.

The IM rule is the package's (:func:`monai_im.transforms.functional.inconsistency_mask`): binary and
multilabel at ``threshold`` (union over channels), multiclass by argmax.

Seeds: the step of a student is seeded with that student's seed (``StudentContext.seed``, see
:meth:`monai_im.selftrain.StudyProtocol.student_seed`): its unlabeled order, its random views and, for
CPS, the initialisation of the second network; the global random state is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from monai_im.methods.base import Method
from monai_im.methods.context import StudentContext

__all__ = [
    "ContinuousMethod",
    "FixMatch",
    "FixMatchIM",
    "MeanTeacher",
    "MeanTeacherIM",
    "CrossPseudoSupervision",
    "CrossPseudoSupervisionIM",
]


def step_seeds(seed: int) -> list[int]:
    """Three seeds (unlabeled order, views, networks) drawn from a student's ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    return [int(s) for s in torch.randint(0, 2**62, (3,), generator=generator).tolist()]


def _seeded_network(context: StudentContext, seed: int) -> torch.nn.Module:
    """A new prepared network of the student's generation, initialised from ``seed`` (the global random
    state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return context.new_network()


class ContinuousMethod(Method):
    """Base of the continuous methods: generation 0 only, trained by :meth:`make_iteration`'s step.

    Args:
        mode: "binary", "multiclass" or "multilabel".
        threshold: foreground threshold of hard labels and of the IM (binary, multilabel).
        ssl_weight: the weight of the unsupervised loss (>= 0).
        view_brightness: range of the random brightness change of the strong view (+-).
        view_contrast: range of the random contrast change of the strong view (+-).
        view_noise: standard deviation of the Gaussian noise of the strong view.
    """

    name = "continuous"
    makes_pseudo_labels = False
    runs_generations = False
    #: whether the Inconsistency Mask is left out of the unsupervised loss
    use_im = False

    def __init__(
        self,
        mode: str = "binary",
        threshold: float = 0.5,
        ssl_weight: float = 1.0,
        view_brightness: float = 0.2,
        view_contrast: float = 0.2,
        view_noise: float = 0.05,
    ) -> None:
        super().__init__(mode=mode, threshold=threshold)
        values = (ssl_weight, view_brightness, view_contrast, view_noise)
        if min(float(v) for v in values) < 0:
            raise ValueError(f"ssl_weight and the view_* ranges must be >= 0, got {values}")
        self.ssl_weight = float(ssl_weight)
        self.brightness, self.contrast, self.noise = (
            float(view_brightness),
            float(view_contrast),
            float(view_noise),
        )

    def strong_view(self, seed: int) -> Callable:
        """The photometric strong view, on its own generator seeded by ``seed``."""
        from monai_im.methods.steps import photometric_views

        generator = torch.Generator().manual_seed(seed)
        return photometric_views(
            generator, brightness=self.brightness, contrast=self.contrast, noise=self.noise
        )

    def common(self, seed: int) -> dict[str, Any]:
        """The keyword arguments every iteration takes."""
        return {
            "mode": self.mode,
            "threshold": self.threshold,
            "weight": self.ssl_weight,
            "use_im": self.use_im,
            "seed": seed,
        }

    def make_iteration(self, context: StudentContext, loader: Any, seeds: list[int]) -> Callable:
        """The training step, given the unlabeled ``loader`` and the seeds of :func:`step_seeds`."""
        raise NotImplementedError

    def iteration(self, context: StudentContext) -> Callable | None:  # noqa: D102
        if context.generation != 0:
            return None
        seeds = step_seeds(context.seed)
        return self.make_iteration(context, context.unlabeled_loader(seeds[0]), seeds)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {
            "method": self.name,
            "mode": self.mode,
            "threshold": self.threshold,
            "ssl_weight": self.ssl_weight,
            "view_brightness": self.brightness,
            "view_contrast": self.contrast,
            "view_noise": self.noise,
        }


class FixMatch(ContinuousMethod):
    """FixMatch: hard pseudo-labels of a weak view, kept where confident, taught on a strong view.

    Weak view: one random flip/quarter-turn geometry per batch (prediction mapped back, no gradient);
    confidence ``max(p, 1 - p)`` per element (binary, multilabel) or the largest softmax probability
    (multiclass); loss: binary cross-entropy with logits against the thresholded labels, or cross-entropy
    against the argmax, on the strong view (photometric, same geometry), over the elements with
    confidence >= ``ssl_threshold``, divided by the number of all elements.

    Args:
        ssl_threshold: the confidence threshold, in [0, 1].
        kwargs: see :class:`ContinuousMethod`.
    """

    name = "fixmatch"
    #: weak views per batch (their ensemble gives the IM of the IM variant)
    num_views = 1

    def __init__(
        self,
        mode: str = "binary",
        threshold: float = 0.5,
        ssl_threshold: float = 0.95,
        ssl_weight: float = 1.0,
        view_brightness: float = 0.2,
        view_contrast: float = 0.2,
        view_noise: float = 0.05,
    ) -> None:
        super().__init__(mode, threshold, ssl_weight, view_brightness, view_contrast, view_noise)
        if not 0.0 <= float(ssl_threshold) <= 1.0:
            raise ValueError(f"ssl_threshold must be in [0, 1], got {ssl_threshold}")
        self.ssl_threshold = float(ssl_threshold)

    def make_iteration(self, context: StudentContext, loader: Any, seeds: list[int]) -> Callable:  # noqa: D102
        from monai_im.methods.ssl_iterations import FixMatchIteration

        return FixMatchIteration(
            loader,
            confidence_threshold=self.ssl_threshold,
            num_views=self.num_views,
            strong_view=self.strong_view(seeds[2]),
            **self.common(seeds[1]),
        )

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "ssl_threshold": self.ssl_threshold}


class FixMatchIM(FixMatch):
    """FixMatch + IM: the network predicts ``im_views`` distinct random weak views (mapped back); their
    mean probability gives the pseudo-label and its confidence, their Inconsistency Mask is left out of
    the loss too (and the strong view takes the geometry of the first weak view).

    Args:
        im_views: the weak views of the IM ensemble (>= 2).
        kwargs: see :class:`FixMatch`.
    """

    name = "fixmatch_im"
    use_im = True

    def __init__(self, im_views: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(im_views) != im_views or im_views < 2:
            raise ValueError(f"im_views must be an integer >= 2 (an ensemble), got {im_views}")
        self.num_views = int(im_views)

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "im_views": self.num_views}


class MeanTeacher(ContinuousMethod):
    """Mean Teacher: the squared difference of the student's probabilities on a strong view and an EMA
    teacher's on the weak view.

    The teacher starts as a copy of the student and after every optimizer step becomes
    ``ema_decay * teacher + (1 - ema_decay) * student`` (parameters; batch-norm statistics copied).
    The weight is ``ssl_weight * exp(-5 (1 - t / ramp_up_steps)^2)`` for step ``t < ramp_up_steps``,
    ``ssl_weight`` afterwards. The study checkpoints the student.

    Args:
        ema_decay: the EMA decay, in [0, 1].
        ramp_up_steps: the steps of the sigmoid ramp-up (0 = none).
        kwargs: see :class:`ContinuousMethod`.
    """

    name = "mean_teacher"

    def __init__(
        self,
        mode: str = "binary",
        threshold: float = 0.5,
        ema_decay: float = 0.99,
        ssl_weight: float = 1.0,
        ramp_up_steps: int = 200,
        view_brightness: float = 0.2,
        view_contrast: float = 0.2,
        view_noise: float = 0.05,
    ) -> None:
        super().__init__(mode, threshold, ssl_weight, view_brightness, view_contrast, view_noise)
        if not 0.0 <= float(ema_decay) <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        if int(ramp_up_steps) != ramp_up_steps or ramp_up_steps < 0:
            raise ValueError(f"ramp_up_steps must be an integer >= 0, got {ramp_up_steps}")
        self.ema_decay, self.ramp_up_steps = float(ema_decay), int(ramp_up_steps)

    def make_iteration(self, context: StudentContext, loader: Any, seeds: list[int]) -> Callable:  # noqa: D102
        from monai_im.methods.ssl_iterations import MeanTeacherIteration

        return MeanTeacherIteration(
            loader,
            teacher=_seeded_network(context, seeds[2]),
            decay=self.ema_decay,
            strong_view=self.strong_view(seeds[2]),
            ramp_up_steps=self.ramp_up_steps,
            **self.common(seeds[1]),
        )

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {**super().describe(), "ema_decay": self.ema_decay, "ramp_up_steps": self.ramp_up_steps}


class MeanTeacherIM(MeanTeacher):
    """Mean Teacher + IM: the Inconsistency Mask of {teacher, student} predictions is left out of the
    consistency loss. Options: see :class:`MeanTeacher`."""

    name = "mean_teacher_im"
    use_im = True


class CrossPseudoSupervision(ContinuousMethod):
    """Cross Pseudo Supervision: two networks of the study's architecture, differently initialised, each
    with its own AdamW (the study optimizer's lr and weight decay); both are supervised on the labeled
    batch and each by the other's hard labels (threshold / argmax) on the unlabeled batch (binary
    cross-entropy with logits or cross-entropy). The study checkpoints the first network.

    Args:
        kwargs: see :class:`ContinuousMethod` (the view options are not used).
    """

    name = "cps"

    def make_iteration(self, context: StudentContext, loader: Any, seeds: list[int]) -> Callable:  # noqa: D102
        from monai_im.methods.ssl_iterations import CrossPseudoSupervisionIteration

        return CrossPseudoSupervisionIteration(
            loader, second=_seeded_network(context, seeds[2]), **self.common(seeds[1])
        )

    def describe(self) -> dict[str, Any]:  # noqa: D102
        return {k: v for k, v in super().describe().items() if not k.startswith("view_")}


class CrossPseudoSupervisionIM(CrossPseudoSupervision):
    """Cross Pseudo Supervision + IM: the Inconsistency Mask of the two networks' predictions is left
    out of both cross losses. Options: see :class:`CrossPseudoSupervision`."""

    name = "cps_im"
    use_im = True
