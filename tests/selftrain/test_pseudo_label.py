from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image

from monai_im.io import load_json
from monai_im.methods import InconsistencyMask, ModelEnsemble
from monai_im.selftrain import PseudoLabeler, PseudoLabelResult
from monai_im.transforms.presets import image_segmentation_transforms


class ThresholdTeacher(torch.nn.Module):
    """Says foreground where the first channel is brighter than its own threshold."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - self.threshold) * 50.0


def _gradient_images(root: Path, n: int, size: int = 16) -> list[dict[str, str]]:
    """Grayscale images whose intensity grows along the first image axis (rows)."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    ramp = np.linspace(0, 255, size, dtype=np.float32)[:, None].repeat(size, 1)
    for i in range(n):
        img = np.clip(ramp + 10 * i, 0, 255).astype(np.uint8)
        p = root / f"img{i}.png"
        Image.fromarray(img).save(p)
        items.append({"image": str(p)})
    return items


@pytest.fixture
def setup(tmp_path):
    items = _gradient_images(tmp_path / "unlabeled", 5)
    transform = image_segmentation_transforms((16, 16), num_channels=1)
    teachers = [ThresholdTeacher(0.4), ThresholdTeacher(0.5), ThresholdTeacher(0.6)]
    return items, transform, teachers


def test_writes_im_cut_out_pairs_and_datalist(setup, tmp_path):
    items, transform, teachers = setup
    labeler = PseudoLabeler(
        InconsistencyMask(mode="binary"), batch_size=2, progress=False, num_figure_images=2
    )
    out = tmp_path / "pl"
    result = labeler(teachers, items, transform, out)
    assert result.stats["unlabeled_images"] == 5
    assert result.stats["images_kept"] == len(result.items) == 5
    assert 0 < result.stats["im_fraction"] < 0.5
    assert result.figure is not None and result.figure.teacher_masks.shape == (2, 3, 1, 16, 16)
    assert result.figure_path == str(out / "im_figure.png") and (out / "im_figure.png").is_file()
    assert not (out / "images").exists(), "no image copies unless asked for"
    raw = Compose(
        [LoadImaged(keys=["label", "im"], image_only=True), EnsureChannelFirstd(keys=["label", "im"])]
    )
    for entry in result.items:
        assert entry["image"] == items[entry["source"]]["image"], "the row refers to the original image"
        files = raw(entry)
        im = files["im"][0] > 127
        assert im.any(), "the teachers disagree on a band of intensities"
        assert (files["label"][0][im] == 0).all(), "IM cut out of the pseudo-label"
        # the training transforms cut the IM out of the original image when they load the pair
        d = transform(dict(entry))
        original = transform({"image": entry["image"]})["image"]
        assert (d["image"][:, im] == 0).all(), "IM cut out of the input image"
        assert torch.equal(d["image"][:, ~im], original[:, ~im])
        # all three teachers agree on foreground where the image is brighter than 0.6
        assert (original[0][d["label"][0] > 0] > 0.6 - 1 / 255).all()
    saved = load_json(out / "datalist.json")["pseudo_labeled"]
    assert len(saved) == 5
    assert all(not Path(row[k]).is_absolute() for row in saved for k in ("label", "im"))
    assert load_json(out / "stats.json")["images_kept"] == 5
    reloaded = PseudoLabelResult.load(out)
    assert reloaded.items == result.items and reloaded.figure_path == result.figure_path


def test_masked_image_copies_on_request(setup, tmp_path):
    items, transform, teachers = setup
    labeler = PseudoLabeler(InconsistencyMask(), batch_size=4, progress=False, save_masked_images=True)
    result = labeler(teachers, items, transform, tmp_path / "pl")
    load = Compose(
        [
            LoadImaged(keys=["masked_image", "im"], image_only=True),
            EnsureChannelFirstd(keys=["masked_image", "im"]),
        ]
    )
    for entry in result.items:
        d = load(entry)
        assert (d["masked_image"][0][d["im"][0] > 127] == 0).all()


def test_rejected_images_are_not_written(setup, tmp_path):
    items, transform, teachers = setup
    strategy = InconsistencyMask(mode="binary", max_im_fraction=0.0)
    result = PseudoLabeler(strategy, batch_size=4, progress=False)(
        teachers, items, transform, tmp_path / "pl"
    )
    assert result.stats["images_kept"] == 0 and result.items == []
    assert list((tmp_path / "pl" / "labels").iterdir()) == []


def test_model_ensemble_writes_no_im(setup, tmp_path):
    items, transform, teachers = setup
    result = PseudoLabeler(ModelEnsemble(mode="binary"), progress=False)(
        teachers, items, transform, tmp_path / "pl"
    )
    assert result.items and all("im" not in it for it in result.items)
    assert result.stats["im_fraction"] == 0


