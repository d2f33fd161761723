"""A researcher's own data: copied bundles, real encodings, bad files caught before any training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "image_size": [32, 32],
    "epochs": 1,
    "min_steps": 0,
    "batch_size": 4,
    "num_students": 1,
    "num_teachers": 1,
    "num_generations": 0,
    "progress": False,
    "method": "ldt",
}


def run_isic(dataset_dir, output_dir, **extra) -> dict:
    from monai.bundle import run

    configs = REPO / "bundles" / "isic_im" / "configs"
    run(
        config_file=[str(configs / "train.json"), str(configs / "demo.json")],
        logging_file=False,
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        **{**TINY, **extra},
    )
    return json.loads((Path(output_dir) / "results.json").read_text())


def recoded_copy(src: str, dst: Path, label=None, image=None) -> Path:
    """A copy of a dataset folder with its masks and/or images rewritten by ``label`` / ``image``."""
    shutil.copytree(src, dst)
    datalist = json.loads((dst / "datalist.json").read_text())
    for entries in datalist.values():
        for item in entries:
            if label is not None and "label" in item:
                p = dst / item["label"]
                Image.fromarray(label(np.array(Image.open(p)))).save(p)
            if image is not None:
                p = dst / item["image"]
                Image.fromarray(image(np.array(Image.open(p)))).save(p)
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("bundle,data", [("isic_im", "isic_tiny"), ("hela_im", "hela_tiny")])
def test_a_copied_bundle_runs_from_its_own_folder(bundle, data, request, tmp_path):
    copy = tmp_path / "elsewhere" / bundle
    shutil.copytree(REPO / "bundles" / bundle, copy)
    out = tmp_path / "study"
    args = [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TINY.items()]
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "['configs/train.json','configs/demo.json']",
            "--dataset_dir",
            request.getfixturevalue(data),
            "--output_dir",
            str(out),
            *args,
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [0]
    assert (out / "model.pt").is_file()


@pytest.mark.slow
def test_zero_one_masks_train_exactly_like_zero_255_masks(isic_tiny, tmp_path):
    """0/1 masks are read as foreground (not as empty masks that score a perfect IoU)."""
    ref = run_isic(isic_tiny, tmp_path / "ref")
    ones = recoded_copy(isic_tiny, tmp_path / "ones", label=lambda m: (m > 0).astype(np.uint8))
    got = run_isic(ones, tmp_path / "ones_run")
    assert got["generations"][0]["test"] == ref["generations"][0]["test"]
    assert ref["generations"][0]["test"]["test_iou"] < 0.99, "an empty-label study would score 1.0"
    a = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "ones_run" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sixteen_bit_images_are_scaled_like_their_eight_bit_originals(isic_tiny, tmp_path):
    grey8 = recoded_copy(isic_tiny, tmp_path / "g8", image=lambda x: x.mean(-1).round().astype(np.uint8))
    grey16 = recoded_copy(str(grey8), tmp_path / "g16", image=lambda x: x.astype(np.uint16) * 257)
    assert Image.open(next((grey16 / "images").glob("*.png"))).mode == "I;16"
    a = run_isic(grey8, tmp_path / "r8")
    b = run_isic(grey16, tmp_path / "r16")
    assert a["generations"][0]["test"] == pytest.approx(b["generations"][0]["test"], abs=1e-6)


def test_a_bad_unlabeled_file_stops_the_study_before_any_training(isic_tiny, tmp_path, monkeypatch, capsys):
    import monai_im.selftrain.generation as generation_mod

    data = recoded_copy(isic_tiny, tmp_path / "bad")
    datalist = json.loads((data / "datalist.json").read_text())
    truncated = data / datalist["unlabeled"][0]["image"]
    truncated.write_bytes(truncated.read_bytes()[:100])
    text = data / datalist["test"][0]["image"]
    text.write_text("this is not an image\n")
    trained = []
    monkeypatch.setattr(generation_mod, "train_student", lambda **kw: trained.append(kw))
    with pytest.raises(SystemExit) as err:
        run_isic(data, tmp_path / "out", method="im", num_generations=1, num_students=2, num_teachers=2)
    assert trained == []
    assert "2 problem(s) in 2 of" in str(err.value)
    lines = capsys.readouterr().err.strip().splitlines()
    named = [line for line in lines if line.startswith("error: /")]
    assert sorted(Path(line.split(": ")[1]).name for line in named) == sorted([truncated.name, text.name])
    assert "Traceback" not in "\n".join(lines)
    assert not list((tmp_path / "out").glob("generation_*"))


def test_a_different_study_is_refused_in_a_used_folder(isic_tiny, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_isic(isic_tiny, out)
    with pytest.raises(SystemExit) as err:
        run_isic(isic_tiny, out, seed=7)
    assert "seed" in str(err.value) and str(out) in str(err.value)
    with pytest.raises(SystemExit):  # the command line's string 'false' must not read as true
        run_isic(isic_tiny, out, seed=7, overwrite="false")
    assert json.loads((out / "results.json").read_text())["study"]["seed"] == 42
    again = run_isic(isic_tiny, out, seed=7, overwrite=True)
    assert again["study"]["seed"] == 7
