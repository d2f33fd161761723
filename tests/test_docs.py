"""The documentation says what the code does: method counts and lists, the bundles' defaults, the files a
study writes, and hints that a copied bundle can follow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from monai_im.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("isic_im", "hela_im", "flare22_im")


def _text(relative: str) -> str:
    return (REPO / relative).read_text(encoding="utf-8")


@pytest.mark.parametrize("page", ["README.md", "docs/methods.md", "bundles/isic_im/docs/README.md"])
def test_every_stated_count_of_methods_is_the_registrys(page):
    counts = [int(n) for n in re.findall(r"\b(\d+) methods\b", _text(page))]
    assert counts and set(counts) == {len(METHODS)}, (page, counts)


def test_the_methods_page_covers_every_bundle_and_starts_with_the_guide():
    text = _text("docs/methods.md")
    for bundle in BUNDLES:
        assert f"`{bundle}`" in text, bundle
    guide = text.split("\n## ", 1)[0]  # the page before its first section
    assert len(guide.splitlines()) <= 60, "the guide fits one screen"
    for bundle in BUNDLES:
        default = json.loads(_text(f"bundles/{bundle}/configs/train.json"))["method"]
        assert re.search(rf"^\| {bundle} [^|]*\| `{default}` \|", guide, flags=re.MULTILINE), (
            bundle,
            default,
        )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_each_bundle_readme_states_its_default_method_and_the_demos(bundle):
    config = json.loads(_text(f"bundles/{bundle}/configs/train.json"))
    demo = json.loads(_text(f"bundles/{bundle}/configs/demo.json"))
    readme = _text(f"bundles/{bundle}/docs/README.md")
    assert f"default method is `{config['method']}`" in readme
    assert f"`configs/demo.json` pins `{demo['method']}`" in readme


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_copied_bundles_configs_point_to_nothing_outside_it(bundle):
    for config in sorted((REPO / "bundles" / bundle / "configs").glob("*.json")):
        text = config.read_text(encoding="utf-8")
        assert "data_scripts/" not in text, config.name
        for path in re.findall(r"\bdocs/[\w./-]+", text):
            if config.name == "metadata.json":  # the changelog names the repository's documents
                continue
            assert path == "docs/README.md", (config.name, path)


def _layout(readme: str) -> set[str]:
    """The paths of the 'What a study writes' tree: two-space entries relative to the study folder, four-space
    ones relative to the folder above them; several entries of a line are separated by commas."""
    block = readme.split("## What a study writes", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    parent = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent not in (2, 4):  # the root line and wrapped descriptions
            continue
        entries = re.split(r"\s{2,}", line.strip())[0].split(", ")
        if indent == 2:
            parent = entries[0] if entries[0].endswith("/") else ""
            listed.update(entries)
        else:
            listed.update(parent + e for e in entries)
    return listed


def _written(folder: Path) -> set[str]:
    """What a study folder holds, with generation and student numbers as the README writes them."""
    found = set()
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix() + ("/" if p.is_dir() else "")
        rel = re.sub(r"generation_\d+", "generation_<g>", re.sub(r"student_\d+", "student_<k>", rel))
        found.add(rel)
    return found


def test_the_isic_readme_lists_what_a_tiny_study_writes(make_study, tiny_data, tmp_path, monkeypatch):
    from monai_im.handlers import MLflowStudyHandler

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "study"
    handler = MLflowStudyHandler(out, experiment_name="docs")
    make_study(tiny_data, out, num_generations=1, handlers=[handler]).run()
    written = _written(out)
    listed = _layout(_text("bundles/isic_im/docs/README.md"))
    assert listed - written == set(), "listed but not written"
    # everything else the study writes is listed, lies in a listed folder, or holds listed entries
    folders = [f for f in listed if f.endswith("/")]
    unlisted = {
        w
        for w in written - listed
        if not any(w.startswith(f) for f in folders) and not any(e.startswith(w) for e in listed)
    }
    assert unlisted == set(), "written but not listed"
