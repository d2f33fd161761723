from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_im.methods.quality import QualityEstimator, QualityReport, _random_dihedral, correlation, mask_iou
from monai_im.networks import EvalNet

SIZE = 64


def _discs(
    radii: torch.Tensor, cy: torch.Tensor | None = None, cx: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, 1, 64, 64) float masks of discs of the given radii (centred unless ``cy``/``cx`` are given)."""
    n = radii.numel()
    cy = torch.full((n,), SIZE / 2) if cy is None else cy.float()
    cx = torch.full((n,), SIZE / 2) if cx is None else cx.float()
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    dist2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    return (dist2 <= radii.float()[:, None, None] ** 2).float()[:, None]


def _disc_task(n: int, seed: int, r_min: float = 4.0, r_max: float = 28.0):
    """Images show a fixed true disc; candidates are discs of other radii and small shifts; the target is
    each candidate's IoU against the true disc."""
    g = torch.Generator().manual_seed(seed)
    truth = _discs(torch.full((n,), 14.0))
    shift = lambda: SIZE / 2 + torch.randint(-2, 3, (n,), generator=g)  # noqa: E731
    masks = _discs(torch.linspace(r_min, r_max, n), shift(), shift())
    images = truth.expand(-1, 3, -1, -1).clone()
    return images, masks, mask_iou(masks, truth)


@pytest.fixture(scope="module")
def trained():
    images, masks, targets = _disc_task(24, seed=0)
    val = _disc_task(12, seed=1, r_min=5.0, r_max=27.0)
    est = QualityEstimator(alpha=0.5, epochs=20, batch_size=8, learning_rate=3e-3, seed=0)
    report = est.fit(images, masks, targets, val=val)
    return est, report, (images, masks, targets), val


# ---------------------------------------------------------------- mask_iou


def test_mask_iou_hand_made_cases():
    pred = torch.zeros(4, 1, 4, 4)
    truth = torch.zeros(4, 1, 4, 4)
    pred[0, 0, :2] = 1  # 8 pixels
    truth[0, 0, 1:3] = 1  # 8 pixels, 4 shared -> 4 / 12
    pred[1], truth[1] = 1, 1  # identical -> 1
    truth[2, 0, 0, 0] = 1  # empty prediction, non-empty truth -> 0
    # image 3: both empty -> 1
    torch.testing.assert_close(mask_iou(pred, truth), torch.tensor([1 / 3, 1.0, 0.0, 1.0]))
    # bool and 0/255 masks count the same; multi-channel elements are pooled over channels
    assert torch.equal(mask_iou(pred.bool(), truth * 255), mask_iou(pred, truth))
    two = torch.zeros(1, 2, 2, 2)
    gt = torch.zeros(1, 2, 2, 2)
    two[0, 0, 0, 0] = two[0, 1, 0, 0] = 1
    gt[0, 0, 0, 0] = gt[0, 1, 1, 1] = 1  # 1 shared of 3 elements in the union
    torch.testing.assert_close(mask_iou(two, gt), torch.tensor([1 / 3]))


def test_mask_iou_valid_region():
    pred = torch.zeros(2, 2, 4, 4)
    truth = torch.zeros(2, 2, 4, 4)
    pred[:, :, :, :2] = 1
    truth[:, :, :, 1:3] = 1  # overall 1/3 per image
    valid = torch.zeros(2, 1, 4, 4)
    valid[0, :, :, 1] = 1  # only the shared column -> 1
    valid[1, :, :, 3] = 1  # a column where both are empty -> 1 (both empty)
    torch.testing.assert_close(mask_iou(pred, truth), torch.tensor([1 / 3, 1 / 3]))
    torch.testing.assert_close(mask_iou(pred, truth, valid), torch.tensor([1.0, 1.0]))
    # per-channel valid: channel 0 keeps column 0 (pred only), channel 1 keeps column 1 (shared)
    valid_c = torch.zeros(1, 2, 4, 4)
    valid_c[0, 0, :, 0] = 1
    valid_c[0, 1, :, 1] = 1
    torch.testing.assert_close(mask_iou(pred[:1], truth[:1], valid_c), torch.tensor([0.5]))


