"""The active-learning benchmark's own bookkeeping (no training): bundle commands, summary over seeds, report."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def active():
    sys.path.insert(0, str(BENCH))
    yield importlib.import_module("active_learning")
    sys.path.remove(str(BENCH))


def _args(out: Path) -> argparse.Namespace:
    return argparse.Namespace(
        dataset="isic", out=out, students=2, teachers=2, generations=0, epochs=3, min_steps=10, batch_size=8,
        num_train=40, num_val=8, num_test=8, size=32, labeled_fraction=0.1,
    )  # fmt: skip


def test_every_round_runs_the_bundle_on_its_own_datalist_folder(active, tmp_path):
    data, study = tmp_path / "runs/seed1/im/round_2/data", tmp_path / "runs/seed1/im/round_2/study"
    values = active.overrides(_args(tmp_path), 1, data, study)
    assert values["dataset_dir"] == str(data) and values["output_dir"] == str(study)
    assert values["run_name"] == "seed1 im round_2" and values["num_generations"] == 0
    cmd = active.train_command(values, "isic")
    files = cmd[cmd.index("--config_file") + 1]
    assert files.endswith(
        "isic_im/configs/train.json','" + str(BENCH.parent / "bundles/isic_im/configs/demo.json']")
    )
    assert cmd[cmd.index("--dataset_dir") + 1] == str(data)
    assert cmd[cmd.index("--image_size") + 1] == "[32, 32]"


def test_summary_is_mean_and_std_over_seeds_per_strategy_and_budget(active):
    def report(values):
        return {
            "strategies": {
                "im": [
                    {"annotated": 4 * r, "labeled": 4 + 4 * r, "test_iou": v} for r, v in enumerate(values)
                ]
            }
        }

    summary = active.summarise({0: report([0.2, 0.5]), 1: report([0.4, 0.7])}, "test_iou")
    first, second = summary["im"]
    assert (first["annotated"], first["labeled"], first["n"]) == (0, 4, 2)
    assert first["mean"] == pytest.approx(0.3) and first["std"] == pytest.approx(0.1)
    assert second["mean"] == pytest.approx(0.6) and second["values"] == [0.5, 0.7]
    settings = {
        "seeds": [0, 1], "num_train": 40, "size": 32, "labeled_fraction": 0.1, "num_val": 8, "num_test": 8,
        "rounds": 1, "budget_per_round": 4, "students": 2, "generations": 0, "epochs": 3, "min_steps": 10,
        "batch_size": 8, "threads": 1, "score": "im_fraction", "views": 4,
    }  # fmt: skip
    md = active.markdown(
        {"dataset": "isic", "metric": "test_iou", "settings": settings, "strategies": summary}
    )
    assert "| 8 | 4 | 0.6000 ± 0.1000 (n=2) |" in md
