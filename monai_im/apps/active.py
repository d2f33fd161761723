"""Simulated active learning: which unlabeled images to annotate next, and how much each choice helps.

A dataset whose unlabeled items carry hidden labels (the demo sets do) lets one *simulate* annotation:
train a study, rank its unlabeled pool with a selection strategy, :func:`reveal` the hidden labels of
the top ``k`` (move them into ``labeled``), train again, and compare the test metric of the strategies
at equal annotation budgets. The strategies (:data:`STRATEGIES`):

- ``im``: the largest teacher disagreement, one score of :func:`monai_im.apps.suggest.disagreement_scores`
  (default ``im_fraction``, the share of pixels in the Inconsistency Mask of the study's teachers);
- ``random``: a seeded uniform draw (the usual baseline);
- ``tta_variance``: a MONAI-Label-like test-time-augmentation baseline: the variance of the best
  student's probabilities over flip views (:func:`monai_im.methods.blocks.input_views` with
  ``square=False``: identity, flip0, flip1, flip0+flip1), averaged over pixels and channels.

:func:`simulate` drives the rounds. Every round's dataset is a new folder holding only a
``datalist.json`` (image and label paths absolute, pointing into the source dataset, which is never
written to) and ``selection.json`` (what was chosen, and the scores); the study of the round is trained
beside it. Round 0 (the source's labeled set) is trained once and shared by every strategy::

    <out>/round_0/data/datalist.json           <out>/round_0/study/
    <out>/<strategy>/round_<r>/data/{datalist,selection}.json   <out>/<strategy>/round_<r>/study/

Finished studies and finished selections are kept, so running the same simulation again continues it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_im.apps.selection import (
    STRATEGIES,
    ActiveLearningError,
    im_scores,
    random_selection,
    reveal,
    select,
    top_k,
    tta_variance,
    tta_variance_scores,
)
from monai_im.data.datalist import load_datalist, write_datalist
from monai_im.io import atomic_write_json, load_json

if TYPE_CHECKING:  # the study's type only: importing the loop is not needed to read one
    from monai_im.selftrain.study import SelfTrainingStudy

__all__ = [
    "STRATEGIES",
    "ActiveLearningError",
    "finished_study",
    "load_bundle_study",
    "random_selection",
    "reveal",
    "select",
    "simulate",
    "top_k",
    "tta_variance",
    "tta_variance_scores",
    "im_scores",
]

logger = logging.getLogger("monai_im")


# ---------------------------------------------------------------------- the rounds
def finished_study(
    output_dir: str | Path, generations: int = 0, expect: Mapping[str, Any] | None = None
) -> bool:
    """Whether ``output_dir`` holds a study that ran to the end with at least ``generations`` + 1
    generations (a method without pseudo-labels counts with its single one).

    Args:
        output_dir: the study folder.
        generations: the generations the study must have after generation 0.
        expect: study parameters (keys of ``results.json``'s ``study``, e.g. ``students``, ``epochs``)
            a finished study must have; a finished study made with other values is an error, so that
            a rerun never mixes studies of different settings.

    Raises:
        ActiveLearningError: a finished study of other settings.
    """
    f = Path(output_dir) / "results.json"
    if not f.is_file():
        return False
    results = load_json(f)
    held = results.get("study", {})
    differ = {k: (held.get(k), v) for k, v in (expect or {}).items() if k in held and held[k] != v}
    if differ:
        detail = ", ".join(f"{k}={old} (asked: {new})" for k, (old, new) in differ.items())
        raise ActiveLearningError(
            f"{output_dir} holds a finished study of other settings: {detail}; use another folder or delete it"
        )
    if held.get("generations") == 0:
        return True
    return len(results.get("generations", [])) >= generations + 1


def load_bundle_study(config_files: Sequence[str | Path], overrides: Mapping[str, Any]) -> SelfTrainingStudy:
    """The ``study`` of a bundle built (not run) from its configs and overrides, without tracking handlers.

    Args:
        config_files: e.g. the bundle's ``train.json`` and ``demo.json``.
        overrides: the same overrides the study ran with (``dataset_dir``, ``output_dir``, ...).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    parser.update({**overrides, "study#handlers": [], "progress": False})
    return parser.get_parsed_content("study")


def _test_metric(study_dir: Path, metric: str) -> float:
    results = load_json(study_dir / "results.json")
    test = (results.get("generations") or [{}])[-1].get("test") or {}
    if metric not in test:
        raise ActiveLearningError(
            f"{study_dir / 'results.json'} has no test metric {metric!r} (it has: {', '.join(test) or 'none'})"
        )
    return float(test[metric])


def simulate(
    source_dir: str | Path,
    out_dir: str | Path,
    train: Callable[[Path, Path], Any],
    load_study: Callable[[Path, Path], SelfTrainingStudy],
    strategies: Sequence[str] = STRATEGIES,
    rounds: int = 2,
    budget: int = 10,
    seed: int = 0,
    metric: str = "test_iou",
    generations: int = 0,
    score: str = "im_fraction",
    views: int = 4,
    expect: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Simulated annotation rounds: train -> rank -> reveal the top ``budget`` -> retrain, per strategy.

    Args:
        source_dir: the dataset folder (its ``datalist.json`` is read, never written).
        out_dir: where the rounds' datalists and studies go (see the module docstring).
        train: ``train(dataset_dir, study_dir)`` trains a study on ``dataset_dir/datalist.json`` into
            ``study_dir`` (e.g. a bundle subprocess); called only for studies not yet finished.
        load_study: ``load_study(dataset_dir, study_dir)`` builds (does not run) that finished study.
        strategies: names of :data:`STRATEGIES`; every one gets the same ``budget`` per round.
        rounds: annotation rounds after round 0 (>= 1).
        budget: images revealed per round (>= 1).
        seed: the seed of ``random`` (round ``r`` draws with ``[seed, r]``).
        metric: the test metric recorded (a key of the studies' ``test`` results, e.g. ``test_iou``).
        generations: generations of the studies (0: labeled-only; more: IM self-training on the rest),
            to tell finished studies.
        score: the disagreement score of ``im``.
        views: the flip views of ``tta_variance``.
        expect: the study parameters every finished study must have (see :func:`finished_study`).

    Returns:
        ``{"metric", "budget", "rounds", "strategies": {name: [{"round", "annotated", "labeled",
        metric, "study"}, ...]}}``, also written to ``<out_dir>/simulation.json``.

    The parameters stay flat: they are the benchmark's command-line options, passed by keyword.
    """
    source, out = Path(source_dir), Path(out_dir)
    first = _checked_source(source, out, strategies, rounds, budget)

    def run_round(data_dir: Path, study_dir: Path, r: int) -> dict[str, Any]:
        if not finished_study(study_dir, generations, expect):
            train(data_dir, study_dir)
        if not finished_study(study_dir, generations, expect):
            raise ActiveLearningError(f"{study_dir}: the study of round {r} did not finish")
        labeled = len(load_json(data_dir / "datalist.json").get("labeled", []))
        return {
            "round": r,
            "annotated": r * budget,
            "labeled": labeled,
            metric: _test_metric(study_dir, metric),
            "study": str(study_dir),
        }

    base = out / "round_0"
    if not (base / "data" / "datalist.json").is_file():
        write_datalist(base / "data" / "datalist.json", first)
    start = run_round(base / "data", base / "study", 0)
    curves: dict[str, list[dict[str, Any]]] = {}
    for strategy in strategies:
        curve = [dict(start)]
        prev = base
        for r in range(1, rounds + 1):
            here = out / strategy / f"round_{r}"
            if not (here / "data" / "datalist.json").is_file():
                study = load_study(prev / "data", prev / "study")
                chosen, scores = select(strategy, study, budget, seed=[seed, r], score=score, views=views)
                _write_round(here / "data", prev / "data", strategy, r, budget, study, chosen, scores)
            curve.append(run_round(here / "data", here / "study", r))
            prev = here
        curves[strategy] = curve
    report = {"metric": metric, "budget": budget, "rounds": rounds, "seed": seed, "strategies": curves}
    atomic_write_json(out / "simulation.json", report)
    return report


def _checked_source(
    source: Path, out: Path, strategies: Sequence[str], rounds: int, budget: int
) -> dict[str, list[dict[str, Any]]]:
    """The source dataset's datalist, once the simulation's settings are known to fit it.

    Raises:
        ActiveLearningError: an unknown strategy, too few unlabeled images or hidden labels, or ``out``
            being the source folder.
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ActiveLearningError(f"strategies {list(strategies)} must be some of {', '.join(STRATEGIES)}")
    if rounds < 1 or budget < 1:
        raise ActiveLearningError(f"rounds and budget must be >= 1, got rounds={rounds}, budget={budget}")
    first = load_datalist(source, check_files=False)
    pool = len(first["unlabeled"])
    if rounds * budget > pool:
        raise ActiveLearningError(
            f"{source / 'datalist.json'}: {rounds} rounds of {budget} need {rounds * budget} unlabeled "
            f"images, it has {pool}"
        )
    hidden = [i for i, it in enumerate(first["unlabeled"]) if "label" not in it]
    if hidden:
        raise ActiveLearningError(
            f"{source / 'datalist.json'}: {len(hidden)} unlabeled items carry no hidden label (first: "
            f"unlabeled[{hidden[0]}], {first['unlabeled'][hidden[0]]['image']}); a simulation reveals them"
        )
    if out.resolve() == source.resolve():
        raise ActiveLearningError(f"out_dir {out} is the source dataset folder; give a folder of its own")
    return first


def _write_round(
    data_dir: Path,
    previous_dir: Path,
    strategy: str,
    r: int,
    budget: int,
    study: SelfTrainingStudy,
    chosen: Sequence[int],
    scores: Any,
) -> None:
    """The dataset of round ``r``: ``selection.json`` (what was chosen, and the scores) and the previous
    round's datalist with the chosen images' labels revealed."""
    unlabeled = study.datalist["unlabeled"]
    atomic_write_json(
        data_dir / "selection.json",
        {
            "strategy": strategy,
            "round": r,
            "budget": budget,
            "chosen": [{"index": i, "image": unlabeled[i]["image"]} for i in chosen],
            "scores": scores,
        },
    )
    previous = load_datalist(previous_dir, check_files=False)
    write_datalist(data_dir / "datalist.json", reveal(previous, chosen))
    logger.info(f"{strategy} round {r}: revealed {len(chosen)} labels in {data_dir}")