def test_mask_iou_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"valid should be \(B, 1 or C"):
        mask_iou(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"valid should be \(B, 1 or C"):
        mask_iou(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 3))


# ---------------------------------------------------------------- correlation


def test_correlation_pearson_spearman_and_degenerate_cases():
    x = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9])
    pearson, spearman = correlation(x, x**3)  # monotone but not linear
    assert spearman == pytest.approx(1.0)
    assert pearson == pytest.approx(float(np.corrcoef(x.numpy(), (x**3).numpy())[0, 1]), abs=1e-6)
    assert pearson < 0.99
    assert correlation(x, -x)[1] == pytest.approx(-1.0)
    # ties share their average rank: ranks [1, 2.5, 2.5, 4] and [1, 2, 3, 4]
    tied, ranks = torch.tensor([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.5, 2.5, 4.0])
    expected = float(np.corrcoef(ranks, np.arange(1.0, 5.0))[0, 1])
    assert correlation(tied, torch.tensor([1.0, 2.0, 3.0, 4.0]))[1] == pytest.approx(expected)
    assert correlation(x[:2], x[:2]) == (None, None)
    assert correlation(torch.ones(5), x) == (None, None)
    with pytest.raises(ValueError, match="5 values but true has 4"):
        correlation(x, x[:4])


# ---------------------------------------------------------------- QualityEstimator


