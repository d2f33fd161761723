"""What to annotate next: disagreement scores, ranking, the files written and the refusals."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from monai_im.apps.suggest import SCORES, Suggester, SuggestionError, disagreement_scores, suggest
from monai_im.runtime import RunSettings
from monai_im.selftrain import StudentResult, StudyLayout


def _h(p: float) -> float:
    """Binary entropy in nats."""
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


# ---------------------------------------------------------------------------------------- scores
def test_binary_scores_have_their_exact_values():
    # 3 teachers, 2 images of 2 x 2 pixels; image 0: one agreed foreground pixel, two IM pixels,
    # one agreed background pixel; image 1: every teacher says background everywhere
    t = [
        [[0.9, 0.9], [0.1, 0.9]],
        [[0.9, 0.1], [0.1, 0.9]],
        [[0.9, 0.1], [0.1, 0.1]],
    ]
    probs = torch.zeros(3, 2, 1, 2, 2)
    probs[:, 0, 0] = torch.tensor(t)
    probs[:, 1, 0] = 0.2
    s = disagreement_scores(probs, "binary")
    assert set(s) == set(SCORES) and all(v.shape == (2,) for v in s.values())
    assert s["im_fraction"].tolist() == pytest.approx([0.5, 0.0])
    # two IM pixels, each with 2 of the 3 teacher pairs disagreeing: 4 / (4 pixels * 3 pairs)
    assert s["pairwise_disagreement"].tolist() == pytest.approx([1 / 3, 0.0])
    means = [0.9, (0.9 + 0.1 + 0.1) / 3, 0.1, (0.9 + 0.9 + 0.1) / 3]
    assert s["entropy"].tolist() == pytest.approx([sum(map(_h, means)) / 4, _h(0.2)], rel=1e-5)
    # 2 IM pixels / (1 agreed foreground + 2 IM); no foreground and no IM scores 0
    assert s["im_per_foreground"].tolist() == pytest.approx([2 / 3, 0.0])


def test_multiclass_scores_count_votes_per_pixel():
    # 3 teachers, 3 classes, 1 x 3 pixels: all vote 0 | votes 1, 1, 2 | votes 0, 1, 2 (one-hot probabilities)
    votes = torch.tensor([[0, 1, 0], [0, 1, 1], [0, 2, 2]])  # (E, W)
    probs = torch.nn.functional.one_hot(votes, 3).float().permute(0, 2, 1)[:, None, :, None, :]
    s = disagreement_scores(probs, "multiclass")
    assert s["im_fraction"].item() == pytest.approx(2 / 3)
    assert s["pairwise_disagreement"].item() == pytest.approx((0 + 2 / 3 + 1) / 3)
    h_mid = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert s["entropy"].item() == pytest.approx((0 + h_mid + math.log(3)) / 3, rel=1e-5)
    # the one agreed pixel is background: the IM is all there is
    assert s["im_per_foreground"].item() == pytest.approx(1.0)


def test_multilabel_scores_union_the_channels_and_count_every_element():
    # 2 teachers, 2 channels, 1 x 2 pixels; channel 0 disagrees at pixel 0, channel 1 at pixels 0 and 1
    probs = torch.tensor(
        [
            [[[0.9, 0.9]], [[0.9, 0.9]]],
            [[[0.1, 0.9]], [[0.1, 0.1]]],
        ]
    )[:, None]  # (E=2, B=1, C=2, 1, 2)
    s = disagreement_scores(probs, "multilabel")
    assert s["im_fraction"].item() == pytest.approx(1.0)  # the union covers both pixels
    assert s["pairwise_disagreement"].item() == pytest.approx(3 / 4)  # 3 of 4 channel-pixels differ
    assert s["entropy"].item() == pytest.approx((3 * _h(0.5) + _h(0.9)) / 4, rel=1e-5)
    assert s["im_per_foreground"].item() == pytest.approx(1.0)


def test_one_teacher_or_a_unanimous_ensemble_disagrees_nowhere():
    probs = torch.rand(1, 3, 1, 4, 4)
    s = disagreement_scores(probs, "binary")
    for name in ("im_fraction", "pairwise_disagreement", "im_per_foreground"):
        assert s[name].tolist() == [0.0, 0.0, 0.0]
    same = disagreement_scores(probs.expand(3, -1, -1, -1, -1), "binary")
    assert torch.allclose(same["entropy"], s["entropy"]) and not same["pairwise_disagreement"].any()
    with pytest.raises(ValueError, match="mode"):
        disagreement_scores(probs, "multi")


def test_scores_of_volumes():
    probs = torch.zeros(2, 1, 1, 2, 2, 2)
    probs[0] = 0.9
    probs[1, ..., 0] = 0.9  # half of the voxels agreed foreground, half IM
    s = disagreement_scores(probs, "binary")
    assert s["im_fraction"].item() == pytest.approx(0.5)
    assert s["pairwise_disagreement"].item() == pytest.approx(0.5)
    assert s["im_per_foreground"].item() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------- a hand-made study
class Probe(torch.nn.Module):
    """A 1x1 convolution whose forward passes are counted."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Probe.calls += 1
        return self.conv(x)


