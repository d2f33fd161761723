"""Settings that cannot work are refused in one line each, in the bundle's ``initialize``, before any work."""

from __future__ import annotations

import json
import shutil

import pytest
from bundle_runs import configs, refusal

from monai_im.bundle import check_unlabeled, validate_settings
from monai_im.methods import build_method


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"epochs": 0},
            "error: --epochs 0: every student trains at least one epoch: pass a whole number, 1 or more",
        ),
        ({"num_generations": -1}, "error: --num_generations -1: the generations after the first"),
        ({"num_students": 0}, "error: --num_students 0: each generation trains at least one student"),
        (
            {"num_students": 3, "num_teachers": 4},
            "error: --num_teachers 4: the teachers are the best students of a generation, and there are "
            "--num_students 3: pass --num_teachers 1..3 or more students",
        ),
        (
            {"batch_size": 0},
            "error: --batch_size 0: images per training step: pass a whole number, 1 or more",
        ),
        ({"batch_size": 2.5}, "error: --batch_size 2.5: images per training step: pass a whole number"),
        ({"learning_rate": 0}, "error: --learning_rate 0: the optimizer's step size: pass a number above 0"),
        ({"learning_rate": -0.1}, "error: --learning_rate -0.1: the optimizer's step size"),
        (
            {"image_size": [50, 50]},
            "error: --image_size [50, 50]: IMUNet takes only multiples of 16 (its 2x poolings): try [48, 48] "
            "or [64, 64]",
        ),
        ({"image_size": [64, 64, 64]}, "error: --image_size [64, 64, 64]: a 2D network takes 2 whole sizes"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_before_any_work(overrides, expected, tmp_path):
    out = tmp_path / "study"
    message = refusal(configs("isic_im", "train.json"), output_dir=str(out), **overrides)
    assert message.startswith(expected)
    assert not out.exists(), "refused before anything is written"


def test_a_3d_patch_size_is_checked_against_the_network(tmp_path):
    message = refusal(
        configs("flare22_im", "train.json", "demo.json"), output_dir=str(tmp_path), patch_size=[48, 48, 40]
    )
    assert message == (
        "error: --patch_size [48, 48, 40]: IMUNet takes only multiples of 16 (its 2x poolings): try [48, 48, 32] "
        "or [48, 48, 48]"
    )


@pytest.mark.parametrize("inside", ["", "runs"])
def test_the_study_is_not_written_into_the_dataset_folder(inside, tmp_path):
    data = tmp_path / "data"
    out = data / inside if inside else data
    message = refusal(configs("isic_im", "train.json"), dataset_dir=str(data), output_dir=str(out))
    where = "lies inside" if inside else "is"
    assert message == (
        f"error: --output_dir {out}: {where} the dataset folder (--dataset_dir {data}): the study would be "
        "written among the data; choose an output folder outside it"
    )
    assert not data.exists()


def test_a_method_with_generations_needs_unlabeled_images(isic_tiny, tmp_path):
    data = tmp_path / "labeled_only"
    shutil.copytree(isic_tiny, data)
    datalist = json.loads((data / "datalist.json").read_text())
    del datalist["unlabeled"]
    (data / "datalist.json").write_text(json.dumps(datalist))
    out = tmp_path / "study"
    message = refusal(
        configs("isic_im", "train.json"),
        dataset_dir=str(data),
        output_dir=str(out),
        image_size=[32, 32],
        method="im",
        num_generations=2,
        progress=False,
    )
    assert message == (
        f"error: --method im: pseudo-labels unlabeled images in generations 1..2, but the datalist of {data} has "
        "no 'unlabeled' entries: add some (see docs/own_data.md), pass --num_generations 0, or choose a method "
        "without pseudo-labels (python -m monai_im.methods)"
    )
    assert not list(out.glob("generation_*")) and not (out / "study.json").exists()


def test_unlabeled_images_are_needed_only_for_later_generations_of_methods_that_have_them():
    labeled = {"labeled": [{"image": "a.png", "label": "a.png"}], "validation": []}
    check_unlabeled(build_method("im"), 0, labeled, "data")
    check_unlabeled(build_method("ldt"), 3, labeled, "data")
    with pytest.raises(
        SystemExit, match="^error: --method im: pseudo-labels unlabeled images in generation 1,"
    ):
        check_unlabeled(build_method("im"), 1, labeled, "data")


def test_validate_settings_accepts_a_good_study_and_knows_its_rules(tmp_path):
    good = {
        "epochs": 1,
        "num_generations": 0,
        "num_students": 2,
        "num_teachers": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "cache_rate": 0.5,
        "image_size": [32, 64],
        "dataset_dir": str(tmp_path / "runs" / "data"),  # data inside the study folder are not harmed
        "output_dir": str(tmp_path / "runs"),
    }
    validate_settings(method=build_method("im"), network="monai_im.networks.IMUNet", spatial_dims=2, **good)
    # a method without generations has no teachers to count
    validate_settings(method=build_method("ldt"), num_students=1, num_teachers=3)
    # null: the default elsewhere, not checked
    validate_settings(eval_batch_size=None)
    with pytest.raises(SystemExit, match=r"^error: --epochs true: every student trains at least one epoch"):
        validate_settings(epochs=True)
    with pytest.raises(SystemExit, match=r"^error: --cache_rate 2: the share of the data cached in memory"):
        validate_settings(cache_rate=2)
    with pytest.raises(TypeError, match="knows no setting epoch"):
        validate_settings(epoch=1)