def test_fit_learns_the_iou_of_the_mask(trained):
    est, report, (images, masks, targets), val = trained
    assert est.history[-1] < 0.5 * est.history[0]
    assert report.final_loss == est.history[-1]
    scores = est.score(images, masks)
    pearson, spearman = correlation(scores, targets)
    assert pearson is not None and pearson > 0.6
    assert spearman is not None and spearman > 0.6
    # in eval mode it beats predicting the mean target, which an untrained network does not
    assert ((scores - targets) ** 2).mean() < targets.var(unbiased=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        untrained = QualityEstimator(network=EvalNet(2, 3, 1, alpha=0.5))
    assert ((untrained.score(images, masks) - targets) ** 2).mean() > targets.var(unbiased=False)


def test_report_describes_the_fit_and_the_validation(trained):
    est, report, (images, _, _), (val_images, val_masks, val_targets) = trained
    assert isinstance(report, QualityReport)
    assert (report.pairs, report.epochs, report.val_pairs) == (24, 20, 12)
    predicted = est.score(val_images, val_masks)
    pearson, spearman = correlation(predicted, val_targets)
    assert report.pearson == pytest.approx(pearson) and report.spearman == pytest.approx(spearman)
    assert report.mae == pytest.approx(float((predicted - val_targets).abs().mean()))
    assert report.pearson > 0.5 and report.mae < 0.2
    d = report.to_dict()
    assert set(d) == {"pairs", "epochs", "final_loss", "val_pairs", "pearson", "spearman", "mae"}
    assert d["final_loss"] == report.final_loss


def test_score_is_deterministic_batched_and_in_unit_range(trained):
    est, _, (images, masks, _), _ = trained
    one = est.score(images, masks, batch_size=1)
    eight = est.score(images, masks, batch_size=8)
    assert one.shape == (24,) and one.dtype == torch.float32
    torch.testing.assert_close(one, eight, atol=1e-5, rtol=0)
    assert torch.equal(est.score(images, masks), est.score(images, masks))
    assert ((one >= 0) & (one <= 1)).all()
    assert not torch.allclose(one, one.mean().expand_as(one), atol=1e-3)  # not a constant
    assert not est.network.training


def test_state_dict_round_trip(trained):
    est, _, (images, masks, _), _ = trained
    other = QualityEstimator(alpha=0.5)
    other.load_state_dict(est.state_dict())
    torch.testing.assert_close(other.score(images, masks), est.score(images, masks))
    with pytest.raises(ValueError, match="not EvalNet weights"):
        QualityEstimator().load_state_dict({"weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="no network yet"):
        QualityEstimator().score(images, masks)


def test_same_seed_same_weights_other_seed_differs():
    images, masks, targets = _disc_task(6, seed=2)
    fits = []
    for seed in (3, 3, 4):
        est = QualityEstimator(alpha=0.25, epochs=2, batch_size=4, seed=seed)
        est.fit(images, masks, targets)
        fits.append(est.state_dict())
    for key, value in fits[0].items():
        torch.testing.assert_close(fits[1][key], value)
    assert not torch.allclose(fits[0]["head.weight"], fits[2]["head.weight"])


def test_given_network_is_copied_for_every_fit():
    images, masks, targets = _disc_task(4, seed=3)
    torch.manual_seed(0)
    template = EvalNet(2, 3, 1, alpha=0.25)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    est = QualityEstimator(epochs=1, batch_size=2, network=template)
    before_fit = est.score(images, masks)  # usable as given, before any fit
    assert before_fit.shape == (4,)
    est.fit(images, masks, targets)
    first = {k: v.clone() for k, v in est.state_dict().items()}
    est.fit(images, masks, targets)
    for key, value in template.state_dict().items():
        torch.testing.assert_close(value, before[key])  # the template itself is not trained
    for key, value in est.state_dict().items():
        torch.testing.assert_close(value, first[key])  # both fits started from the template
    assert not torch.allclose(first["head.weight"], before["head.weight"])


def test_progress_bar(monkeypatch, capsys):
    monkeypatch.setenv("MONAI_IM_PROGRESS", "1")
    images, masks, targets = _disc_task(2, seed=4)
    QualityEstimator(alpha=0.25, epochs=2, batch_size=2, progress=True).fit(images, masks, targets)
    assert "EvalNet" in capsys.readouterr().err
    QualityEstimator(alpha=0.25, epochs=1, batch_size=2).fit(images, masks, targets)
    assert "EvalNet" not in capsys.readouterr().err


def test_bad_inputs_raise_one_line_errors():
    images, masks, targets = _disc_task(3, seed=5)
    est = QualityEstimator(alpha=0.25, epochs=1)
    cases = [
        ((images, masks[:2], targets), "same N and spatial size"),
        ((images, masks[..., :48], targets), "same N and spatial size"),
        ((images[..., :48, :48], masks[..., :48, :48], targets), "at least 64"),
        ((images[:, :1], masks, targets), "expected 3 image and 1 mask channels"),
        ((images, torch.cat([masks, masks], 1), targets), "expected 3 image and 1 mask channels"),
        ((images[0], masks[0], targets), r"\(N, C, \*spatial\)"),
        ((images, masks, targets[:2]), "3 pairs but 2 targets"),
        ((images, masks, targets + 1.5), r"in \[0, 1\]"),
        ((images[:0], masks[:0], targets[:0]), "no training pairs"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            est.fit(*args)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="fit\\(val\\)"):
        est.fit(images, masks, targets, val=(images, masks, targets[:1]))
    for kwargs in ({"epochs": 0}, {"batch_size": 0}, {"alpha": 0.0}, {"learning_rate": -1.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            QualityEstimator(**kwargs)


def test_augmentation_is_one_dihedral_transform_per_sample_shared_by_channels():
    base = torch.arange(16.0).view(1, 1, 4, 4)
    x = torch.cat([base, base + 100.0], dim=1).expand(64, -1, -1, -1)  # image and mask channels
    out = _random_dihedral(x, torch.Generator().manual_seed(0))
    variants = []
    for k in range(4):
        r = torch.rot90(base, k, dims=(-2, -1))
        variants += [r, r.flip(-1)]
    seen = set()
    for sample in out:
        matches = [i for i, v in enumerate(variants) if torch.equal(sample[:1], v[0])]
        assert len(matches) == 1
        assert torch.equal(sample[1:], sample[:1] + 100.0)  # the second channel got the same transform
        seen.add(matches[0])
    assert seen == set(range(8))  # all eight rotations/reflections occur
    again = _random_dihedral(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
