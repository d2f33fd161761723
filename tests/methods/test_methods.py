"""The hooks of each method (monai_im.methods), one behaviour at a time."""

from __future__ import annotations

import pytest
import torch

from monai_im.methods import (
    METHODS,
    AIMPlus,
    AIMPlusPlus,
    AugmentedFullData,
    ConsistencyLoss,
    EvalNetFilter,
    GenerationContext,
    IMPlus,
    IMPlusPlus,
    InputEnsemble,
    NoisyStudent,
    StudentContext,
    as_masks,
    build_method,
    method_options,
)
from monai_im.networks import IMUNet
from monai_im.selftrain.student import StudentResult

DATALIST = {
    "labeled": [{"image": "a.png", "label": "a_l.png"}, {"image": "b.png", "label": "b_l.png"}],
    "unlabeled": [{"image": "u.png", "label": "u_l.png"}],
}


def _pseudo(n: int, scores: list[float] | None = None) -> list[dict]:
    rows = [{"image": f"p{i}.png", "label": f"p{i}_l.png", "im": f"p{i}_im.png"} for i in range(n)]
    for row, s in zip(rows, scores or []):
        row["score"] = s
    return rows


# ------------------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_builds_with_its_defaults_and_describes_itself(name):
    method = build_method(name, mode="multilabel", threshold=0.4)
    assert method.name == name and method.describe()["method"] == name
    assert method.mode == "multilabel"
    assert "threshold" not in method_options(type(method)) or method.threshold == 0.4


def test_the_paper_family_is_complete():
    paper = {"ldt", "aldt", "fdt", "afdt", "model_ensemble", "input_ensemble", "consistency_loss"}
    paper |= {"noisy_student", "evalnet", "im", "aim", "im_plus", "aim_plus", "im_plus_plus", "aim_plus_plus"}
    continuous = {"fixmatch", "fixmatch_im", "mean_teacher", "mean_teacher_im", "cps", "cps_im"}
    assert set(METHODS) == paper | continuous


def test_a_bad_option_value_stops_the_bundle_in_one_line():
    with pytest.raises(SystemExit, match=r"^error: --method evalnet: evalnet_min_score must be in \[0, 1\]"):
        build_method("evalnet", exit_on_error=True, evalnet_min_score=2.0)
    with pytest.raises(ValueError, match="views"):
        build_method("input_ensemble", input_views=1)


# ------------------------------------------------------------------------------------- training items
def test_afdt_is_every_label_with_its_augmented_copies():
    items = AugmentedFullData(augmented_copies=2).training_items(DATALIST, [])
    assert len(items) == 3 * 3 and items.count({"image": "u.png", "label": "u_l.png"}) == 3
    assert AugmentedFullData().augmentation is not None


def test_aim_plus_keeps_the_augmented_labeled_set_beside_the_pseudo_labels():
    method = AIMPlus(augmented_copies=9)
    assert len(method.training_items(DATALIST, [], 0)) == 20
    assert len(method.training_items(DATALIST, _pseudo(4), 1)) == 20 + 4


def test_im_plus_plus_replicates_each_pseudo_label_by_its_score():
    method = IMPlusPlus()
    scores = [0.1, 0.65, 0.75, 0.85, 0.95, float("nan")]
    items = method.training_items(DATALIST, _pseudo(6, scores), 1)
    pseudo = [it["image"] for it in items if it["image"].startswith("p")]
    assert [pseudo.count(f"p{i}.png") for i in range(6)] == [1, 2, 3, 4, 5, 1]
    assert all("score" not in it for it in items)
    assert len(items) == 2 + 16  # the labeled images once each (IM+ starts from LDT)
    aim = AIMPlusPlus(augmented_copies=9).training_items(DATALIST, _pseudo(1, [0.95]), 1)
    assert len(aim) == 20 + 5


