"""Each bundle's inference, evaluation, verification and export configs, on a checkpoint made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_im.networks import IMUNet

REPO = Path(__file__).resolve().parents[2]

# bundle -> (input channels, output channels, width factor)
BUNDLES = {"isic_im": (3, 1, 0.5), "hela_im": (1, 3, 1.0)}


def configs(bundle: str) -> Path:
    return REPO / "bundles" / bundle / "configs"


def inference(bundle: str) -> list[str]:
    """inference.json merges on top of train.json, whose network and reading rules it reuses."""
    return [str(configs(bundle) / "train.json"), str(configs(bundle) / "inference.json")]


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def bundle(request, tmp_path_factory):
    """(name, checkpoint): a state dict of the bundle's IMUNet (random weights exercise the configs)."""
    name = request.param
    cin, cout, alpha = BUNDLES[name]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(name) / "model.pt"
    torch.save(IMUNet(2, cin, cout, alpha=alpha).state_dict(), path)
    return name, path


def test_metadata_matches_the_network(bundle):
    name, _ = bundle
    cin, cout, _ = BUNDLES[name]
    meta = json.loads((configs(name) / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == cin and fmt["outputs"]["pred"]["num_channels"] == cout


def test_inference_writes_masks_at_input_size(bundle, tmp_path):
    from monai.bundle import run

    name, checkpoint = bundle
    cout = BUNDLES[name][1]
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(inputs / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(inputs / "gray.png")
    out = tmp_path / "out"
    run(
        config_file=inference(name),
        logging_file=False,
        input_dir=str(inputs),
        output_dir=str(out),
        checkpoint=str(checkpoint),
        image_size=[32, 32],
        output_postfix="_mask",
    )
    masks = {p.name: np.array(Image.open(p)) for p in out.iterdir()}
    assert sorted(masks) == ["gray_mask.png", "rgb_mask.png"]
    extra = () if cout == 1 else (cout,)
    assert masks["rgb_mask.png"].shape == (40, 50, *extra) and masks["gray_mask.png"].shape == (
        30,
        30,
        *extra,
    )
    assert all(set(np.unique(m)) <= {0, 255} for m in masks.values())
    assert sorted(p.name for p in inputs.iterdir()) == ["gray.png", "rgb.jpg"], "inputs untouched"


def test_inference_refuses_to_overwrite_inputs_before_writing(bundle, tmp_path, capsys):
    from monai.bundle import run

    name, checkpoint = bundle
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(tmp_path / "a_mask.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit) as err:
        run(
            config_file=inference(name),
            logging_file=False,
            input_dir=str(tmp_path),
            output_dir=str(tmp_path),
            checkpoint=str(checkpoint),
            image_size=[32, 32],
            output_postfix="_mask",
        )
    lines = str(err.value).splitlines()
    assert lines and all(line.startswith("error: ") for line in lines)
    assert any("a_mask.png" in line and "overwrite the input" in line for line in lines)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "nothing written or changed"


def test_copied_bundle_checks_pass_offline(bundle, tmp_path):
    """The model zoo's checks on a copy of the bundle folder: metadata schema, net in/out, export, properties."""
    import shutil

    from monai_im.bundle import check_bundle

    name, checkpoint = bundle
    copy = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, copy)
    assert check_bundle(copy, checkpoint) == [
        "verify_metadata",
        "verify_net_in_out",
        "ckpt_export",
        "check_properties (inference)",
    ]


def test_metadata_schema_refuses_a_broken_metadata(tmp_path):
    import shutil

    from monai.bundle import verify_metadata

    from monai_im.bundle import METADATA_SCHEMA

    copy = tmp_path / "isic_im"
    shutil.copytree(REPO / "bundles" / "isic_im", copy)
    meta = json.loads((copy / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["num_channels"]
    (copy / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(copy / "configs" / "metadata.json"), filepath=str(METADATA_SCHEMA))


def test_evaluate_scores_a_checkpoint(bundle, isic_tiny, hela_tiny, tmp_path):
    from monai.bundle import run

    name, checkpoint = bundle
    data = isic_tiny if name == "isic_im" else hela_tiny
    out = tmp_path / "study"
    out.mkdir()
    run(
        config_file=[str(configs(name) / "train.json"), str(configs(name) / "evaluate.json")],
        logging_file=False,
        dataset_dir=data,
        output_dir=str(out),
        checkpoint=str(checkpoint),
        image_size=[32, 32],
    )
    key = "test_iou" if name == "isic_im" else "test_mcce"
    assert "mean" in (out / "eval_test" / f"{key}_summary.csv").read_text()
    raw = (out / "eval_test" / f"{key}_raw.csv").read_text().strip().splitlines()
    n_test = len(json.loads((Path(data) / "datalist.json").read_text())["test"])
    assert len(raw) == 1 + n_test  # header + one row per test image


@pytest.mark.parametrize("command", ["verify_net_in_out", "ckpt_export"])
def test_monai_bundle_tools(bundle, command, tmp_path):
    name, checkpoint = bundle
    cin, cout, alpha = BUNDLES[name]
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        command,
        "network_def",
        "--meta_file",
        str(configs(name) / "metadata.json"),
        "--config_file",
        str(configs(name) / "train.json"),
    ]
    if command == "ckpt_export":
        args += ["--filepath", str(tmp_path / "model.ts"), "--ckpt_file", str(checkpoint)]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if command == "ckpt_export":
        ts = torch.jit.load(str(tmp_path / "model.ts"))
        ref = IMUNet(2, cin, cout, alpha=alpha)
        ref.load_state_dict(torch.load(checkpoint, weights_only=True))
        x = torch.rand(1, cin, 64, 64)
        assert torch.allclose(ts(x), ref.eval()(x), atol=1e-5)


@pytest.mark.parametrize("bundle", sorted(BUNDLES))
def test_demo_config_makes_the_variety_asked_for_and_refuses_a_folder_of_another(tmp_path, bundle):
    from monai.bundle import ConfigParser

    def dataset(variety: str) -> Path:
        parser = ConfigParser()
        parser.read_config([str(configs(bundle) / "train.json"), str(configs(bundle) / "demo.json")])
        parser.update(
            {
                "dataset_dir": str(tmp_path / "demo"),
                "demo_num_train": 4,
                "demo_num_val": 1,
                "demo_num_test": 1,
                "demo_image_size": 16,
                "labeled_fraction": 0.5,
                "demo_variety": variety,
            }
        )
        return Path(parser.get_parsed_content("dataset"))

    made = dataset("families")
    assert json.loads((made / "dataset.json").read_text())["variety"] == "families"
    with pytest.raises(RuntimeError) as e:  # MONAI wraps the error of a config expression
        dataset("classic")
    assert "holds the 'families' variety of the demo data, not 'classic'" in str(e.value.__cause__)
