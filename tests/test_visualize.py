from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_im.visualize import plot_inconsistency_mask, plot_metric_over_generations, to_display


def im_inputs(n=2, teachers=2, mask_channels=1, image_channels=3, size=16, as_torch=False):
    rng = np.random.default_rng(0)
    images = rng.random((n, image_channels, size, size), dtype=np.float32)
    masks = (rng.random((n, teachers, mask_channels, size, size)) > 0.5).astype(np.float32)
    total = masks.sum(axis=1)
    im = ((total > 0) & (total < teachers)).any(axis=1, keepdims=True).astype(np.float32)
    pseudo = (total == teachers).astype(np.float32) * (1 - im)
    masked = images * (1 - im)
    arrays = [images, masks, im, pseudo, masked]
    return [torch.from_numpy(a) for a in arrays] if as_torch else arrays


def load_png(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


@pytest.mark.parametrize("as_torch", [False, True])
def test_im_figure_is_a_png_and_grows_with_teachers(tmp_path, as_torch):
    two = plot_inconsistency_mask(*im_inputs(teachers=2, as_torch=as_torch), tmp_path / "two.png")
    four = plot_inconsistency_mask(*im_inputs(teachers=4, as_torch=as_torch), tmp_path / "sub" / "four.png")
    w2, h2 = load_png(two)
    w4, h4 = load_png(four)
    assert w2 > 500 and h2 > 150
    assert w4 > w2 and h4 == h2
    # no temporary files left beside the figure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "two.png"]


def test_im_figure_rows_limited_and_titled(tmp_path):
    few = plot_inconsistency_mask(*im_inputs(n=2), tmp_path / "few.png", titles=["a.png", "b.png"])
    many = plot_inconsistency_mask(*im_inputs(n=9), tmp_path / "many.png", max_images=4)
    one = plot_inconsistency_mask(*im_inputs(n=9), tmp_path / "one.png", max_images=1)
    assert load_png(one)[1] < load_png(few)[1] < load_png(many)[1]


def test_im_figure_multilabel_grey_and_class_maps(tmp_path):
    multilabel = im_inputs(mask_channels=3, image_channels=1)
    assert load_png(plot_inconsistency_mask(*multilabel, tmp_path / "hela.png"))[0] > 0
    images, masks, im, _, masked = im_inputs(teachers=3)
    classes = np.random.default_rng(1).integers(0, 5, size=masks.shape).astype(np.float32)
    out = plot_inconsistency_mask(images, classes, im, classes[:, 0], masked, tmp_path / "suim.png")
    load_png(out)
    # MetaTensor-like (W, H) order is accepted too
    assert load_png(plot_inconsistency_mask(*im_inputs(), tmp_path / "t.png", reverse_indexing=True))


def test_im_figure_rejects_mismatched_shapes(tmp_path):
    images, masks, im, pseudo, masked = im_inputs()
    with pytest.raises(ValueError, match="teacher_masks"):
        plot_inconsistency_mask(images, masks[:, :, :, :8], im, pseudo, masked, tmp_path / "x.png")
    with pytest.raises(ValueError, match="im: expected 4 dims"):
        plot_inconsistency_mask(images, masks, im[:, 0], pseudo, masked, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_to_display_rules():
    data, opts = to_display(np.ones((1, 4, 5)))
    assert data.shape == (4, 5) and opts["cmap"] == "gray"
    data, _ = to_display(np.ones((2, 4, 5)), "mask")
    assert data.shape == (4, 5, 3) and data[..., 2].max() == 0
    data, opts = to_display(np.arange(15.0).reshape(1, 3, 5) % 5, "mask")
    assert data.shape == (3, 5) and opts["cmap"] == "tab20"
    data, opts = to_display(np.eye(4)[:, :, None].repeat(2, axis=2), "mask")  # one-hot, 4 classes
    assert data.shape == (4, 2) and opts["cmap"] == "tab20"
    with pytest.raises(ValueError):
        to_display(np.ones((4, 3, 3)), "image")


@pytest.mark.parametrize("as_torch", [False, True])
def test_metric_plot_single_and_seeds(tmp_path, as_torch):
    seeds = [[0.60, 0.65, 0.70], [0.62, 0.66, 0.71], [0.61, None, 0.72]]
    results = {
        "IM": torch.tensor(seeds[:2]) if as_torch else seeds,
        "Model Ensemble": [0.6, 0.63, 0.64, 0.65],
    }
    out = plot_metric_over_generations(
        results, tmp_path / "iou.png", "IoU", title="ISIC 2018", references={"LDT": 0.671, "FDT": 0.751}
    )
    w, h = load_png(out)
    assert w >= 500 and h >= 300
    out = plot_metric_over_generations(
        {"IM": [9.9, 4.0, 2.8]}, tmp_path / "mcce.png", "MCCE", higher_is_better=False, band="std"
    )
    load_png(out)


def test_metric_plot_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        plot_metric_over_generations({}, tmp_path / "a.png", "IoU")
    with pytest.raises(ValueError, match="IM"):
        plot_metric_over_generations({"IM": []}, tmp_path / "a.png", "IoU")
    with pytest.raises(ValueError, match="mix"):
        plot_metric_over_generations({"IM": [0.5, [0.6]]}, tmp_path / "a.png", "IoU")
    with pytest.raises(ValueError, match="band"):
        plot_metric_over_generations({"IM": [0.5]}, tmp_path / "a.png", "IoU", band="iqr")