# ------------------------------------------------------------------------------------- noisy student
def test_noisy_student_widens_the_students_and_grows_the_noise():
    method = NoisyStudent()  # paper: 0.5 -> 1.5 for ISIC over 5 generations
    template = IMUNet(2, 3, 1, alpha=0.5)
    widths = [method.student_network(g, template).alpha for g in range(7)]
    assert widths == pytest.approx([0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 1.5])
    assert method.student_network(0, template) is template
    wider = method.student_network(3, template)
    assert sum(p.numel() for p in wider.parameters()) > sum(p.numel() for p in template.parameters())
    noise = [method.noise(g) for g in range(7)]
    assert noise[0] == 0.0 and noise[1] == pytest.approx(0.02) and noise[5] == pytest.approx(0.1)
    assert noise == sorted(noise) and noise[6] == noise[5]
    assert method.augmentation_for(0) is None and method.augmentation_for(1) is not None
    assert method.teacher_count(3) == 1
    custom = IMPlus(width_start=1.0, width_end=2.0, schedule_generations=2)
    assert [custom.width(g, 0.5) for g in (0, 1, 2, 3)] == pytest.approx([1.0, 1.5, 2.0, 2.0])


def test_noisy_student_widens_a_network_factory_and_refuses_networks_it_cannot_widen():
    method = NoisyStudent(width_end=1.0)
    factory = method.student_network(5, lambda: IMUNet(2, 1, 1, alpha=0.5))
    assert factory().alpha == pytest.approx(1.0)
    with pytest.raises(ValueError, match="widened"):
        method.student_network(2, torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="widened"):
        method.student_network(2, lambda: torch.nn.Conv2d(1, 1, 1))()


def test_aim_plus_starts_from_aldt_augmentation_then_noisy():
    method = AIMPlus()
    assert method.augmentation_for(0) is method.default_augmentation is not None
    assert method.augmentation_for(1) is not method.augmentation_for(0)


# ------------------------------------------------------------------------------------- input ensemble
class _Ramp(torch.nn.Module):
    """Logits that depend on the position (not flip-equivariant), plus the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :1])
        return x[:, :1] * 4 - 2 + ramp


def test_input_ensemble_uses_one_teacher_on_views_mapped_back():
    method = InputEnsemble(input_views=3)
    assert method.teacher_count(3) == 1
    x = torch.rand(2, 1, 8, 8)
    logits = method.predict([_Ramp(), None], x)
    assert logits.shape == (3, 2, 1, 8, 8)
    assert torch.allclose(logits[0], _Ramp()(x))
    flipped = _Ramp()(x.flip(2)).flip(2)  # view 1: flip of the first spatial axis, undone
    assert torch.allclose(logits[1], flipped)
    labels = method(torch.sigmoid(logits), x)
    assert labels.im is None and labels.label.shape == (2, 1, 8, 8)


# ------------------------------------------------------------------------------------- evalnet
class _ConstTeacher(torch.nn.Module):
    """Predicts a fixed mask (logit +-5) whatever the image."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.mask.expand(x.shape[0], -1, -1, -1) * 10 - 5).float()


def _context(teachers, labeled, validation) -> GenerationContext:
    def as_items(pairs):
        return [{"image": img, "label": lab} for img, lab in pairs]

    return GenerationContext(
        generation=1,
        teachers=teachers,
        teacher_results=[StudentResult(0, i, 0.5, 1, "x.pt") for i in range(len(teachers))],
        datalist={"labeled": as_items(labeled), "validation": as_items(validation)},
        eval_transforms=lambda d: d,
        device=torch.device("cpu"),
        inferer=None,
        batch_size=4,
        seed=0,
        output_dir=None,
    )


def _square(y0: int, y1: int, size: int = 64) -> torch.Tensor:
    m = torch.zeros(1, size, size)
    m[:, y0:y1, 16:48] = 1
    return m


