"""Which generation a study hands back: the best on the validation set over all generations.

Later generations are not always better (weak teachers can make every generation worse than the last),
so the study's final ``model.pt`` is the best student of the generation that scored best on the user's
own validation set, never simply the last one. A generation that scores below the best so far is said
so in the log and in MLflow, and ``generation_patience`` ends a study whose generations stopped improving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_im.io import atomic_write_bytes
from monai_im.selftrain.events import StudyEvents

if TYPE_CHECKING:
    from monai_im.selftrain.study import SelfTrainingStudy

__all__ = ["best_generation", "mark_standing", "patience_exhausted", "final_model_record", "finish_study"]

logger = logging.getLogger("monai_im")


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    """Whether ``a`` is strictly better than ``b`` (a NaN is never better)."""
    if a != a:  # NaN
        return False
    if b != b:
        return True
    return a > b if higher_is_better else a < b


def best_generation(summaries: Sequence[Mapping[str, Any]], key: str, higher_is_better: bool) -> int:
    """The position in ``summaries`` of the generation with the best ``key`` (earliest on ties).

    Args:
        summaries: the generations' summaries, oldest first (each holds ``key``).
        key: the validation key metric, e.g. ``"val_iou"``.
        higher_is_better: the metric's direction.
    """
    if not summaries:
        raise ValueError("a study without generations has no best generation")
    best = 0
    for i, s in enumerate(summaries[1:], start=1):
        if _better(float(s[key]), float(summaries[best][key]), higher_is_better):
            best = i
    return best


def mark_standing(summaries: list[dict[str, Any]], key: str, higher_is_better: bool) -> bool:
    """Record on the last summary how it stands against the generations before it, and say so when it
    scored below the best so far. Sets ``best_generation_so_far`` (the generation number of the best of
    all summaries so far) and ``below_best`` (1 when the last generation is worse than an earlier one).

    Returns:
        whether the last generation scored below the best so far.
    """
    last = summaries[-1]
    earlier = best_generation(summaries[:-1], key, higher_is_better) if len(summaries) > 1 else None
    below = earlier is not None and _better(
        float(summaries[earlier][key]), float(last[key]), higher_is_better
    )
    best = summaries[best_generation(summaries, key, higher_is_better)]
    last["best_generation_so_far"] = int(best["generation"])
    last["below_best"] = int(below)
    if below:
        prior = summaries[earlier]
        logger.warning(
            f"generation {last['generation']} scored {key}={float(last[key]):.4f}, below the best so far "
            f"(generation {prior['generation']}: {float(prior[key]):.4f}); the study keeps the best generation's "
            "model as its final model.pt"
        )
    return below


def patience_exhausted(
    summaries: Sequence[Mapping[str, Any]], key: str, higher_is_better: bool, patience: int | None
) -> bool:
    """Whether the last ``patience`` generations all failed to improve on the best before them."""
    if not patience or len(summaries) <= patience:
        return False
    return len(summaries) - 1 - best_generation(summaries, key, higher_is_better) >= patience


def final_model_record(summary: Mapping[str, Any], key: str) -> dict[str, Any]:
    """What ``results.json`` says of the final model: the generation and student it came from."""
    return {
        "generation": int(summary["generation"]),
        "student": int(summary["best_student"]),
        key: float(summary[key]),
        "checkpoint": summary["checkpoint"],
        "rule": "best validation score over all generations",
    }


def finish_study(study: SelfTrainingStudy, summaries: list[dict[str, Any]], key: str) -> None:
    """The final ``model.pt`` (the best generation on validation), ``results.json`` and the report."""
    best = summaries[best_generation(summaries, key, study.higher_is_better)]
    final = study.layout.model_file
    atomic_write_bytes(final, Path(best["checkpoint"]).read_bytes())
    record = final_model_record(best, key)
    study.layout.write_results(study.describe(), summaries, final_model=record)
    study.fire_event(StudyEvents.STUDY_FINISHED, summaries=summaries)
    logger.info(
        f"study finished: results in {study.output_dir.resolve()} (results.json, generation_*/summary.json); "
        f"final model {final}: generation {record['generation']} student {record['student']} "
        f"({key}={record[key]:.4f}), the best on validation over all {len(summaries)} generations"
    )
