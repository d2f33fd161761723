from __future__ import annotations

import pytest
import torch

from monai_im.methods import FullData, InconsistencyMask, LabeledOnly, ModelEnsemble
from monai_im.transforms import inconsistency_mask


def _probs(votes: list[list[int]]) -> torch.Tensor:
    """(E, B=1, C=1, H=1, W) probabilities from 0/1 votes of E teachers along W."""
    v = torch.tensor(votes, dtype=torch.float32)
    return (0.1 + 0.8 * v)[:, None, None, None, :]


def test_im_strategy_matches_inconsistency_mask_and_paper_acceptance():
    # 3 teachers; pixels: 4 agreed foreground, 1 disagreement, 1 agreed background
    probs = _probs([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    out = InconsistencyMask(mode="binary")(probs)
    label, im = inconsistency_mask(probs, mode="binary")
    assert torch.equal(out.label, label) and torch.equal(out.im, im)
    assert out.label.flatten().tolist() == [1, 1, 1, 1, 0, 0]
    assert out.im.flatten().tolist() == [0, 0, 0, 0, 1, 0]
    assert out.accepted.tolist() == [True]


def test_im_strategy_rejects_when_im_exceeds_foreground():
    probs = _probs([[1, 1, 1, 0, 0], [1, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
    out = InconsistencyMask(mode="binary")(probs)
    assert out.label.sum() == 1 and out.im.sum() == 4
    assert out.accepted.tolist() == [False]
    relaxed = InconsistencyMask(mode="binary", foreground_exceeds_im=False)(probs)
    assert relaxed.accepted.tolist() == [True]


def test_model_ensemble_binary_is_unanimous_foreground_without_im():
    probs = _probs([[1, 1, 0], [1, 0, 0]])
    out = ModelEnsemble(mode="binary")(probs)
    assert out.im is None
    assert out.label.flatten().tolist() == [1, 0, 0]
    assert out.accepted.tolist() == [True]


def test_model_ensemble_multiclass_uses_mean_softmax():
    # two teachers, 3 classes, 1 pixel: teacher 0 votes class 1 weakly, teacher 1 votes class 2 strongly
    p = torch.tensor([[0.2, 0.45, 0.35], [0.1, 0.1, 0.8]])[:, None, :, None, None]
    out = ModelEnsemble(mode="multiclass")(p)
    assert out.label.item() == 2


def test_training_items_per_method():
    datalist = {
        "labeled": [{"image": "a.png", "label": "a_l.png"}],
        "unlabeled": [{"image": "b.png", "label": "b_l.png"}, {"image": "c.png", "label": "c_l.png"}],
    }
    pseudo = [{"image": "p.png", "label": "p_l.png", "im": "p_im.png"}]
    assert LabeledOnly().training_items(datalist, []) == datalist["labeled"]
    assert InconsistencyMask().training_items(datalist, pseudo) == datalist["labeled"] + pseudo
    fdt = FullData().training_items(datalist, [])
    assert [it["image"] for it in fdt] == ["a.png", "b.png", "c.png"]
    with pytest.raises(ValueError, match="full-data training needs labels"):
        FullData().training_items({"labeled": [], "unlabeled": [{"image": "x.png"}]}, [])


def test_strategy_validation_and_activation():
    with pytest.raises(ValueError, match="mode"):
        InconsistencyMask(mode="regression")
    with pytest.raises(ValueError, match="threshold"):
        ModelEnsemble(threshold=1.5)
    logits = torch.tensor([[[0.0, 2.0]]])
    assert torch.allclose(InconsistencyMask().activation(logits), torch.sigmoid(logits))
    soft = InconsistencyMask(mode="multiclass").activation(logits, channel_dim=-1)
    assert torch.allclose(soft.sum(-1), torch.ones(1, 1))
    assert not LabeledOnly.makes_pseudo_labels and InconsistencyMask.makes_pseudo_labels


def test_augmented_labeled_strategy_repeats_labeled_items():
    from monai_im.methods import AugmentedLabeled

    datalist = {"labeled": [{"image": "a.png", "label": "a_l.png"}, {"image": "b.png", "label": "b_l.png"}]}
    strategy = AugmentedLabeled(augmented_copies=9)
    items = strategy.training_items(datalist, [])
    assert len(items) == 20 and sum(it["image"] == "a.png" for it in items) == 10
    assert not strategy.makes_pseudo_labels and strategy.augmentation is not None
    with pytest.raises(ValueError, match="copies"):
        AugmentedLabeled(augmented_copies=-1)


def test_paper_augmentation_keeps_image_and_label_aligned():
    from monai.utils import set_determinism

    from monai_im.transforms import paper_augmentation

    set_determinism(0)
    label = torch.zeros(1, 16, 16)
    label[:, 2:7, 1:12] = 1  # an asymmetric block
    image = 0.2 + 0.6 * label.repeat(3, 1, 1)
    aug = paper_augmentation()
    views = [aug({"image": image.clone(), "label": label.clone()}) for _ in range(30)]
    moved = 0
    for v in views:
        img, lab = torch.as_tensor(v["image"]), torch.as_tensor(v["label"])
        assert img.shape == image.shape and lab.shape == label.shape
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert set(lab.unique().tolist()) <= {0.0, 1.0} and lab.sum() == label.sum()
        assert img[:, lab[0] > 0].mean() > img[:, lab[0] == 0].mean() + 0.2, "geometry applied to both"
        moved += not torch.equal(lab, label)
    assert moved > 10, "most views are flipped or rotated"
    set_determinism(None)


def test_student_seeds_of_different_studies_never_overlap():
    from monai_im.selftrain import StudyProtocol

    seeds = set()
    for base in range(3):
        protocol = StudyProtocol(seed=base)
        seeds |= {protocol.student_seed(g, k) for g in range(6) for k in range(5)}
    assert len(seeds) == 3 * 6 * 5


def test_augmented_im_starts_as_aldt_then_adds_pseudo_labels_once():
    from monai_im.methods import AugmentedInconsistencyMask

    datalist = {"labeled": [{"image": "a"}, {"image": "b"}], "unlabeled": [{"image": "u"}]}
    aim = AugmentedInconsistencyMask(mode="binary", augmented_copies=4, max_im_fraction=0.5)
    assert aim.makes_pseudo_labels and aim.augmentation is not None
    gen0 = aim.training_items(datalist, [])
    assert [it["image"] for it in gen0] == ["a"] * 5 + ["b"] * 5
    later = aim.training_items(datalist, [{"image": "p", "label": "q"}])
    assert [it["image"] for it in later] == ["a", "b", "p"]
    # pseudo-labels exactly as IM with the same options
    probs = _probs([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
    ref = InconsistencyMask(mode="binary", max_im_fraction=0.5)(probs)
    out = aim(probs)
    assert torch.equal(out.label, ref.label) and torch.equal(out.im, ref.im)
    assert torch.equal(out.accepted, ref.accepted)
    desc = aim.describe()
    assert desc["method"] == "aim" and desc["augmented_copies"] == 4 and desc["max_im_fraction"] == 0.5
