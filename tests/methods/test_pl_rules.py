"""The pseudo-label rules for weak teachers: case acceptance, k-of-n votes, class gates, their statistics."""

from __future__ import annotations

import pytest
import torch

from monai_im.constants import IGNORE_INDEX
from monai_im.methods import GenerationContext, InconsistencyMask, build_method
from monai_im.methods.pl_rules import teacher_certainty, vote_count, vote_mask
from monai_im.selftrain.pseudo_classes import class_batch, class_set_stats
from monai_im.transforms import inconsistency_mask, mask_label


def _probs(class_maps: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """Probabilities (E, B, C, *spatial) whose argmax is the class maps (E, B, *spatial)."""
    onehot = torch.nn.functional.one_hot(class_maps.long(), num_classes).movedim(-1, 2).float()
    return 0.1 + 0.7 * onehot


def _teacher_volumes() -> torch.Tensor:
    """3 teachers x 2 cases of 8^3 class maps (3 classes). Case 0: organ 1 only, all teachers agree (organ 2
    empty in every map). Case 1: organ 1 agreed; teacher 2 finds only half of organ 2."""
    maps = torch.zeros(3, 2, 8, 8, 8, dtype=torch.long)
    maps[:, :, 1:4, 1:4, 1:4] = 1
    maps[:, 1, 4:8, 4:8, 4:8] = 2
    maps[2, 1, 4:8, 4:8, 6:8] = 0
    return maps


@pytest.mark.parametrize("reduction", ["mean", "min"])
def test_case_agreement_keeps_the_case_the_teachers_agree_on_and_drops_the_other(reduction):
    probs = _probs(_teacher_volumes())
    strict = InconsistencyMask(
        mode="multiclass", foreground_exceeds_im=False, case_agreement=0.9, case_agreement_reduction=reduction
    )
    out = strict(probs)
    # case 0: organ 2 empty in all teachers and in the ensemble label counts as agreement (1.0), even for min;
    # case 1: teacher 2's IoU of organ 2 with the majority label is 32 / 64
    expected = [1.0, 0.75 if reduction == "mean" else 0.5]
    assert out.certainty.tolist() == pytest.approx(expected)
    assert out.accepted.tolist() == [True, False]
    lenient = InconsistencyMask(
        mode="multiclass", foreground_exceeds_im=False, case_agreement=0.4, case_agreement_reduction=reduction
    )
    assert lenient(probs).accepted.tolist() == [True, True]
    # the rule only drops cases: label and IM are today's
    label, im = inconsistency_mask(probs, mode="multiclass")
    assert torch.equal(out.label, label) and torch.equal(out.im, im)


def test_case_agreement_by_dice_and_without_the_rule_no_certainty():
    probs = _probs(_teacher_volumes())
    dice = teacher_certainty(probs, "multiclass", 0.5, metric="dice", reduction="mean")
    assert dice.tolist() == pytest.approx([1.0, (1.0 + 2 * 32 / 96) / 2])
    assert InconsistencyMask(mode="multiclass")(probs).certainty is None


def test_vote_two_of_three_labels_and_masks_where_unanimity_cuts_out():
    # voxels along W; each teacher's class: unanimous 0, 2-of-3 class 1, a three-way split, unanimous 2, 1
    votes = torch.tensor([[0, 1, 1, 2, 1], [0, 1, 2, 2, 1], [0, 2, 0, 2, 1]])[
        :, None, None, :
    ]  # (E, B, H, W)
    probs = _probs(votes)
    unanimous = InconsistencyMask(mode="multiclass", min_foreground=0)(probs)
    assert unanimous.label.flatten().tolist() == [0, 0, 0, 2, 1]
    assert unanimous.im.flatten().tolist() == [0, 1, 1, 0, 0]
    for vote in (2, "majority", "2"):
        two = InconsistencyMask(mode="multiclass", min_foreground=0, vote=vote)(probs)
        assert two.label.flatten().tolist() == [0, 1, 0, 2, 1]
        assert two.im.flatten().tolist() == [0, 0, 1, 0, 0]
    three = InconsistencyMask(mode="multiclass", min_foreground=0, vote=3)(probs)
    assert torch.equal(three.label, unanimous.label) and torch.equal(three.im, unanimous.im)


def test_vote_binary_and_ties_and_bounds():
    # binary: foreground where 2 of 3 say so, background where 2 of 3 say so, never an IM with 3 teachers
    fg = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float32)
    probs = (0.1 + 0.8 * fg)[:, None, None, None, :]
    label, im = vote_mask(probs, "binary", 0.5, k=2)
    assert label.flatten().tolist() == [1, 1, 0, 0] and im.sum() == 0
    # 1 of 2 teachers: a split vote is a tie, cut out (binary and multiclass)
    label, im = vote_mask(probs[:2], "binary", 0.5, k=1)
    assert label.flatten().tolist() == [1, 1, 0, 0] and im.flatten().tolist() == [0, 0, 1, 0]
    _, im = vote_mask(_probs(torch.tensor([[1, 1], [1, 2]])[:, None, None, :]), "multiclass", 0.5, k=1)
    assert im.flatten().tolist() == [0, 1]
    assert vote_count("majority", 3) == 2 and vote_count("majority", 4) == 3 and vote_count(None, 3) is None
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        InconsistencyMask(mode="multiclass", vote=4)(probs)
    with pytest.raises(ValueError, match="vote must be"):
        InconsistencyMask(vote="most")


