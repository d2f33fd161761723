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

import numpy as np
import torch
from monai.utils import convert_to_tensor

from monai_im.apps.suggest import SCORES, Suggester, SuggestionError
from monai_im.data.datalist import load_datalist, write_datalist
from monai_im.io import atomic_write_json, load_json
from monai_im.methods.blocks import input_views, predict_views

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

#: The selection strategies of :func:`select`.
STRATEGIES = ("im", "random", "tta_variance")


class ActiveLearningError(ValueError):
    """A datalist, selection or option that a simulated annotation round cannot use (one line)."""


# ---------------------------------------------------------------------- datalists
def reveal(datalist: Mapping[str, Sequence[Mapping[str, Any]]], chosen: Sequence[int]) -> dict[str, list]:
    """A new datalist in which the unlabeled items ``chosen`` (with their hidden labels) are labeled.

    The chosen items are appended to ``labeled`` in the order given; the other unlabeled items keep
    their order; every other key is copied unchanged. ``datalist`` itself is not modified.

    Args:
        datalist: a datalist with an ``unlabeled`` list whose chosen items carry a ``label``.
        chosen: indices into ``datalist["unlabeled"]``, without repeats.

    Raises:
        ActiveLearningError: an index out of range or repeated, or a chosen item without a label.
    """
    unlabeled = list(datalist.get("unlabeled", []))
    picked = [int(i) for i in chosen]
    if len(set(picked)) != len(picked):
        raise ActiveLearningError(f"the chosen indices repeat an item: {picked}")
    for i in picked:
        if not 0 <= i < len(unlabeled):
            raise ActiveLearningError(f"chosen index {i} is outside the {len(unlabeled)} unlabeled items")
        if "label" not in unlabeled[i]:
            raise ActiveLearningError(
                f"unlabeled[{i}] ({unlabeled[i].get('image')}) has no hidden label to reveal"
            )
    out = {k: [dict(it) for it in v] for k, v in datalist.items()}
    out["labeled"] = [dict(it) for it in datalist.get("labeled", [])] + [dict(unlabeled[i]) for i in picked]
    keep = set(range(len(unlabeled))) - set(picked)
    out["unlabeled"] = [dict(it) for i, it in enumerate(unlabeled) if i in keep]
    return out