def test_hidden_truth_gives_label_quality(setup, tmp_path):
    items, transform, teachers = setup
    for it in items:  # truth: the same rule as the strictest teacher, as 0/255 masks
        img = np.array(Image.open(it["image"]))
        lab = Path(it["image"]).with_name(Path(it["image"]).stem + "_lab.png")
        Image.fromarray(((img / 255.0 > 0.6) * 255).astype(np.uint8)).save(lab)
        it["label"] = str(lab)
    result = PseudoLabeler(InconsistencyMask(), progress=False)(teachers, items, transform, tmp_path / "pl")
    assert result.stats["label_iou"] == pytest.approx(1.0, abs=0.02)


def test_failure_leaves_previous_output_untouched(setup, tmp_path, monkeypatch):
    items, transform, teachers = setup
    out = tmp_path / "pl"
    labeler = PseudoLabeler(InconsistencyMask(), batch_size=2, progress=False)
    labeler(teachers, items, transform, out)
    before = sorted(p.name for p in (out / "labels").iterdir())

    calls = {"n": 0}
    from monai_im.transforms import PseudoLabelFormat

    real = PseudoLabelFormat.write_label

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(PseudoLabelFormat, "write_label", failing)
    with pytest.raises(OSError, match="disk full"):
        labeler(teachers, items[:3], transform, out)
    assert sorted(p.name for p in (out / "labels").iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pl")], "no partial folder left behind"


def test_unreadable_image_stops_labelling_with_nothing_written(setup, tmp_path):
    """The next batches are read by a thread ahead of the teachers: a file that cannot be read must
    still stop the run (not end it early with a shorter set)."""
    items, transform, teachers = setup
    (Path(items[3]["image"])).write_bytes(b"not a png")
    out = tmp_path / "pl"
    labeler = PseudoLabeler(InconsistencyMask(), batch_size=2, progress=False)
    with pytest.raises(RuntimeError) as err:
        labeler(teachers, items, transform, out)
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("img3.png" in m for m in chain), chain
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pl")], "no partial folder left behind"


def test_refuses_strategy_without_pseudo_labels(setup, tmp_path):
    from monai_im.methods import LabeledOnly

    items, transform, teachers = setup
    with pytest.raises(ValueError, match="makes no pseudo-labels"):
        PseudoLabeler(LabeledOnly(), progress=False)(teachers, items, transform, tmp_path / "pl")


def test_compress_level_changes_file_size_not_content(setup, tmp_path):
    items, transform, teachers = setup
    outs = {}
    for level in (0, 9):
        labeler = PseudoLabeler(
            InconsistencyMask(),
            batch_size=4,
            progress=False,
            compress_level=level,
            save_masked_images=True,
        )
        outs[level] = labeler(teachers, items, transform, tmp_path / f"pl{level}")
    raw, packed = outs[0].items, outs[9].items
    assert len(raw) == len(packed) == 5
    for a, b in zip(raw, packed):
        for key in ("masked_image", "label", "im"):
            np.testing.assert_array_equal(np.asarray(Image.open(a[key])), np.asarray(Image.open(b[key])))
    assert sum(Path(a["masked_image"]).stat().st_size for a in raw) > sum(
        Path(b["masked_image"]).stat().st_size for b in packed
    )


@pytest.mark.parametrize("level", [-1, 10])
def test_bad_compress_level_is_refused(level):
    with pytest.raises(ValueError, match="compress_level"):
        PseudoLabeler(InconsistencyMask(), compress_level=level)


def test_reading_thread_hands_the_teachers_batches_in_their_memory_format(setup, tmp_path):
    """The one memory-format conversion of a batch happens while reading, not between the forward passes
    (the main thread of a CPU run does little but the teachers' work)."""
    import threading

    from monai_im.runtime.acceleration import RunSettings

    items, _, _ = setup
    transform = image_segmentation_transforms((16, 16), num_channels=3)  # one channel needs no conversion
    seen: list[tuple[str, bool]] = []

    class Recorder(ThresholdTeacher):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((threading.current_thread().name, x.is_contiguous(memory_format=torch.channels_last)))
            return super().forward(x)

    class Counting(RunSettings):
        conversions: list[str] = []

        def to_memory_format(self, tensor):
            out = super().to_memory_format(tensor)
            if isinstance(tensor, torch.Tensor) and out.data_ptr() != tensor.data_ptr():
                self.conversions.append(threading.current_thread().name)
            return out

    settings = Counting(inference_precision="fp32", channels_last=True)
    teachers = [Recorder(0.4), Recorder(0.5), Recorder(0.6)]
    labeler = PseudoLabeler(
        InconsistencyMask(mode="binary"), batch_size=2, progress=False, run_settings=settings
    )
    result = labeler(teachers, items, transform, tmp_path / "pl")
    assert result.stats["unlabeled_images"] == 5
    main = threading.main_thread().name
    assert len(seen) == 3 * 3 and all(name == main and cl for name, cl in seen), seen
    assert len(Counting.conversions) == 3, Counting.conversions  # once per batch, for all three teachers
    assert main not in Counting.conversions