class _ClassMapTeacher(torch.nn.Module):
    """Reads the class map in its input image and predicts it, except that it also gives class 2 to the
    voxels of value 3 (a look-alike the truth calls background)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, 0].round().long()
        cls = torch.where(cls == 3, 2, cls)
        return 10.0 * torch.nn.functional.one_hot(cls, 3).movedim(-1, 1).float()


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    """An 8^3 image holding its class map: organ 1 (27 voxels), organ 2 (8 voxels), a look-alike of organ 2
    (56 voxels, truth background)."""
    image = torch.zeros(1, 8, 8, 8)
    image[:, 0:3, 0:3, 0:3] = 1
    image[:, 6:8, 6:8, 6:8] = 2
    image[:, 6:8, 0:7, 0:4] = 3
    return image, torch.where(image == 3, 0, image)


def test_class_gate_ignores_the_organ_the_teachers_score_badly_and_keeps_the_other(tmp_path):
    image, truth = _case()
    teachers = [_ClassMapTeacher().eval() for _ in range(3)]
    context = GenerationContext(
        generation=1,
        teachers=teachers,
        teacher_results=[],
        datalist={"validation": [{"image": image, "label": truth}] * 2},
        eval_transforms=lambda item: item,
        device=torch.device("cpu"),
        inferer=None,
        batch_size=2,
        seed=0,
        output_dir=tmp_path,
    )
    method = build_method("im", mode="multiclass", class_gate=0.5, foreground_exceeds_im=False)
    stats = method.prepare_generation(context)
    assert method.gated_classes == (2,)
    assert stats["gate_dice_class_1"] == 1.0 and stats["classes_gated"] == 1.0
    assert stats["gate_dice_class_2"] == pytest.approx(2 * 8 / (8 + 64))
    probs = method.activation(method.predict(teachers, image[None]), channel_dim=2)
    out = method(probs)
    organ2 = (image[None] == 2) | (image[None] == 3)
    assert out.im[organ2].eq(1).all() and out.im[~organ2].eq(0).all()
    target = mask_label(out.label, out.im, policy="ignore")  # what the loss sees under label_policy ignore
    assert target[organ2].eq(IGNORE_INDEX).all(), "the gated organ is ignored, never taught as background"
    assert target[image[None] == 1].eq(1).all() and out.accepted.tolist() == [True]
    # without the gate the teachers' unanimous organ 2 (look-alike included) is taught
    ungated = InconsistencyMask(mode="multiclass")(probs)
    assert ungated.label[organ2].eq(2).all() and ungated.im.sum() == 0


def test_class_statistics_of_a_batch_and_a_set():
    image, truth = _case()
    maps = torch.stack([image[0].long()] * 2 + [torch.where(image[0] == 3, 0, image[0]).long()])[:, None]
    probs = _probs(torch.where(maps == 3, 2, maps), 3)
    result = InconsistencyMask(mode="multiclass", min_foreground=0)(probs)
    voxels, dice = class_batch(probs, result, truth[None], "multiclass")
    # organ 1: nothing cut; organ 2: the look-alike (56 voxels, teacher 2 says background) is in the IM
    assert voxels == [0, 56, 27, 64]
    assert dice == [[1.0, 1.0]]
    stats = class_set_stats([voxels, []], dice, [], [torch.tensor([[0.5, 0.7], [1.0, 0.0]])])
    assert stats == {
        "im_fraction_class_1": 0.0,
        "im_fraction_class_2": 56 / 64,
        "pl_dice_class_1": 1.0,
        "pl_dice_class_2": 1.0,
        "certainty_mean": pytest.approx(0.6),
        "certainty_kept_mean": 0.5,
    }
    assert class_batch(probs[:, :, :1], result, None, "binary") == ([], None)


@pytest.mark.slow
def test_a_tiny_3d_study_from_the_bundle_runs_with_every_rule(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from monai.bundle import run

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).resolve().parents[2] / "bundles/flare22_im/configs"
    out = tmp_path / "run"
    run(
        config_file=[str(configs / "train.json"), str(configs / "demo.json")],
        logging_file=False,
        dataset_dir=str(tmp_path / "data"),
        output_dir=str(out),
        demo_num_train=5,
        demo_num_val=1,
        demo_num_test=1,
        demo_shape=[32, 32, 32],
        labeled_fraction=0.34,
        patch_size=[32, 32, 32],
        epochs=1,
        min_steps=0,
        val_interval=1,
        num_students=2,  # an IM needs two teachers (one agrees with itself everywhere)
        num_teachers=2,
        num_generations=1,
        min_foreground=0,
        progress=False,
        vote="majority",
        case_agreement=0.0,
        case_agreement_reduction="min",
        case_agreement_metric="dice",
        class_gate=0.0,  # the tiny teachers are weak in every class: a higher gate would cut out all
    )
    folder = out / "generation_1" / "pseudo_labels"
    stats = json.loads((folder / "stats.json").read_text())
    rows = json.loads((folder / "datalist.json").read_text())["pseudo_labeled"]
    assert stats["images_kept"] == stats["unlabeled_images"] == len(rows) == 3  # certainty >= 0: all kept
    assert all(0.0 <= r["certainty"] <= 1.0 for r in rows)
    assert 0.0 <= stats["certainty_mean"] <= 1.0 and stats["classes_gated"] == 0  # a gate of 0 gates nothing
    assert 0.0 <= stats["im_fraction"] <= 1.0
    organs = range(1, 14)
    assert any(f"gate_dice_class_{c}" in stats for c in organs)
    assert any(f"im_fraction_class_{c}" in stats for c in organs)
    # the demo's unlabeled cases carry their truth: scored wherever the IM leaves voxels (tiny teachers may
    # disagree everywhere; the per-class scores themselves are tested on hand-made volumes above)
    assert stats["im_fraction"] == 1.0 or any(f"pl_dice_class_{c}" in stats for c in organs)
    study = json.loads((out / "study.json").read_text())
    assert "case_agreement" in json.dumps(study)


class _Trainings:
    """A student handler recording each trainer's epochs, and failing once in the fine-tuning phase
    (the study's process killed there)."""

    epochs: list[int] = []
    fail: bool = False

    def attach(self, trainer) -> None:
        from ignite.engine import Events

        _Trainings.epochs.append(trainer.state.max_epochs)

        @trainer.on(Events.EPOCH_COMPLETED)
        def _stop(engine) -> None:
            if _Trainings.fail and engine.state.max_epochs == 2 and engine.state.epoch == 2:
                _Trainings.fail = False
                raise KeyboardInterrupt("killed while fine-tuning")


def _finetune_study(make_study, data, out, **kwargs):
    method = InconsistencyMask(min_foreground=0, foreground_exceeds_im=False, finetune_epochs=2)
    return make_study(
        data, out, method=method, num_generations=1, epochs=1, student_handlers=[_Trainings()], **kwargs
    )


@pytest.mark.slow
def test_finetuning_trains_the_students_of_later_generations_on_labeled_only_and_resumes_alone(
    make_study, tiny_data, tmp_path
):
    import json

    _Trainings.epochs, _Trainings.fail = [], False
    plain = _finetune_study(make_study, tiny_data, tmp_path / "plain")
    plain.run()
    # generation 0 (2 students): one phase; generation 1: one epoch with pseudo-labels, then 2 labeled epochs
    assert _Trainings.epochs == [1, 1, 1, 2, 1, 2]
    folder = tmp_path / "plain" / "generation_1" / "student_0"
    result = json.loads((folder / "result.json").read_text())
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]
    assert [row.get("finetune", 0.0) for row in result["history"]] == [0.0, 1.0, 1.0]
    best = max(result["history"], key=lambda row: row["val_iou"])
    assert result["best_metric"] == pytest.approx(best["val_iou"])
    assert not (folder / "finetune").exists() and not (folder / "pretrain.json").exists()
    assert InconsistencyMask(finetune_epochs=2).finetune_items(0, {"labeled": [{"image": "a"}]}) is None
    assert InconsistencyMask(finetune_epochs=2).finetune_items(1, {"labeled": [{"image": "a"}]}) == [
        {"image": "a"}
    ]

    # killed in the fine-tuning of generation 1's first student: a new run fine-tunes it again, only that
    _Trainings.epochs, _Trainings.fail = [], True
    with pytest.raises(KeyboardInterrupt):
        _finetune_study(make_study, tiny_data, tmp_path / "killed").run()
    killed = tmp_path / "killed" / "generation_1" / "student_0"
    assert (killed / "pretrain.json").is_file() and not (killed / "result.json").exists()
    _Trainings.epochs = []
    _finetune_study(make_study, tiny_data, tmp_path / "killed").run()
    assert _Trainings.epochs == [2, 1, 2]
    resumed = json.loads((killed / "result.json").read_text())
    assert resumed["history"] == result["history"] and resumed["best_epoch"] == result["best_epoch"]
