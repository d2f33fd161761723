"""The method registry: options checked against the chosen method, bundle defaults, the listing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from monai_im.methods import METHODS, build_method, method_options
from monai_im.methods.__main__ import main
from monai_im.methods.registry import COMMON_OPTIONS, option_defaults, option_help

REPO = Path(__file__).resolve().parents[2]
BUNDLES = ("isic_im", "hela_im", "flare22_im")

#: the method options each bundle's train.json set explicitly before bundle keys meant "the method's
#: default" (null) and a bundle's own values moved to its "method_defaults"
ISIC_OPTIONS = {
    "mode": "binary",
    "threshold": 0.5,
    "augmented_copies": 9,
    "im_dilation": 0,
    "min_foreground": 1,
    "foreground_exceeds_im": True,
    "max_im_fraction": None,
    "input_views": 3,
    "width_start": None,
    "width_end": None,
    "noise_start": 0.02,
    "noise_end": 0.1,
    "schedule_generations": 5,
    "evalnet_min_score": 0.75,
    "evalnet_alpha": 1.0,
    "evalnet_epochs": 30,
    "replication_bins": [0.6, 0.7, 0.8, 0.9],
    "consistency_weight": 1.0,
    "ssl_threshold": 0.95,
    "ssl_weight": 1.0,
    "ema_decay": 0.99,
    "ramp_up_steps": 200,
    "im_views": 3,
}
FORMER_OPTIONS = {
    "isic_im": ISIC_OPTIONS,
    "hela_im": {**ISIC_OPTIONS, "mode": "multilabel", "foreground_exceeds_im": False, "evalnet_alpha": 2.0},
    "flare22_im": {
        **ISIC_OPTIONS,
        "mode": "multiclass",
        "augmented_copies": 1,
        "foreground_exceeds_im": False,
        "input_views": 1,
        "schedule_generations": 3,
        "augmentation": "volume",
    },
}


def _bundle_parser(bundle: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _former_method(bundle: str, name: str):
    """``name`` built the former way: every option the bundle set, those the method does not take dropped."""
    from monai_im.transforms import volume_augmentation

    options = dict(FORMER_OPTIONS[bundle])
    if options.get("augmentation") == "volume":
        options["augmentation"] = volume_augmentation()
    cls = METHODS[name]
    return cls(**{k: v for k, v in options.items() if k in method_options(cls)})


def _augmentation(method) -> list[str] | None:
    aug = method.default_augmentation
    return None if aug is None else [type(t).__name__ for t in aug.transforms]


# ------------------------------------------------------------------------------------- bundles
@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_method_of_every_bundle_is_built_as_before_from_its_defaults(bundle):
    for name in sorted(METHODS):
        parser = _bundle_parser(bundle, method=name)
        try:
            expected = _former_method(bundle, name)
        except ValueError as e:  # flare22_im's one input view: input_ensemble is refused, as before
            with pytest.raises(SystemExit, match=f"^error: --method {name}: {e}$"):
                parser.get_parsed_content("self_training_method")
            continue
        method = parser.get_parsed_content("self_training_method")
        assert method.describe() == expected.describe(), (bundle, name)
        assert _augmentation(method) == _augmentation(expected), (bundle, name)


def test_a_bundle_default_reaches_only_the_methods_that_take_it_and_a_user_value_wins():
    assert _bundle_parser("flare22_im", method="ldt").get_parsed_content("self_training_method").name == "ldt"
    aldt = _bundle_parser("flare22_im", method="aldt", augmented_copies=4)
    assert aldt.get_parsed_content("self_training_method").copies == 4
    with pytest.raises(SystemExit, match="^error: --method ldt takes no option augmented_copies;"):
        _bundle_parser("flare22_im", method="ldt", augmented_copies=4).get_parsed_content(
            "self_training_method"
        )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_bundle_passes_every_option_by_its_own_key_and_builds_the_method_before_the_preflight(bundle):
    parser = _bundle_parser(bundle)
    config = parser.get()
    every_option = set(COMMON_OPTIONS).union(*(method_options(c) for c in METHODS.values()))
    passed = config["method_options"]
    assert set(passed) == every_option - {"augmentation"}
    assert all(ref == f"@{key}" for key, ref in passed.items() if key not in COMMON_OPTIONS)
    assert all(config[key] is None for key in passed if key not in COMMON_OPTIONS), "bundle keys are null"
    assert set(config["method_defaults"]) <= every_option
    init = config["initialize"]
    assert init.index("$@self_training_method") < init.index("$@datalist")


def test_an_option_the_method_does_not_take_stops_the_bundle_before_any_work(isic_tiny, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(REPO / "bundles/isic_im/configs/train.json"),
            "--method",
            "im",
            "--augmented_copies",
            "5",
            "--dataset_dir",
            isic_tiny,
            "--output_dir",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "error: --method im takes no option augmented_copies; its options: im_dilation, min_foreground, "
        "foreground_exceeds_im, max_im_fraction, case_agreement, case_agreement_reduction, "
        "case_agreement_metric, vote, class_gate, finetune_epochs (python -m monai_im.methods im explains them)"
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "nothing is written before the options are checked"


# ------------------------------------------------------------------------------------- build_method
def test_an_option_the_method_does_not_take_is_refused_in_one_line_naming_its_options():
    with pytest.raises(ValueError) as info:
        build_method("im", augmented_copies=5)
    message = str(info.value)
    assert "\n" not in message and "takes no option augmented_copies" in message
    assert all(option in message for option in option_defaults(METHODS["im"]))
    with pytest.raises(SystemExit, match="^error: --method aim_plus takes no option copis, ssl_weight;"):
        build_method("aim_plus", exit_on_error=True, copis=5, ssl_weight=2.0)
    with pytest.raises(
        SystemExit, match="^error: --method ldt takes no option min_foreground; its options: none"
    ):
        build_method("ldt", exit_on_error=True, min_foreground=0)


def test_unset_options_are_the_method_defaults_and_common_options_are_never_refused():
    method = build_method("im", mode="multilabel", threshold=0.3, augmented_copies=None, min_foreground=None)
    assert method.describe() == {**METHODS["im"](mode="multilabel", threshold=0.3).describe()}
    consistency = build_method("consistency_loss", threshold=0.3, consistency_weight=0.5)
    assert consistency.weight == 0.5 and "threshold" not in method_options(type(consistency))
    assert build_method("aldt", threshold=0.3, mode="multiclass").mode == "multiclass"


def test_defaults_are_given_only_to_the_methods_that_take_them_and_options_win():
    defaults = {"augmented_copies": 1, "foreground_exceeds_im": False, "input_views": None}
    assert build_method("ldt", defaults=defaults).describe() == METHODS["ldt"]().describe()
    aim = build_method("aim", defaults=defaults)
    assert aim.copies == 1 and aim.foreground_exceeds_im is False
    assert build_method("aim", defaults=defaults, augmented_copies=3).copies == 3
    assert build_method("input_ensemble", defaults=defaults).views == 3, "a None default is the method's"
    with pytest.raises(ValueError, match="augmented_copy: no method takes such an option"):
        build_method("aim", defaults={"augmented_copy": 1})


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(SystemExit, match="^error: unknown method 'imm'; choose one of: afdt, aim,"):
        build_method("imm", exit_on_error=True)


# ------------------------------------------------------------------------------------- the listing
def test_the_listing_names_every_method_and_its_options_with_their_defaults(capsys):
    assert main([]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith(f"{len(METHODS)} methods")
    headers = re.findall(r"^(\w+) \((?:makes|no) pseudo-labels\)$", listing, flags=re.MULTILINE)
    assert headers == list(METHODS)
    assert (
        "\nim_plus_plus (makes pseudo-labels)\n" in listing and "\nfixmatch (no pseudo-labels)\n" in listing
    )
    aim_plus = listing.split("\naim_plus (")[1].split("\nim_plus_plus (")[0]
    flat = " ".join(aim_plus.split())
    for option, default in [
        ("augmented_copies", "9"),
        ("foreground_exceeds_im", "true"),
        ("width_end", "null"),
    ]:
        assert f"{option}={default}" in flat
    assert all(f"{option}=" in flat for option in option_defaults(METHODS["aim_plus"]))


def test_one_method_shows_each_option_with_its_default_and_meaning(capsys):
    assert main(["evalnet"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("evalnet: EvalNet: the teachers' consensus pseudo-labels")
    assert "It makes pseudo-labels." in shown
    assert "  evalnet_min_score = 0.75\n      the estimated IoU a pseudo-label needs to be kept" in shown
    assert "  evalnet_learning_rate = 0.001\n      AdamW learning rate" in shown
    with pytest.raises(SystemExit):
        main(["no_such_method"])
    assert "unknown method 'no_such_method'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_option_has_a_meaning_in_the_class_docstrings(name):
    meaning = option_help(METHODS[name])
    assert list(meaning) == list(option_defaults(METHODS[name]))
    for option, text in meaning.items():
        assert text and not text.startswith("see ") and "`" not in text, (name, option, text)


def _documented_options(rows: dict[str, str], name: str) -> set[str]:
    """The options ``docs/methods.md`` gives ``name``: its cell's names, with "as/and `other`" expanded."""
    cell = rows[name]
    names = set(re.findall(r"`(\w+)`", cell)) - set(METHODS)
    for other in re.findall(r"(?:as|and) `(\w+)`", cell):
        names |= _documented_options(rows, other)
    return names


def test_the_methods_page_lists_exactly_the_options_of_every_method():
    table = (REPO / "docs" / "methods.md").read_text()
    rows = {m[0]: m[1] for m in re.findall(r"^\| `(\w+)` \|.*\| ([^|]*) \|$", table, flags=re.MULTILINE)}
    assert set(rows) == set(METHODS)
    for name, cls in METHODS.items():
        assert _documented_options(rows, name) - set(COMMON_OPTIONS) == set(option_defaults(cls)), name
    assert f"each of the {len(METHODS)} methods" in table
