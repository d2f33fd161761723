"""``python -m monai_im.bundle options``: every option of a bundle, its default from the configs, its meaning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from monai_im.bundle.options import (
    OPTIONS_FILE,
    SHARED_MEANINGS,
    bundle_options,
    format_options,
    is_setting,
    undocumented,
)

REPO = Path(__file__).resolve().parents[2]
BUNDLES = ("isic_im", "hela_im", "flare22_im")
EXTRA_CONFIGS = ("demo.json", "inference.json", "evaluate.json", "suggest.json", "multi_gpu_train.json")


def config(bundle: str, name: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / name).read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("extra", [(), *((c,) for c in EXTRA_CONFIGS)])
def test_every_setting_of_every_config_has_a_meaning(bundle, extra):
    """A new key whose value is a setting must be documented (configs/options.json or the shared meanings)."""
    assert undocumented(REPO / "bundles" / bundle, extra) == []


def test_the_meanings_name_only_keys_the_configs_have():
    """No meaning outlives its key: the shared ones belong to some bundle, a bundle's own to that bundle."""
    every = set()
    for bundle in BUNDLES:
        keys = {
            k
            for f in (REPO / "bundles" / bundle / "configs").glob("*.json")
            for k in json.loads(f.read_text())
        }
        every |= keys
        own = REPO / "bundles" / bundle / "configs" / OPTIONS_FILE
        if own.is_file():
            assert set(json.loads(own.read_text())) <= keys, bundle
    assert set(json.loads(SHARED_MEANINGS.read_text())) <= every


def test_a_new_setting_without_a_meaning_is_reported(tmp_path):
    copy = tmp_path / "isic_im"
    shutil.copytree(REPO / "bundles" / "isic_im", copy)
    train = config("isic_im", "train.json")
    train["dropout_rate"] = 0.1
    train["dropout_schedule"] = [0.1, 0.2]
    train["dropout_builder"] = "$float(@dropout_rate)"  # computed: not a setting until documented
    (copy / "configs" / "train.json").write_text(json.dumps(train))
    assert undocumented(copy) == ["dropout_rate", "dropout_schedule"]
    (copy / "configs" / OPTIONS_FILE).write_text(
        json.dumps({"dropout_rate": "dropout", "dropout_schedule": "per gen"})
    )
    assert undocumented(copy) == []
    assert "  dropout_rate = 0.1\n      dropout" in format_options(copy)


def test_what_a_setting_is():
    assert all(is_setting("k", v) for v in (1, 0.5, True, None, "im", [64, 64], [[0, 1]], ["a", "b"]))
    assert not any(is_setting("k", v) for v in ("$@x", "@x", "%x", {"_target_": "X"}, {}, [], ["$import x"]))
    assert not any(is_setting(k, 1) for k in ("initialize", "run", "_description_", "study#epochs"))


def test_the_listing_holds_every_setting_of_train_json_with_its_default():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "monai_im.bundle", "options", str(REPO / "bundles" / "isic_im")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    train = config("isic_im", "train.json")
    settings = [k for k, v in train.items() if is_setting(k, v)]
    assert len(settings) > 60
    for key in settings:
        assert f"  {key} = {json.dumps(train[key])}" in lines, key
    assert "undocumented" not in proc.stdout
    # computed options with a meaning are listed too, with their expression as default
    assert not any(line.startswith("  checkpoint =") for line in lines), "inference.json's, not train.json's"
    assert '  run_name = "$@method"' in lines and not any(
        line.startswith("  network_def =") for line in lines
    )


def test_another_config_shows_its_own_keys_and_defaults():
    listing = format_options(REPO / "bundles" / "isic_im", ["demo.json", "inference.json"])
    assert listing.splitlines()[0].startswith(f"{REPO / 'bundles' / 'isic_im'}: ")
    assert "of train.json + demo.json + inference.json" in listing.splitlines()[0]
    assert "  epochs = 25  [demo.json]\n      training epochs per student" in listing
    assert "  checkpoint = \"$@bundle_root + '/models/model.pt'\"  [inference.json]" in listing
    assert '  output_dir = "runs/isic_im_inference"  [inference.json]' in listing
    keys = [o.key for o in bundle_options(REPO / "bundles" / "isic_im", ["demo.json", "inference.json"])]
    assert "input_dir" in keys and "demo_num_train" in keys and len(keys) == len(set(keys))


def test_method_options_are_explained_by_the_methods():
    options = {o.key: o for o in bundle_options(REPO / "bundles" / "hela_im")}
    assert options["ssl_threshold"].default is None
    assert options["ssl_threshold"].meaning.endswith(
        "(null: the method's default; methods: fixmatch, fixmatch_im)"
    )


def test_an_unknown_bundle_is_one_line(tmp_path):
    from monai_im.bundle.checks import main

    assert main(["options", str(tmp_path / "nothing")]) == 1