# ---------------------------------------------------------------------- strategies
def _check_k(k: int, pool: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= pool:
        raise ActiveLearningError(f"budget k must be an integer in 1..{pool} (the unlabeled pool), got {k!r}")
    return int(k)


def top_k(scores: Sequence[float] | torch.Tensor, k: int) -> list[int]:
    """The indices of the ``k`` largest scores, largest first; ties go to the lower index.

    Args:
        scores: one score per unlabeled item (NaN ranks last).
        k: how many, 1..len(scores).
    """
    values = [float(s) for s in (scores.tolist() if torch.is_tensor(scores) else scores)]
    k = _check_k(k, len(values))
    order = sorted(range(len(values)), key=lambda i: (np.isnan(values[i]), -values[i], i))
    return order[:k]


def random_selection(num_items: int, k: int, seed: int | Sequence[int]) -> list[int]:
    """``k`` distinct indices of ``range(num_items)`` drawn uniformly; the same seed gives the same draw.

    Args:
        num_items: the size of the unlabeled pool.
        k: how many, 1..num_items.
        seed: a seed (or a sequence of them, e.g. ``[seed, round]``) for ``numpy.random.default_rng``.
    """
    k = _check_k(k, num_items)
    return [int(i) for i in np.random.default_rng(seed).choice(num_items, size=k, replace=False)]


def im_scores(study: SelfTrainingStudy, score: str = "im_fraction") -> list[float]:
    """One disagreement score per unlabeled image of a finished study, in datalist order.

    The teachers are those :class:`monai_im.apps.suggest.Suggester` uses (the teachers of the study's
    next generation); ``score`` is one of :data:`monai_im.apps.suggest.SCORES`.

    Raises:
        ActiveLearningError: no finished generation, no unlabeled images, or an unknown score.
    """
    if score not in SCORES:
        raise ActiveLearningError(f"score {score!r} is not one of {', '.join(SCORES)}")
    try:
        suggester = Suggester(study, top_k=1, score=score, progress=False)
        rows, _ = suggester.score_all(suggester.teachers())
    except SuggestionError as e:
        raise ActiveLearningError(str(e)) from e
    out = [0.0] * len(rows)
    for row in rows:
        out[row["index"]] = float(row[score])
    return out


def tta_variance(
    network: Callable[..., torch.Tensor],
    images: torch.Tensor,
    views: int = 4,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
    inferer: Callable | None = None,
) -> torch.Tensor:
    """Per-image variance of a network's probabilities over flip views of a batch.

    The network predicts every view (:func:`monai_im.methods.blocks.predict_views`, flips only, mapped
    back to the original orientation); the population variance over the views of every channel and
    pixel is averaged per image. A network that commutes with the flips scores 0.

    Args:
        network: the network, in eval mode.
        images: a batch (B, C, *spatial), 2D or 3D.
        views: the number of flip views, identity first (2D: at most 4; 3D: at most 8).
        activation: logits (V, B, C, *spatial) -> probabilities, e.g. the method's sigmoid or softmax.
        inferer: how the network is applied (``inferer(x, network)``); None = a direct call.

    Returns:
        float32 scores of shape (B,).
    """
    images = convert_to_tensor(images, track_meta=False)
    chosen = input_views(views, spatial_dims=images.ndim - 2, square=False)
    probs = activation(predict_views(network, images, chosen, inferer)).float()
    return probs.var(dim=0, unbiased=False).flatten(1).mean(dim=1)


def tta_variance_scores(study: SelfTrainingStudy, views: int = 4) -> list[float]:
    """:func:`tta_variance` of the best student of a finished study's last finished generation, for every
    unlabeled image, in datalist order (the study's inference transforms, batch size, device, inferer)."""
    from monai.data import DataLoader, Dataset

    suggester = Suggester(study, progress=False)
    history = suggester.finished_generations()
    if not history:
        raise ActiveLearningError(f"{study.layout.root} holds no finished generation: run the study first")
    unlabeled = study.datalist.get("unlabeled") or []
    if not unlabeled:
        raise ActiveLearningError("the datalist has no 'unlabeled' images to rank")
    network = study.load_student(study.rank(history[-1])[0])
    loader = DataLoader(
        Dataset([{"image": it["image"]} for it in unlabeled], transform=study.infer_transforms),
        batch_size=study.batch_size,
        shuffle=False,
        num_workers=getattr(study, "num_workers", 0),
    )
    scores: list[float] = []

    def activation(logits: torch.Tensor) -> torch.Tensor:  # (V, B, C, *spatial): channels are dim 2
        return study.method.activation(logits, channel_dim=2)

    for batch in loader:
        images = convert_to_tensor(batch["image"], track_meta=False).to(study.device)
        scores += tta_variance(network, images, views, activation, study.inferer).cpu().tolist()
    return scores


def select(
    strategy: str,
    study: SelfTrainingStudy,
    k: int,
    seed: int | Sequence[int] = 0,
    score: str = "im_fraction",
    views: int = 4,
) -> tuple[list[int], list[float] | None]:
    """The ``k`` unlabeled images of a finished study that ``strategy`` would have annotated next.

    Args:
        strategy: one of :data:`STRATEGIES`.
        study: the study, built (not run) with the settings it ran with.
        k: the budget of this round, 1..the unlabeled pool.
        seed: the seed of ``random``.
        score: the disagreement score of ``im``.
        views: the flip views of ``tta_variance``.
        expect: the study parameters every finished study must have (see :func:`finished_study`).

    Returns:
        ``(indices into study.datalist["unlabeled"], best first; the scores of every image or None)``.
    """
    pool = len(study.datalist.get("unlabeled") or [])
    if strategy not in STRATEGIES:
        raise ActiveLearningError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    _check_k(k, pool)
    if strategy == "random":
        return random_selection(pool, k, seed), None
    scores = im_scores(study, score) if strategy == "im" else tta_variance_scores(study, views)
    return top_k(scores, k), scores


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
    """
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ActiveLearningError(f"strategies {list(strategies)} must be some of {', '.join(STRATEGIES)}")
    if rounds < 1 or budget < 1:
        raise ActiveLearningError(f"rounds and budget must be >= 1, got rounds={rounds}, budget={budget}")
    source, out = Path(source_dir), Path(out_dir)
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
                unlabeled = study.datalist["unlabeled"]
                atomic_write_json(
                    here / "data" / "selection.json",
                    {
                        "strategy": strategy,
                        "round": r,
                        "budget": budget,
                        "chosen": [{"index": i, "image": unlabeled[i]["image"]} for i in chosen],
                        "scores": scores,
                    },
                )
                previous = load_datalist(prev / "data", check_files=False)
                write_datalist(here / "data" / "datalist.json", reveal(previous, chosen))
                logger.info(f"{strategy} round {r}: revealed {len(chosen)} labels in {here / 'data'}")
            curve.append(run_round(here / "data", here / "study", r))
            prev = here
        curves[strategy] = curve
    report = {"metric": metric, "budget": budget, "rounds": rounds, "seed": seed, "strategies": curves}
    atomic_write_json(out / "simulation.json", report)
    return report
