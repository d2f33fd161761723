"""Pseudo-labels that cannot teach: the refusal of an ensemble that cannot disagree, and the warnings of a
generation that keeps no pseudo-label or whose Inconsistency Mask covers most of the unlabeled pixels.

A study refuses, before any work, a method that makes an Inconsistency Mask with a single teacher
(:func:`check_ensemble`, :attr:`monai_im.methods.Method.min_teachers`): one network agrees with itself
everywhere, its IM is empty and the result would not be IM at all. After every pseudo-labelling pass :func:`report_degeneration` compares the set's
statistics with the study's limits; each finding is a warning of the ``monai_im`` logger and a flag in
the pseudo-label statistics (``summary.json`` of the generation; MLflow logs it as ``pseudo_<flag>``):

=============================  ==========================================================================
flag (value 1.0 when raised)   raised when
=============================  ==========================================================================
``degenerate_no_kept``         the acceptance rule kept no pseudo-label of the unlabeled images
``degenerate_im_fraction``     the IM covers more than ``max_im_warning`` of the unlabeled pixels on average
=============================  ==========================================================================

A flag that is not raised is absent, so the statistics of a healthy generation are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from monai_im.methods import Method

__all__ = [
    "DEFAULT_MAX_IM_WARNING",
    "NO_KEPT",
    "IM_FRACTION",
    "check_ensemble",
    "degeneration_flags",
    "report_degeneration",
]

logger = logging.getLogger("monai_im")

#: the share of the unlabeled pixels an IM may cover before a generation is flagged: beyond half, the
#: teachers disagree on more of the images than they agree on
DEFAULT_MAX_IM_WARNING = 0.5
#: the flags a generation's pseudo-label statistics may carry
NO_KEPT = "degenerate_no_kept"
IM_FRACTION = "degenerate_im_fraction"


def check_ensemble(
    method: Method, num_teachers: int, num_generations: int, exit_on_error: bool = False
) -> None:
    """Refuse, in one line, a study whose method gets fewer teachers than it needs
    (:attr:`Method.min_teachers`: 2 for the methods that make an IM).

    Args:
        method: the study's method.
        num_teachers: the study's ``num_teachers`` (the method takes :meth:`Method.teacher_count` of them).
        num_generations: generations after generation 0; with none, no teacher is ever used.
        exit_on_error: end the program with the message (``SystemExit``, ``error: ...``), as
            :meth:`monai_im.selftrain.SelfTrainingStudy.run` does before any work, instead of raising.

    Raises:
        ValueError: too few teachers for a method with later generations.
    """
    needed = method.min_teachers
    if num_generations < 1 or method.teacher_count(num_teachers) >= needed:
        return
    message = (
        f"--method {method.name} needs at least {needed} teachers, got num_teachers {num_teachers}: a "
        "single teacher agrees with itself everywhere, so its Inconsistency Mask is empty; set "
        f"--num_teachers {needed} (with --num_students {needed} or more), or --num_generations 0 for "
        "generation 0 alone"
    )
    if exit_on_error:
        raise SystemExit(f"error: {message}")
    raise ValueError(message)


def degeneration_flags(stats: Mapping[str, Any], max_im_warning: float | None) -> dict[str, float]:
    """The flags (see the module's table) that the pseudo-label statistics ``stats`` of a set raise.

    Args:
        stats: the statistics of a set (:class:`monai_im.selftrain.PseudoLabelResult` ``stats``).
        max_im_warning: the largest mean IM fraction that raises no flag; None: no IM check.
    """
    flags: dict[str, float] = {}
    if int(stats.get("unlabeled_images", 0)) > 0 and int(stats.get("images_kept", 0)) == 0:
        flags[NO_KEPT] = 1.0
    if max_im_warning is not None and float(stats.get("im_fraction", 0.0)) > max_im_warning:
        flags[IM_FRACTION] = 1.0
    return flags


def report_degeneration(
    stats: dict[str, Any], generation: int, max_im_warning: float | None, log: bool = True
) -> dict[str, float]:
    """Add the flags of a generation's pseudo-label statistics to ``stats`` and warn of each one.

    Args:
        stats: the set's statistics, updated in place (the generation's summary and MLflow read them).
        generation: the generation the set is for (named in the warnings).
        max_im_warning: as for :func:`degeneration_flags`.
        log: write the warnings (False in the processes of a distributed study other than the first).

    Returns:
        The flags raised (empty for a healthy set).
    """
    flags = degeneration_flags(stats, max_im_warning)
    stats.update(flags)
    if log and NO_KEPT in flags:
        logger.warning(
            f"generation {generation}: no pseudo-label was kept of {stats['unlabeled_images']} unlabeled "
            "images: its students learn nothing from them (the teachers agree on too little to pass the "
            "acceptance rule: stronger teachers, e.g. more epochs or min_steps, or a looser min_foreground)"
        )
    if log and IM_FRACTION in flags:
        logger.warning(
            f"generation {generation}: the Inconsistency Mask covers {stats['im_fraction']:.0%} of the "
            f"unlabeled pixels, more than max_im_warning {max_im_warning:.0%}: the teachers disagree on more "
            "than they agree on and their pseudo-labels teach little (stronger teachers, or an augmented "
            "method such as aim_plus)"
        )
    return flags
