"""Volumes end to end: the pseudo-label format (PNG / NIfTI with the affine), the volume transforms and
sliding-window pseudo-labelling of a volume larger than the patch."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import LoadImage

from monai_im.methods import build_method
from monai_im.networks import IMUNet
from monai_im.selftrain import PseudoLabeler
from monai_im.transforms import (
    PseudoLabelFormat,
    image_segmentation_transforms,
    volume_patch_transforms,
    volume_segmentation_transforms,
)

# an LPS-like affine with non-isotropic spacing and an offset origin, as CT scanners write them
AFFINE = np.array([[-1.5, 0, 0, 120.0], [0, -1.5, 0, 90.0], [0, 0, 3.0, -200.0], [0, 0, 0, 1]])


def _ct(path: Path, shape=(40, 36, 20), seed=0, classes=3) -> tuple[Path, Path]:
    """A CT-like volume (HU) with ``classes - 1`` box organs, and its label map, as NIfTI."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[4:-4, 4:-4, :] = 40 + rng.integers(-20, 20, size=(shape[0] - 8, shape[1] - 8, shape[2])).astype(
        np.int16
    )
    label = np.zeros(shape, dtype=np.uint8)
    for c in range(1, classes):
        x0 = 6 + 12 * (c - 1)
        label[x0 : x0 + 10, 10:26, 4:16] = c
        hu[x0 : x0 + 10, 10:26, 4:16] = 120 * c
    image_file, label_file = path / f"ct{seed}.nii.gz", path / f"ct{seed}_label.nii.gz"
    nib.save(nib.Nifti1Image(hu, AFFINE), image_file)
    nib.save(nib.Nifti1Image(label, AFFINE), label_file)
    return image_file, label_file


def test_2d_masks_are_written_0_255_and_class_maps_as_indices(tmp_path):
    mask = np.zeros((1, 8, 6), np.float32)
    mask[0, 2:5, 1:4] = 1
    binary = PseudoLabelFormat("binary").write_label(tmp_path / "m.png", mask)
    assert set(np.unique(np.asarray(LoadImage(image_only=True)(binary)))) == {0, 255}
    classes = mask * 2
    classes[0, 0, 0] = 1
    multi = PseudoLabelFormat("multiclass").write_label(tmp_path / "c.png", classes)
    read = image_segmentation_transforms((8, 6), num_channels=1, mode="multiclass", label_channels=3)
    image = tmp_path / "i.png"
    PseudoLabelFormat().write_image(image, np.zeros((1, 8, 6), np.float32))
    out = read({"image": str(image), "label": str(multi)})
    assert torch.equal(out["label"], torch.as_tensor(classes))  # class 2 stays 2 (not 2 * 255)


def test_volume_pseudo_labels_are_nifti_with_the_affine(tmp_path):
    files = PseudoLabelFormat("multiclass")
    assert files.suffix(3) == ".nii.gz" and files.suffix(2) == ".png"
    label = np.random.default_rng(0).integers(0, 4, size=(1, 6, 5, 4)).astype(np.float32)
    path = files.write_label(files.path(tmp_path, "case", 3), label, AFFINE)
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, AFFINE)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), label[0].astype(np.uint8))
    im = files.write_im(tmp_path / "im.nii.gz", (label > 2).astype(np.float32), AFFINE)
    assert set(np.unique(np.asarray(nib.load(im).dataobj))) <= {0, 1}
    with pytest.raises(ValueError, match="2D or 3D"):
        files.suffix(4)


def test_volume_transforms_reorient_resample_and_window(tmp_path):
    image, label = _ct(tmp_path)
    out = volume_segmentation_transforms(pixdim=(3.0, 3.0, 3.0), num_classes=3)(
        {"image": str(image), "label": str(label)}
    )
    assert out["image"].shape == (1, 20, 18, 20)  # 40 x 1.5 mm -> 20 x 3 mm; z keeps 3 mm
    assert float(out["image"].min()) == 0.0 and float(out["image"].max()) <= 1.0
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0, 2.0}
    assert tuple(nib.aff2axcodes(out["image"].affine.numpy())) == ("R", "A", "S")
    patches = volume_patch_transforms(
        volume_segmentation_transforms(pixdim=(3.0, 3.0, 3.0), num_classes=3),
        patch_size=(8, 8, 8),
        num_classes=3,
        num_samples=3,
    )({"image": str(image), "label": str(label)})
    assert len(patches) == 3 and all(p["image"].shape == (1, 8, 8, 8) for p in patches)


