"""isic_im's inference, evaluation, verification and export configs, on a checkpoint trained here."""

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
CONFIGS = REPO / "bundles/isic_im/configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A state dict of a 32 x 32 alpha 0.5 IMUNet (random weights suffice to exercise the configs)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(IMUNet(2, 3, 1, alpha=0.5).state_dict(), path)
    return path


def test_metadata_is_complete():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 3 and fmt["outputs"]["pred"]["num_channels"] == 1


def test_inference_writes_masks_at_input_size(checkpoint, tmp_path):
    from monai.bundle import run

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(inputs / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(inputs / "gray.png")
    out = tmp_path / "out"
    run(
        config_file=str(CONFIGS / "inference.json"),
        logging_file=False,
        input_dir=str(inputs),
        output_dir=str(out),
        checkpoint=str(checkpoint),
        image_size=[32, 32],
    )
    masks = {p.name: np.array(Image.open(p)) for p in out.iterdir()}
    assert sorted(masks) == ["gray_mask.png", "rgb_mask.png"]
    assert masks["rgb_mask.png"].shape == (40, 50) and masks["gray_mask.png"].shape == (30, 30)
    assert all(set(np.unique(m)) <= {0, 255} for m in masks.values())
    assert sorted(p.name for p in inputs.iterdir()) == ["gray.png", "rgb.jpg"], "inputs untouched"


def test_inference_refuses_to_overwrite_inputs(checkpoint, tmp_path):
    from monai.bundle import run

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(RuntimeError) as err:
        run(
            config_file=str(CONFIGS / "inference.json"),
            logging_file=False,
            input_dir=str(tmp_path),
            output_dir=str(tmp_path),
            checkpoint=str(checkpoint),
            image_size=[32, 32],
            output_postfix="",
        )
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("refusing to overwrite the input image" in m for m in chain)
    assert np.array(Image.open(tmp_path / "a.png")).sum() == 0


def test_evaluate_scores_a_checkpoint(isic_tiny, checkpoint, tmp_path):
    from monai.bundle import run

    out = tmp_path / "study"
    out.mkdir()
    run(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
        logging_file=False,
        dataset_dir=isic_tiny,
        output_dir=str(out),
        checkpoint=str(checkpoint),
        image_size=[32, 32],
    )
    summary = (out / "eval_test" / "test_iou_summary.csv").read_text()
    assert "mean" in summary
    raw = (out / "eval_test" / "test_iou_raw.csv").read_text().strip().splitlines()
    assert len(raw) == 1 + 8  # header + one row per test image


@pytest.mark.parametrize("command", ["verify_net_in_out", "ckpt_export"])
def test_monai_bundle_tools(command, checkpoint, tmp_path):
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        command,
        "network_def",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.json"),
    ]
    if command == "ckpt_export":
        args += ["--filepath", str(tmp_path / "model.ts"), "--ckpt_file", str(checkpoint)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if command == "ckpt_export":
        ts = torch.jit.load(str(tmp_path / "model.ts"))
        ref = IMUNet(2, 3, 1, alpha=0.5)
        ref.load_state_dict(torch.load(checkpoint, weights_only=True))
        x = torch.rand(1, 3, 64, 64)
        assert torch.allclose(ts(x), ref.eval()(x), atol=1e-5)
