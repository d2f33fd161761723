"""Every method of the family through the real bundles (``--method NAME``), on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_im.methods import METHODS

REPO = Path(__file__).resolve().parents[2]
#: methods whose students learn from a quality estimator (EvalNet needs 64 x 64 inputs)
ESTIMATED = {"evalnet", "im_plus_plus", "aim_plus_plus"}
#: set as the bundle's method defaults, so that each reaches only the methods that take it: few copies and
#: EvalNet epochs, and every pseudo-label the rule allows on barely trained teachers accepted
TINY_METHOD_DEFAULTS = {
    "augmented_copies": 1,
    "evalnet_epochs": 1,
    "min_foreground": 0,
    "foreground_exceeds_im": False,
    "evalnet_min_score": 0.0,
}


def _run(bundle: str, dataset: str, out: Path, method: str, **extra) -> dict:
    from monai.bundle import run

    size = 64 if method in ESTIMATED else 32
    run(
        config_file=str(REPO / f"bundles/{bundle}/configs/train.json"),
        logging_file=False,
        dataset_dir=dataset,
        output_dir=str(out),
        method=method,
        image_size=[size, size],
        alpha=0.25,
        epochs=1,
        min_steps=0,
        batch_size=8,
        num_students=2,
        num_teachers=2,
        num_generations=1,
        progress=False,
        **{f"method_defaults#{k}": v for k, v in TINY_METHOD_DEFAULTS.items()},
        **extra,
    )
    return json.loads((out / "results.json").read_text())


def _check(results: dict, method: str, datalist: dict) -> None:
    cls = METHODS[method]
    gens = results["generations"]
    assert results["study"]["method"] == method
    assert len(gens) == (2 if cls().has_generations else 1)
    labeled = len(datalist["labeled"])
    if len(gens) == 2 and cls.makes_pseudo_labels:
        stats = gens[1]["pseudo_labels"]
        assert stats["unlabeled_images"] == len(datalist["unlabeled"])
        assert gens[1]["training_images"] >= labeled + stats["images_kept"]
    if method in ESTIMATED:
        assert "evalnet_pearson" in gens[1]["pseudo_labels"] or "evalnet_pairs" in gens[1]["pseudo_labels"]
    assert all(g["test"] for g in gens)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_in_the_isic_bundle(isic_tiny, tmp_path, method):
    datalist = json.loads((Path(isic_tiny) / "datalist.json").read_text())
    _check(_run("isic_im", isic_tiny, tmp_path / method, method), method, datalist)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", ["noisy_student", "aim_plus_plus", "input_ensemble", "consistency_loss", "afdt"]
)
def test_new_methods_run_in_the_hela_bundle_multilabel(hela_tiny, tmp_path, method):
    datalist = json.loads((Path(hela_tiny) / "datalist.json").read_text())
    _check(_run("hela_im", hela_tiny, tmp_path / method, method), method, datalist)


@pytest.mark.slow
def test_paper_exact_mse_loss_and_teachers_from_all_generations(isic_tiny, tmp_path):
    results = _run("isic_im", isic_tiny, tmp_path / "mse", "im", loss="mse", teacher_pool="all")
    assert results["generations"][1]["teacher_generations"] == [0, 0]
    with pytest.raises(SystemExit, match="loss"):
        _run("isic_im", isic_tiny, tmp_path / "bad", "im", loss="hinge")
