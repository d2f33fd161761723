"""configs/suggest.json of the bundles: rank the unlabeled images of a finished study, tracked in its MLflow run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "method": "im",
    "image_size": [32, 32],
    "alpha": 0.25,
    "epochs": 1,
    "min_steps": 0,
    "batch_size": 8,
    "num_students": 2,
    "num_teachers": 2,
    "num_generations": 0,
    "progress": False,
}


def _configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO / "bundles" / bundle / "configs" / name) for name in names]


def _run(bundle: str, dataset: str, out: Path, *names: str, **extra) -> None:
    from monai.bundle import run

    run(
        config_file=_configs(bundle, *names),
        logging_file=False,
        dataset_dir=dataset,
        output_dir=str(out),
        **TINY,
        **extra,
    )


def test_suggest_ranks_the_unlabeled_images_of_a_finished_study(isic_tiny, tmp_path):
    from mlflow import MlflowClient

    from monai_im.handlers.mlflow_uri import resolve_stored_uri

    out = tmp_path / "study"
    _run("isic_im", isic_tiny, out, "train.json")
    results = (out / "results.json").read_bytes()
    checkpoints = {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}

    _run("isic_im", isic_tiny, out, "train.json", "suggest.json", suggest_top_k=3, suggest_score="entropy")

    assert (out / "results.json").read_bytes() == results, "building the study must not run it"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")} == checkpoints
    folder = out / "suggestions"
    with open(folder / "suggestions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    datalist = json.loads((Path(isic_tiny) / "datalist.json").read_text())
    assert len(rows) == len(datalist["unlabeled"])
    entropy = [float(r["entropy"]) for r in rows]
    assert entropy == sorted(entropy, reverse=True)
    saved = json.loads((folder / "suggestions.json").read_text())
    assert saved["score"] == "entropy" and saved["top_k"] == 3
    summary = json.loads((out / "generation_0" / "summary.json").read_text())
    assert [t["student"] for t in saved["teachers"]] == summary["ranking"][:2]
    assert (folder / "top_k.png").stat().st_size > 0
    # logged to the study's parent run
    state = json.loads((out / "mlflow_runs.json").read_text())
    client = MlflowClient(resolve_stored_uri(state["tracking_uri"], out))
    logged = {a.path for a in client.list_artifacts(state["runs"]["study"], "suggestions")}
    assert logged == {f"suggestions/{n}" for n in ("suggestions.csv", "suggestions.json", "top_k.png")}


@pytest.mark.parametrize("bundle", ["isic_im", "hela_im"])
def test_suggest_refuses_a_folder_without_a_finished_study(bundle, request, tmp_path):
    dataset = request.getfixturevalue("isic_tiny" if bundle == "isic_im" else "hela_tiny")
    out = tmp_path / "nothing"
    with pytest.raises(SystemExit, match="holds no finished generation") as e:
        _run(bundle, dataset, out, "train.json", "suggest.json")
    assert "\n" not in str(e.value)
    assert not (out / "generation_0").exists() and not (out / "study.json").exists(), "nothing was trained"
    with pytest.raises(SystemExit, match="suggest_score 'dice' is not one of"):
        _run(bundle, dataset, out, "train.json", "suggest.json", suggest_score="dice")


def test_both_bundles_ship_the_same_suggest_config():
    isic, hela = (
        json.loads(Path(f).read_text())
        for f in _configs("isic_im", "suggest.json") + _configs("hela_im", "suggest.json")
    )
    assert isic == hela
    assert isic["suggest_top_k"] == 20 and isic["suggest_score"] == "im_fraction"
    assert isic["suggest_generation"] is None