def test_sliding_window_pseudo_labelling_of_a_volume_larger_than_the_patch(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    items = [{"image": str(_ct(data, seed=s)[0])} for s in range(2)]
    transform = volume_segmentation_transforms(pixdim=(3.0, 3.0, 3.0), num_classes=3)
    torch.manual_seed(0)
    teachers = [IMUNet(3, 1, 3, alpha=0.25).eval() for _ in range(2)]
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=4, overlap=0.25)  # volume: 20x18x20
    method = build_method("im", mode="multiclass", min_foreground=0, foreground_exceeds_im=False)
    labeler = PseudoLabeler(method, inferer=inferer, batch_size=1, progress=False)
    result = labeler(teachers, items, transform, tmp_path / "pl")
    assert len(result.items) == 2
    for item, original in zip(result.items, items):
        assert item["image"] == original["image"] and item["label"].endswith(".nii.gz")
        preprocessed = transform({"image": original["image"]})["image"]
        assert tuple(preprocessed.shape[1:]) == (20, 18, 20)  # the teachers' grid: RAS, 3 mm
        # written on the source CT's own grid (LPS, 1.5 x 1.5 x 3 mm): it opens as its segmentation
        source = nib.load(original["image"])
        for key in ("label", "im"):
            written = nib.load(item[key])
            assert written.shape == source.shape == (40, 36, 20)
            np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
        # the written label is the teachers' ensemble on the whole volume (argmax of the mean), outside the
        # IM, once read back onto the teachers' grid as training reads it
        x = preprocessed.as_tensor()[None]
        with torch.no_grad():
            probs = torch.stack([torch.softmax(inferer(x, t), 1) for t in teachers])
        expected = probs.mean(0).argmax(1)[0].numpy()
        label = transform({"image": original["image"], "label": item["label"]})["label"][0].numpy()
        im = transform({"image": original["image"], "label": item["im"]})["label"][0].numpy() > 0
        assert set(np.unique(np.asarray(nib.load(item["im"]).dataobj)).tolist()) <= {0, 1}
        agreement = (label[~im] == expected[~im]).mean()
        assert agreement > 0.99  # bf16 teachers on CPU may flip a few near-tied voxels
        # read back for training: label and IM land on the grid of the preprocessed volume
        back = transform({"image": original["image"], "label": item["label"], "im": item["im"]})
        assert back["label"].shape == back["image"].shape
    assert (tmp_path / "pl" / "im_figure.png").is_file()


def test_the_2d_chain_reads_2d_nifti_images_and_masks(tmp_path):
    from monai_im.data.preflight import read_facts

    rng = np.random.default_rng(0)
    image = (rng.random((20, 24)) * 255).astype(np.uint8)
    mask = np.zeros((20, 24), np.uint8)
    mask[5:10, 4:12] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "m.nii.gz")
    out = image_segmentation_transforms((20, 24), num_channels=1)(
        {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "m.nii.gz")}
    )
    np.testing.assert_allclose(out["image"][0].numpy(), image / 255.0, atol=1e-6)
    np.testing.assert_array_equal(out["label"][0].numpy(), mask)
    facts = read_facts(tmp_path / "i.nii.gz")
    assert facts.error is None and facts.shape == [1, 20, 24] and facts.value_range == [0.0, 255.0]


def test_patches_of_a_volume_whose_label_is_all_ignored_are_uniform(tmp_path):
    from monai_im.transforms.presets import ClassBalancedPatchesd

    crop = ClassBalancedPatchesd(["image", "label"], "label", (4, 4, 4), num_classes=3, num_samples=2)
    crop.set_random_state(0)
    image = torch.rand(1, 8, 8, 8)
    ignored = {"image": image, "label": torch.full((1, 8, 8, 8), -1.0)}
    patches = crop(ignored)
    assert len(patches) == 2 and all(p["image"].shape == (1, 4, 4, 4) for p in patches)
    label = torch.zeros(1, 8, 8, 8)
    label[0, 6:, 6:, 6:] = 2  # a small organ in a corner: patches centred on it are drawn too
    centred = [crop({"image": image, "label": label}) for _ in range(6)]
    assert any(bool((p["label"] == 2).any()) for ps in centred for p in ps)


