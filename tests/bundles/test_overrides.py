"""Every ``--key`` override of a bundle run names a key of its configs, checked before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from bundle_runs import REPO, configs, refusal


def test_a_typo_on_the_command_line_stops_the_run_in_one_line_before_any_work(tmp_path):
    out = tmp_path / "study"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps(configs("isic_im", "train.json")),
    ]
    command += ["--output_dir", str(out), "--num_generation", "1", "--epochs", "1"]
    started = time.monotonic()
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr[-3000:]
    assert errors[0].startswith("error: unknown option --num_generation (did you mean --num_generations")
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "nothing is written before the options are checked"
    assert time.monotonic() - started < 120, "refused at the start, not after the data are read"


@pytest.mark.parametrize(
    "bundle, names",
    [
        ("isic_im", ["train.json"]),
        ("isic_im", ["train.json", "demo.json"]),
        ("isic_im", ["train.json", "multi_gpu_train.json"]),
        ("isic_im", ["train.json", "inference.json"]),
        ("isic_im", ["train.json", "evaluate.json"]),
        ("isic_im", ["train.json", "suggest.json"]),
        ("hela_im", ["train.json", "demo.json"]),
        ("flare22_im", ["train.json", "demo.json"]),
        ("flare22_im", ["train.json", "inference.json"]),
    ],
)
def test_every_config_refuses_an_unknown_key_naming_the_closest(bundle, names, tmp_path):
    out = tmp_path / "out"
    message = refusal(configs(bundle, *names), output_dir=str(out), num_generation=1, copis=5)
    assert message.startswith("error: unknown option --num_generation (did you mean --num_generations or ")
    assert ", --copis (did you mean --compile?): no such key in " + ", ".join(names) + " (" in message
    assert message.endswith(f"(python -m monai_im.bundle options {REPO / 'bundles' / bundle} lists them)")
    assert not out.exists()


def test_the_keys_of_a_later_config_are_known(tmp_path):
    """demo.json's own keys are options when it is merged; without it they are typos."""
    message = refusal(
        configs("isic_im", "train.json", "demo.json"), output_dir=str(tmp_path), epochs=0, demo_num_train=4
    )
    assert message.startswith("error: --epochs 0:")
    assert refusal(configs("isic_im", "train.json"), demo_num_train=4).startswith(
        "error: unknown option --demo_num_train"
    )


def test_run_arguments_and_nested_ids_are_not_taken_for_options(tmp_path):
    """``run``'s own parameters and ``--key#sub`` of a known key pass; the next check (epochs) speaks."""
    message = refusal(
        configs("isic_im", "train.json"),
        meta_file=configs("isic_im", "metadata.json")[0],
        workflow_type="train",
        init_id="initialize",
        bundle_root=str(REPO / "bundles" / "isic_im"),
        output_dir=str(tmp_path / "out"),
        epochs=0,
        **{"network_def#dropout": 0.1, "method_defaults#min_foreground": 0},
    )
    assert message.startswith("error: --epochs 0:")


def test_an_args_file_is_checked_like_the_command_line(tmp_path):
    from monai.bundle import run

    args = {"config_file": configs("isic_im", "train.json"), "logging_file": False, "num_studnets": 2}
    (tmp_path / "args.json").write_text(json.dumps(args))
    with pytest.raises(
        SystemExit, match=r"^error: unknown option --num_studnets \(did you mean --num_students"
    ):
        run(args_file=str(tmp_path / "args.json"))


def test_a_copied_bundle_checks_against_its_own_configs(tmp_path):
    copy = tmp_path / "my_bundle"
    shutil.copytree(REPO / "bundles" / "hela_im", copy)
    train = copy / "configs" / "train.json"
    config = json.loads(train.read_text())
    config["cell_radius"] = 3  # a key of this copy only
    train.write_text(json.dumps(config))
    assert refusal([str(train)], cell_radius=4, epochs=0).startswith("error: --epochs 0:")
    message = refusal([str(train)], cell_radus=4)
    assert "--cell_radus (did you mean --cell_radius" in message and f"options {copy} lists them" in message


@pytest.mark.parametrize("name", ["inference.json", "evaluate.json"])
def test_a_config_run_without_the_one_it_is_merged_on_says_how_to_run_it(name, tmp_path):
    alone = configs("isic_im", name)
    message = refusal(alone, output_dir=str(tmp_path / "out"))
    train = configs("isic_im", "train.json")[0]
    assert message.startswith(f"error: {name} refers to ")
    assert (
        "which train.json defines: run it merged on top of train.json, python -m monai.bundle run " in message
    )
    assert f"--config_file \"['{train}','{alone[0]}']\"" in message
    assert not (tmp_path / "out").exists()
