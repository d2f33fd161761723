"""Simulated active learning (monai_im.apps.active): reveal, the strategies, and one round through the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monai_im.apps.active import (
    ActiveLearningError,
    load_bundle_study,
    random_selection,
    reveal,
    simulate,
    top_k,
    tta_variance,
)
from monai_im.apps.suggest import disagreement_scores

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "bundles" / "isic_im" / "configs" / "train.json")


def _datalist(n_unlabeled: int = 5) -> dict:
    return {
        "labeled": [{"image": "/d/l0.png", "label": "/d/l0_m.png"}],
        "unlabeled": [{"image": f"/d/u{i}.png", "label": f"/d/u{i}_m.png"} for i in range(n_unlabeled)],
        "validation": [{"image": "/d/v.png", "label": "/d/v_m.png"}],
        "test": [{"image": "/d/t.png", "label": "/d/t_m.png"}],
    }


def test_reveal_moves_exactly_the_chosen_items_and_keeps_the_rest():
    datalist = _datalist()
    before = json.dumps(datalist)
    out = reveal(datalist, [3, 1])
    assert json.dumps(datalist) == before, "the input datalist must not change"
    assert [it["image"] for it in out["labeled"]] == ["/d/l0.png", "/d/u3.png", "/d/u1.png"]
    assert out["labeled"][1]["label"] == "/d/u3_m.png"
    assert [it["image"] for it in out["unlabeled"]] == ["/d/u0.png", "/d/u2.png", "/d/u4.png"]
    assert out["validation"] == datalist["validation"] and out["test"] == datalist["test"]


def test_reveal_refuses_bad_choices_in_one_line():
    datalist = _datalist()
    del datalist["unlabeled"][2]["label"]
    with pytest.raises(ActiveLearningError, match=r"unlabeled\[2\] \(/d/u2.png\) has no hidden label") as e:
        reveal(datalist, [0, 2])
    assert "\n" not in str(e.value)
    with pytest.raises(ActiveLearningError, match="outside the 5 unlabeled"):
        reveal(datalist, [5])
    with pytest.raises(ActiveLearningError, match="repeat"):
        reveal(datalist, [1, 1])


def test_random_selection_is_seeded():
    a, b = random_selection(50, 10, [0, 1]), random_selection(50, 10, [0, 1])
    assert a == b and len(set(a)) == 10 and all(0 <= i < 50 for i in a)
    assert random_selection(50, 10, [1, 1]) != a and random_selection(50, 10, [0, 2]) != a
    with pytest.raises(ActiveLearningError, match=r"1\.\.50"):
        random_selection(50, 51, 0)


def test_im_strategy_picks_the_images_with_the_largest_disagreement():
    # 2 teachers, 4 images of 4 x 4: they agree on images 0 and 2, disagree on 1 pixel of 3, 6 pixels of 1
    probs = torch.full((2, 4, 1, 4, 4), 0.1)
    probs[1, 1, 0].view(-1)[:6] = 0.9
    probs[1, 3, 0, 0, 0] = 0.9
    scores = disagreement_scores(probs, "binary")["im_fraction"]
    assert top_k(scores, 2) == [1, 3]
    assert top_k([0.2, 0.9, 0.2, float("nan"), 0.5], 3) == [1, 4, 0], "ties to the lower index, NaN last"
    with pytest.raises(ActiveLearningError, match="budget k"):
        top_k([0.1, 0.2], 3)


class _Ramp(torch.nn.Module):
    """Logits = image x a position ramp: not flip-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        self.ramp = torch.linspace(-2, 2, 12).reshape(1, 1, 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.ramp


def test_tta_variance_on_tiny_networks():
    images = torch.rand(3, 1, 3, 4)
    equivariant = torch.nn.Conv2d(1, 1, 1)
    assert torch.allclose(tta_variance(equivariant.eval(), images), torch.zeros(3), atol=1e-7)
    ramp = _Ramp().ramp
    views = [ramp, ramp.flip(2), ramp.flip(3), ramp.flip(2, 3)]  # each view's prediction mapped back
    expected = torch.stack([torch.sigmoid(images * r) for r in views]).var(dim=0, unbiased=False)
    got = tta_variance(_Ramp(), images, views=4)
    assert got.shape == (3,)
    assert torch.allclose(got, expected.flatten(1).mean(dim=1), atol=1e-6)
    assert torch.allclose(tta_variance(_Ramp(), images, views=1), torch.zeros(3)), "one view: no variance"


def test_one_simulated_round_through_the_bundle(isic_tiny, tmp_path):
    from monai.bundle import run

    tiny = {
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
    trained: list[Path] = []

    def train(data_dir: Path, study_dir: Path) -> None:
        trained.append(study_dir)
        run(
            config_file=TRAIN,
            logging_file=False,
            dataset_dir=str(data_dir),
            output_dir=str(study_dir),
            **tiny,
        )

    def load(data_dir: Path, study_dir: Path):
        return load_bundle_study(
            [TRAIN], {**tiny, "dataset_dir": str(data_dir), "output_dir": str(study_dir)}
        )

    source = Path(isic_tiny) / "datalist.json"
    original = source.read_bytes()
    out = tmp_path / "al"
    report = simulate(isic_tiny, out, train, load, strategies=["im", "tta_variance"], rounds=1, budget=4)
    assert source.read_bytes() == original, "the source dataset must not be written"
    first = json.loads(original)
    for strategy in ("im", "tta_variance"):
        folder = out / strategy / "round_1" / "data"
        new = json.loads((folder / "datalist.json").read_text())
        assert len(new["labeled"]) == len(first["labeled"]) + 4
        assert len(new["unlabeled"]) == len(first["unlabeled"]) - 4
        assert len(new["test"]) == len(first["test"])
        chosen = json.loads((folder / "selection.json").read_text())
        scores = chosen["scores"]
        assert len(scores) == len(first["unlabeled"])
        assert sorted(scores, reverse=True)[3] <= min(scores[c["index"]] for c in chosen["chosen"])
        revealed = {it["image"] for it in new["labeled"][-4:]}
        assert revealed == {c["image"] for c in chosen["chosen"]}
        assert all(Path(p).is_file() and Path(p).is_absolute() for p in revealed), "images are not copied"
        curve = report["strategies"][strategy]
        assert [p["labeled"] for p in curve] == [len(first["labeled"]), len(first["labeled"]) + 4]
        assert all(0.0 <= p["test_iou"] <= 1.0 for p in curve)
    assert len(trained) == 3, "round 0 is shared by the strategies"
    trained.clear()
    again = simulate(isic_tiny, out, train, load, strategies=["im", "tta_variance"], rounds=1, budget=4)
    assert trained == [] and again == report, "finished rounds are kept"


def test_simulate_refuses_a_pool_without_hidden_labels_before_any_work(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    datalist = _datalist(3)
    del datalist["unlabeled"][1]["label"]
    (data / "datalist.json").write_text(json.dumps(datalist))

    def never(*args):
        raise AssertionError("nothing may be trained or built")

    with pytest.raises(
        ActiveLearningError, match=r"1 unlabeled items carry no hidden label .*unlabeled\[1\]"
    ):
        simulate(data, tmp_path / "out", never, never, rounds=1, budget=1)
    with pytest.raises(ActiveLearningError, match="2 rounds of 2 need 4 unlabeled images, it has 3"):
        simulate(data, tmp_path / "out", never, never, rounds=2, budget=2)
    with pytest.raises(ActiveLearningError, match="strategies"):
        simulate(data, tmp_path / "out", never, never, strategies=["uncertainty"])
    assert not (tmp_path / "out").exists()


def test_a_finished_study_of_other_settings_is_refused_not_reused(tmp_path):
    import json

    from monai_im.apps.active import ActiveLearningError, finished_study

    (tmp_path / "results.json").write_text(
        json.dumps({"study": {"generations": 0, "students": 2, "epochs": 10}, "generations": [{}]})
    )
    assert finished_study(tmp_path, 0, {"students": 2, "epochs": 10})
    with pytest.raises(ActiveLearningError, match="students=2 \\(asked: 3\\), epochs=10 \\(asked: 20\\)"):
        finished_study(tmp_path, 0, {"students": 3, "epochs": 20})