def test_evalnet_training_pairs_are_teacher_masks_with_their_true_iou_and_truths_with_one():
    truth = _square(16, 48)
    teachers = [_ConstTeacher(truth), _ConstTeacher(_square(16, 32))]  # IoU 1.0 and 0.5
    method = EvalNetFilter()
    ctx = _context(teachers, [(torch.rand(3, 64, 64), truth)] * 2, [])
    images, masks, targets = method._pairs(ctx, "labeled")
    assert images.shape == (6, 3, 64, 64) and masks.shape == (6, 1, 64, 64)
    # per labeled batch (both images in one batch): teacher 0, teacher 1, then the ground truths
    assert targets.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5, 1.0, 1.0])
    assert torch.equal(masks[4], truth)


def test_evalnet_keeps_only_pseudo_labels_scored_at_least_min_score():
    method = EvalNetFilter(evalnet_min_score=0.75)

    class Scores:
        def score(self, images, masks):
            return torch.tensor([0.9, 0.5, 0.75])

    method.estimator = Scores()
    probs = torch.full((2, 3, 1, 4, 4), 0.9)  # both teachers: foreground everywhere
    out = method(probs, torch.rand(3, 3, 4, 4))
    assert out.accepted.tolist() == [True, False, True]
    assert out.score.tolist() == pytest.approx([0.9, 0.5, 0.75])


def test_evalnet_is_trained_and_reports_its_validation_correlation():
    truth = _square(8, 56)
    teachers = [_ConstTeacher(_square(8, 16)), _ConstTeacher(_square(8, 40))]
    method = EvalNetFilter(evalnet_alpha=0.25, evalnet_epochs=2, evalnet_batch_size=4)
    gen = torch.Generator().manual_seed(0)  # the same images whatever ran before in this process
    images = [torch.rand(3, 64, 64, generator=gen) for _ in range(2)]
    ctx = _context(teachers, [(images[0], truth)] * 4, [(images[1], truth)] * 2)
    stats = method.prepare_generation(ctx)
    assert stats["evalnet_pairs"] == 12 and stats["evalnet_val_pairs"] == 6
    assert "evalnet_pearson" in stats and method.estimator is not None
    scored = method(torch.full((2, 1, 1, 64, 64), 0.9), torch.rand(1, 3, 64, 64))
    assert scored.score is not None and 0.0 <= float(scored.score) <= 1.0


def test_im_plus_plus_trains_on_im_processed_pairs():
    truth = _square(16, 48)
    teachers = [_ConstTeacher(_square(16, 48)), _ConstTeacher(_square(16, 40))]  # disagree on rows 40..47
    method = IMPlusPlus(foreground_exceeds_im=False)
    images, masks, targets = method._pairs(
        _context(teachers, [(torch.rand(3, 64, 64), truth)], []), "labeled"
    )
    assert images.shape[0] == 2  # the IM pair and the ground truth
    assert (images[0, :, 40:48, 16:48] == 0).all(), "the IM is cut out of the image"
    assert masks[0, 0, 16:40, 16:48].all() and not masks[0, 0, 40:48].any()
    assert targets.tolist() == pytest.approx([1.0, 1.0]), "outside the IM the agreed label is exact"


def test_multiclass_masks_are_one_hot():
    label = torch.tensor([[[[0, 2], [1, 2]]]]).float()
    masks = as_masks(label, "multiclass", 3)
    assert masks.shape == (1, 3, 2, 2) and masks.sum(1).eq(1).all() and masks[0, 2, 0, 1] == 1


# ------------------------------------------------------------------------------------- consistency loss
def test_consistency_loss_starts_from_the_best_model_and_brings_its_own_step():
    method = ConsistencyLoss(consistency_weight=0.5)
    best = StudentResult(0, 1, 0.9, 3, "best.pt")
    assert method.initial_weights(0, [best]) is None and method.initial_weights(1, [best]) is best
    assert method.has_generations and not method.makes_pseudo_labels and method.teacher_count(3) == 1

    def context(generation):
        return StudentContext(
            generation=generation,
            index=0,
            seed=7,
            new_network=lambda: torch.nn.Identity(),
            unlabeled_loader=lambda seed: [{"image": torch.rand(2, 1, 4, 4)}],
        )

    assert method.iteration(context(0)) is None
    step = method.iteration(context(1))
    assert step is not None and step.weight == 0.5