def test_a_3d_study_writes_pseudo_labels_on_each_source_grid_and_trains_on_them(make_study, tmp_path):
    """A tiny 3D IM study: generation 1's pseudo-label and IM files have the shape and affine of their source
    CT (LPS, 1.5 x 1.5 x 3 mm; the teachers saw it as RAS at 3 mm), and its students train on them."""
    import json

    from monai.handlers import from_engine
    from monai.transforms import Activationsd, AsDiscreted, Compose

    from monai_im.data.datalist import write_datalist
    from monai_im.losses import MaskedDiceCELoss
    from monai_im.methods import InconsistencyMask
    from monai_im.metrics.volume import PerClassDice

    data = tmp_path / "data"
    data.mkdir()
    pairs = [_ct(data, seed=s) for s in range(5)]
    entries = [{"image": str(image), "label": str(label)} for image, label in pairs]
    write_datalist(
        data / "datalist.json",
        {
            "labeled": entries[:2],
            "validation": entries[2:3],
            "unlabeled": [{"image": e["image"]} for e in entries[3:]],
        },
    )
    pre = volume_segmentation_transforms(pixdim=(3.0, 3.0, 3.0), num_classes=3)
    study = make_study(
        data,
        tmp_path / "study",
        network=lambda: IMUNet(3, 1, 3, alpha=0.25),
        method=InconsistencyMask(mode="multiclass", min_foreground=0, foreground_exceeds_im=False),
        loss_function=MaskedDiceCELoss(mode="multiclass"),
        train_transforms=volume_patch_transforms(pre, patch_size=(16, 16, 16), num_classes=3, num_samples=2),
        eval_transforms=pre,
        infer_transforms=pre,
        key_metric={"dice": PerClassDice(3, output_transform=from_engine(["pred", "label"]))},
        postprocessing=Compose([Activationsd("pred", softmax=True), AsDiscreted("pred", argmax=True)]),
        inferer=SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2),
        batch_size=2,
        num_generations=1,
    )
    summaries = study.run()
    folder = tmp_path / "study" / "generation_1" / "pseudo_labels"
    rows = json.loads((folder / "datalist.json").read_text())["pseudo_labeled"]
    assert len(rows) == 2 and summaries[1]["pseudo_labels"]["images_kept"] == 2
    for row in rows:
        source = nib.load(row["image"])
        for key in ("label", "im"):
            written = nib.load(folder / row[key])
            assert written.shape == source.shape == (40, 36, 20)
            np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
        # read for training as a ground-truth label is: on the grid of its image
        pair = pre(
            {"image": row["image"], "label": str(folder / row["label"]), "im": str(folder / row["im"])}
        )
        assert pair["label"].shape == pair["image"].shape == (1, 20, 18, 20)
    # generation 1 trained on the 2 labeled volumes and the 2 pseudo-labeled ones
    assert summaries[1]["training_images"] == 4
    assert all(Path(s["checkpoint"]).is_file() for s in summaries[1]["students"])


def test_source_grid_maps_back_through_scanner_coordinates_and_fills_what_the_teachers_never_saw():
    from monai.data import MetaTensor

    from monai_im.selftrain.pseudo_grid import SourceGrid

    # the source: 8 x 8 x 4 voxels of 1 mm; the teachers saw voxels 2..5 x 2..5 x 0..3 of it at 2 mm
    source_affine = np.eye(4)
    seen = np.diag([2.0, 2.0, 1.0, 1.0])
    seen[:3, 3] = [2.5, 2.5, 0.0]  # the centre of a 2 mm voxel covering source voxels 2 and 3
    volume = MetaTensor(
        torch.zeros(1, 2, 2, 4),
        affine=torch.as_tensor(seen),
        meta={"original_affine": source_affine, "spatial_shape": np.array([8, 8, 4])},
    )
    label = np.zeros((1, 2, 2, 4), np.float32)
    label[0, 1, 0] = 2  # the second 2 mm voxel along x: source x 4..5, y 2..3
    im = np.zeros((1, 2, 2, 4), np.float32)
    grid = SourceGrid()
    (on_source,), affine = grid(volume, [label])
    (im_on_source,), _ = grid(volume, [im], outside=1.0)
    np.testing.assert_allclose(affine, source_affine)
    assert on_source.shape == im_on_source.shape == (1, 8, 8, 4)
    expected = np.zeros((8, 8, 4), np.float32)
    expected[4:6, 2:4] = 2
    np.testing.assert_array_equal(on_source[0], expected)
    inside = np.zeros((8, 8, 4), bool)
    inside[2:6, 2:6] = True
    np.testing.assert_array_equal(im_on_source[0], np.where(inside, 0.0, 1.0))  # never seen: in the IM
    # a volume already on its source grid, or without one, is written as it is
    plain = MetaTensor(torch.zeros(1, 2, 2, 4), affine=torch.as_tensor(seen))
    (same,), kept = grid(plain, [label])
    assert same is label and np.allclose(kept, seen)