def _teacher(kind: str) -> dict[str, torch.Tensor]:
    """``all``: foreground everywhere; ``red``: foreground where the red channel > 0.5; ``none``: background."""
    net = Probe()
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.fill_({"all": 10.0, "red": -10.0, "none": -10.0}[kind])
        if kind == "red":
            net.conv.weight[0, 0] = 20.0
    return net.state_dict()


def _finish(layout: StudyLayout, generation: int, kinds: list[str], metrics: list[float]) -> None:
    """Write a finished generation whose students are the teachers ``kinds``."""
    students = []
    for k, (kind, metric) in enumerate(zip(kinds, metrics)):
        ckpt = layout.student_dir(generation, k) / "model.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_teacher(kind), ckpt)
        result = StudentResult(generation, k, metric, 1, str(ckpt))
        layout.write_student(result)
        students.append(result.to_dict())
    best = max(students, key=lambda s: s["best_metric"])
    layout.write_summary({"generation": generation, "checkpoint": best["checkpoint"], "students": students})


@pytest.fixture
def study(make_study, tiny_data, tmp_path):
    """A study folder with generation 0 finished: students all (0.9), red (0.8), none (0.1); 2 teachers."""
    s = make_study(
        tiny_data,
        tmp_path / "study",
        network=Probe,
        num_students=3,
        num_teachers=2,
        batch_size=3,
        run_settings=RunSettings(inference_precision="fp32", channels_last=False),
    )
    _finish(s.layout, 0, ["all", "red", "none"], [0.9, 0.8, 0.1])
    return s


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "suggestions" / "suggestions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _expected_im_fraction(study) -> dict[str, float]:
    """Teachers ``all`` and ``red`` disagree where the red channel is <= 0.5."""
    out = {}
    for it in study.datalist["unlabeled"]:
        image = study.infer_transforms({"image": it["image"]})["image"]
        out[str(it["image"])] = float((image[0] <= 0.5).float().mean())
    return out


def test_ranks_every_unlabeled_image_by_the_teachers_disagreement(study):
    Probe.calls = 0
    report = Suggester(study, top_k=2, progress=False).run()
    n = len(study.datalist["unlabeled"])
    assert Probe.calls == 2 * math.ceil(n / 3), "one forward pass per teacher and batch"
    rows = _rows(study.output_dir)
    assert list(rows[0]) == ["rank", "index", "image", *SCORES]
    assert [int(r["rank"]) for r in rows] == list(range(1, n + 1))
    expected = _expected_im_fraction(study)
    assert {r["image"]: float(r["im_fraction"]) for r in rows} == pytest.approx(expected, abs=1e-6)
    order = sorted(expected, key=lambda p: (-round(expected[p], 6), p))
    assert [r["image"] for r in rows] == order
    assert len(set(expected.values())) > 1, "the images must differ for the order to mean something"
    paths = [str(it["image"]) for it in study.datalist["unlabeled"]]
    assert all(paths[int(r["index"])] == r["image"] for r in rows)
    # the JSON file: the same rows, the two best students as teachers
    saved = json.loads((study.output_dir / "suggestions" / "suggestions.json").read_text())
    assert [(t["generation"], t["student"]) for t in saved["teachers"]] == [(0, 0), (0, 1)]
    assert saved["teachers"][0]["checkpoint"] == "generation_0/student_0/model.pt"
    assert saved["score"] == "im_fraction" and saved["unlabeled_images"] == n
    assert [r["image"] for r in saved["suggestions"]] == order
    assert [str(x) for x in saved["suggestions"][0].values()] == list(rows[0].values())
    assert report["files"][0].endswith("suggestions.csv")
    assert not list(study.output_dir.glob(".suggestions*")), "no partial folder left"


