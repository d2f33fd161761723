"""plan_inference: every input paired with a distinct, safe output, every problem reported before writing."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_im.data import (
    VOLUME_EXTENSIONS,
    InferenceInputError,
    decode_error,
    plan_inference,
    plan_inference_or_exit,
)
from monai_im.data.datalist import IMAGE_EXTENSIONS


def write_image(path: Path, size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def plan(input_dir, output_dir, **kwargs):
    return plan_inference(input_dir, output_dir, progress=False, **kwargs)


def test_items_pair_each_input_with_its_output(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("b.png", "a.jpg", "c.TIF"):
        write_image(inputs / name)
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "._a.png").write_bytes(b"resource fork")  # hidden files are not inputs
    items = plan(inputs, out)
    assert [Path(it["image"]).name for it in items] == ["a.jpg", "b.png", "c.TIF"]
    assert [it["output"] for it in items] == [
        str(out / n) for n in ("a_mask.png", "b_mask.png", "c_mask.png")
    ]
    assert all(Path(it["image"]).is_absolute() for it in items)
    assert not out.exists(), "planning writes nothing"


def test_same_folder_refuses_to_overwrite_another_input(tmp_path):
    write_image(tmp_path / "x.png", seed=1)
    write_image(tmp_path / "x_mask.png", seed=2)
    before = (tmp_path / "x_mask.png").read_bytes()
    with pytest.raises(InferenceInputError) as err:
        plan(tmp_path, tmp_path, overwrite=True)
    assert len(err.value.problems) == 1
    message = str(err.value)
    assert "x.png" in message and f"would overwrite the input {tmp_path / 'x_mask.png'}" in message
    assert (tmp_path / "x_mask.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png", "x_mask.png"]


def test_empty_postfix_in_the_input_folder_is_refused(tmp_path):
    write_image(tmp_path / "a.png")
    with pytest.raises(InferenceInputError, match="would overwrite the input"):
        plan(tmp_path, tmp_path, output_postfix="", overwrite=True)


def test_output_that_is_a_hard_link_of_an_input_is_refused(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    write_image(inputs / "a.png")
    os.link(inputs / "a.png", out / "a_mask.png")
    with pytest.raises(InferenceInputError, match="would overwrite the input"):
        plan(inputs, out, overwrite=True)


def test_only_the_last_extension_is_removed(tmp_path):
    inputs = _mkdir(tmp_path / "in")
    for name in ("scan.v1.png", "scan.v2.png"):
        write_image(inputs / name)
    items = plan(inputs, tmp_path / "out")
    assert [Path(it["output"]).name for it in items] == ["scan.v1_mask.png", "scan.v2_mask.png"]


def test_inputs_sharing_an_output_are_refused_naming_both(tmp_path):
    inputs = _mkdir(tmp_path / "in")
    write_image(inputs / "scan.png")
    write_image(inputs / "scan.jpg")
    write_image(inputs / "Other.png")
    write_image(inputs / "other.bmp")  # differ only by case: one file on case-insensitive systems
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, tmp_path / "out")
    problems = err.value.problems
    assert len(problems) == 2
    assert "scan.jpg and scan.png" in problems[1] and "scan_mask.png" in problems[1]
    assert "Other.png and other.bmp" in problems[0]
    assert not (tmp_path / "out").exists()


def test_existing_outputs_are_kept_without_overwrite(tmp_path):
    inputs, out = _mkdir(tmp_path / "in"), _mkdir(tmp_path / "out")
    for name in ("a.png", "b.png", "c.png"):
        write_image(inputs / name)
    (out / "b_mask.png").write_bytes(b"old b")
    (out / "c_mask.png").write_bytes(b"old c")
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, out)
    assert err.value.problems == [
        f"2 output file(s) already exist, the first is {out / 'b_mask.png'}; they are kept: "
        "pass --overwrite true to replace them, or choose another --output_dir"
    ]
    assert (out / "b_mask.png").read_bytes() == b"old b"
    items = plan(inputs, out, overwrite=True)
    assert [Path(it["output"]).name for it in items] == ["a_mask.png", "b_mask.png", "c_mask.png"]


def test_truncated_png_is_refused_naming_it(tmp_path):
    inputs, out = _mkdir(tmp_path / "in"), tmp_path / "out"
    write_image(inputs / "good.png")
    bad = truncate(write_image(inputs / "bad.png", size=(64, 64)))
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, out)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{bad}: cannot be decoded as an image (")
    assert not out.exists()
    assert len(plan(inputs, out, check_decodes=False)) == 2, "the check can be switched off"


def test_every_bad_input_is_listed_one_per_line(tmp_path):
    inputs = _mkdir(tmp_path / "in")
    write_image(inputs / "good.png")
    truncate(write_image(inputs / "cut.jpg", size=(64, 64)))
    (inputs / "text.png").write_text("hello, I am not a PNG")
    (inputs / "empty.bmp").write_bytes(b"")
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, tmp_path / "out", num_workers=2)
    lines = str(err.value).splitlines()
    assert [Path(line.split(":")[0]).name for line in lines] == ["cut.jpg", "empty.bmp", "text.png"]
    assert all("cannot be decoded as an image" in line for line in lines)


def test_nifti_inputs_are_decoded_and_named_as_nifti(tmp_path):
    inputs = _mkdir(tmp_path / "in")
    volume = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), inputs / "ct.v1.nii.gz")
    nib.save(nib.Nifti1Image(volume, np.eye(4)), inputs / "mr.nii")
    write_image(inputs / "photo.png")
    items = plan(inputs, tmp_path / "out", extensions=IMAGE_EXTENSIONS + VOLUME_EXTENSIONS)
    assert [Path(it["output"]).name for it in items] == [
        "ct.v1_mask.nii.gz",
        "mr_mask.nii.gz",
        "photo_mask.png",
    ]
    with pytest.raises(InferenceInputError) as err:  # 2D by default: the volumes are named, not skipped
        plan(inputs, tmp_path / "out")
    assert [Path(p.split(": ")[0]).name for p in err.value.problems] == ["ct.v1.nii.gz", "mr.nii"]
    assert all("a volume file, but this run segments .bmp" in p for p in err.value.problems)
    (inputs / "photo.png").unlink()
    truncate(inputs / "ct.v1.nii.gz")
    truncate(inputs / "mr.nii")
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, tmp_path / "out", extensions=VOLUME_EXTENSIONS)
    assert [Path(p.split(": ")[0]).name for p in err.value.problems] == ["ct.v1.nii.gz", "mr.nii"]


def test_decode_error(tmp_path):
    assert decode_error(write_image(tmp_path / "a.png")) is None
    message = decode_error(truncate(write_image(tmp_path / "b.png", size=(64, 64))))
    assert message is not None and message.startswith(f"{tmp_path / 'b.png'}: cannot be decoded")
    assert "\n" not in message


@pytest.mark.parametrize(
    "setup, expected",
    [
        ("missing", "input folder {inp} does not exist"),
        ("empty", "no images (.bmp, .jpeg, .jpg, .png, .tif, .tiff) in {inp}"),
        ("out_is_file", "output folder {out} exists and is not a folder"),
        ("postfix", "output_postfix '/m' must not contain a path separator"),
    ],
)
def test_folder_and_option_problems(tmp_path, setup, expected):
    inp, out = tmp_path / "in", tmp_path / "out"
    kwargs = {}
    if setup != "missing":
        inp.mkdir()
    if setup in ("out_is_file", "postfix"):
        write_image(inp / "a.png")
    if setup == "out_is_file":
        out.write_text("a file")
    if setup == "postfix":
        kwargs["output_postfix"] = "/m"
    with pytest.raises(InferenceInputError) as err:
        plan(inp, out, **kwargs)
    assert str(err.value) == expected.format(inp=inp, out=out)


def test_or_exit_ends_with_error_lines_and_no_traceback(tmp_path):
    write_image(tmp_path / "x.png")
    write_image(tmp_path / "x_mask.png")
    truncate(write_image(tmp_path / "y.png", size=(64, 64)))
    with pytest.raises(SystemExit) as err:
        plan_inference_or_exit(tmp_path, tmp_path, progress=False)
    lines = str(err.value.code).splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "would overwrite the input" in lines[0] and "y.png: cannot be decoded" in lines[1]
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert plan_inference_or_exit(tmp_path, tmp_path / "out", check_decodes=False, progress=False)


def test_or_exit_is_not_wrapped_by_the_bundle_runner(tmp_path):
    """From bundle JSON the SystemExit reaches the user as it is, not as a RuntimeError with a traceback."""
    import json

    from monai.bundle import run

    images = _mkdir(tmp_path / "in")
    write_image(images / "a.png")
    write_image(images / "a_mask.png")
    config = {
        "imports": ["$import monai_im", "$import monai_im.data"],
        "input_dir": str(images),
        "output_dir": str(images),
        "overwrite": False,
        "data": "$monai_im.data.plan_inference_or_exit(@input_dir, @output_dir, overwrite=@overwrite)",
        "run": ["$print(len(@data))"],
    }
    (tmp_path / "inference.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="^error: the output of a.png"):
        run(config_file=str(tmp_path / "inference.json"), logging_file=False, overwrite=True)


def test_inputs_the_network_cannot_take_are_named_before_anything_is_written(tmp_path):
    inputs, out = _mkdir(tmp_path / "in"), tmp_path / "out"
    write_image(inputs / "a.png")
    grey = np.arange(120, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), mode="LA").save(inputs / "b_alpha.png")
    items = plan(inputs, out, in_channels=3, spatial_dims=2)  # grey+alpha is read as grey, like RGBA as RGB
    assert [Path(it["image"]).name for it in items] == ["a.png", "b_alpha.png"]
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, out, in_channels=2, spatial_dims=2)
    assert err.value.problems == [
        f"{inputs / 'a.png'}: has 3 channels; the network takes 2 (grey -> N, RGBA -> RGB, RGB -> grey and "
        "grey+alpha -> grey are converted): convert the file or remove it from the input folder"
    ]

    volumes = _mkdir(tmp_path / "vol")
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), np.eye(4)), volumes / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 2), np.int16), np.eye(4)), volumes / "two.nii.gz")
    with pytest.raises(InferenceInputError) as err:
        plan(volumes, out, extensions=VOLUME_EXTENSIONS, in_channels=1, spatial_dims=3)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(
        f"{volumes / 'two.nii.gz'}: has 2 channels; the network takes 1"
    )
    with pytest.raises(InferenceInputError) as err:  # a 2D network given NIfTI volumes
        plan(volumes, out, extensions=IMAGE_EXTENSIONS + VOLUME_EXTENSIONS, in_channels=1, spatial_dims=2)
    assert err.value.problems[0] == (
        f"{volumes / 'ct.nii.gz'}: has 3 spatial dimensions (size 6x7x8); this network segments 2D images: "
        "remove it from the input folder"
    )
    assert not out.exists(), "nothing was written"


def test_nrrd_and_mha_volumes_are_planned_and_other_files_named(tmp_path):
    import SimpleITK as sitk

    inputs, out = _mkdir(tmp_path / "in"), tmp_path / "out"
    for name in ("a.nrrd", "b.mha"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 7, 6), np.int16)), str(inputs / name))
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), np.eye(4)), inputs / "c.nii.gz")
    items = plan(inputs, out, extensions=VOLUME_EXTENSIONS, in_channels=1, spatial_dims=3)
    assert [Path(it["output"]).name for it in items] == ["a_mask.nii.gz", "b_mask.nii.gz", "c_mask.nii.gz"]
    write_image(inputs / "photo.png")
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, out, extensions=VOLUME_EXTENSIONS, in_channels=1, spatial_dims=3)
    assert err.value.problems == [
        f"{inputs / 'photo.png'}: a 2D image file, but this run segments .mha, .mhd, .nhdr, .nii, .nii.gz, "
        f".nrrd files; move it out of {inputs} (nothing was written)"
    ]


def test_a_header_declaring_a_huge_volume_is_refused_from_its_header(tmp_path):
    import tracemalloc

    inputs = _mkdir(tmp_path / "in")
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    (inputs / "bomb.nii").write_bytes(header.binaryblock + b"\0" * 1004)
    tracemalloc.start()
    with pytest.raises(InferenceInputError) as err:
        plan(inputs, tmp_path / "out", extensions=VOLUME_EXTENSIONS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20
    assert err.value.problems[0].startswith(f"{inputs / 'bomb.nii'}: its header declares 2000x2000x2000")
