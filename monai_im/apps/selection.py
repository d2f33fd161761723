"""The selection strategies of simulated active learning (see :mod:`monai_im.apps.active`): which
unlabeled images of a finished study to annotate next, and revealing their hidden labels."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import convert_to_tensor

from monai_im.apps.suggest import SCORES, Suggester, SuggestionError
from monai_im.methods.blocks import input_views, predict_views

if TYPE_CHECKING:  # the study's type only: importing the loop is not needed to read one
    from monai_im.selftrain.study import SelfTrainingStudy

__all__ = [
    "STRATEGIES",
    "ActiveLearningError",
    "im_scores",
    "random_selection",
    "reveal",
    "select",
    "top_k",
    "tta_variance",
    "tta_variance_scores",
]

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