def test_ties_are_broken_by_path_and_generation_picks_older_students(study):
    # generation 1's two best students agree everywhere: every IM fraction is 0, the order is by path
    _finish(study.layout, 1, ["none", "none", "all"], [0.7, 0.6, 0.5])
    Suggester(study, progress=False).run()
    rows = _rows(study.output_dir)
    assert {float(r["im_fraction"]) for r in rows} == {0.0}
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)
    # generation 0's students instead
    Suggester(study, generation=0, progress=False).run()
    expected = _expected_im_fraction(study)
    assert {r["image"]: float(r["im_fraction"]) for r in _rows(study.output_dir)} == pytest.approx(
        expected, abs=1e-6
    )


def test_rank_on_another_score(study):
    Suggester(study, score="entropy", progress=False).run()
    values = [float(r["entropy"]) for r in _rows(study.output_dir)]
    assert values == sorted(values, reverse=True) and values[0] > 0


def test_the_montage_has_one_row_per_top_image(study):
    heights = []
    for k in (1, 2, 3, 50):
        Suggester(study, top_k=k, progress=False).run()
        with Image.open(study.output_dir / "suggestions" / "top_k.png") as im:
            heights.append(im.height)
    one_row = heights[1] - heights[0]
    assert one_row > 0 and heights[2] - heights[1] == one_row
    n = len(study.datalist["unlabeled"])
    assert heights[3] == heights[0] + (n - 1) * one_row, "top_k above the unlabeled set draws every image"


def test_refusals_come_before_any_work(study, make_study, tiny_data, tmp_path):
    Probe.calls = 0
    empty = make_study(tiny_data, tmp_path / "empty", network=Probe)
    with pytest.raises(SystemExit, match=r"no finished generation.*run the study first") as e:
        Suggester(empty, progress=False).run()
    assert isinstance(e.value.__cause__, SuggestionError) and "\n" not in str(e.value)
    with pytest.raises(SystemExit, match=r"generation 3 of .* is not finished \(finished: 0\.\.0\)"):
        Suggester(study, generation=3, progress=False).run()
    study.datalist = {k: v for k, v in study.datalist.items() if k != "unlabeled"}
    with pytest.raises(SystemExit, match="the datalist has no 'unlabeled' images"):
        Suggester(study, progress=False).run()
    assert Probe.calls == 0 and not (study.output_dir / "suggestions").exists()
    with pytest.raises(SystemExit, match="suggest_score 'iou' is not one of im_fraction"):
        suggest(study, score="iou")
    for bad in (0, "3", True):
        with pytest.raises(SuggestionError, match="suggest_top_k"):
            Suggester(study, top_k=bad)
    with pytest.raises(SuggestionError, match="suggest_generation"):
        Suggester(study, generation=-1)


def test_a_checkpoint_of_other_settings_is_named(study):
    ckpt = study.layout.student_dir(0, 0) / "model.pt"
    torch.save({"other.weight": torch.zeros(1)}, ckpt)
    with pytest.raises(
        SystemExit, match=r"student_0/model.pt does not load .* pass the options the study was run"
    ):
        Suggester(study, progress=False).run()


def test_an_unreachable_tracking_store_only_warns(study, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    state = {"tracking_uri": "http://127.0.0.1:9", "runs": {"study": "0123456789abcdef"}}
    (study.output_dir / "mlflow_runs.json").write_text(json.dumps(state))
    with caplog.at_level("WARNING", logger="monai_im"):
        Suggester(study, progress=False).run()
    assert "MLflow: the suggestions are not logged" in caplog.text
    assert (study.output_dir / "suggestions" / "suggestions.csv").is_file()
