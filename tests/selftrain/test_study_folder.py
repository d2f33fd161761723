"""A study folder records what it is, refuses another study, resumes from its own files when moved,
and is cleaned of what interrupted writes left behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from monai_im.data import load_datalist
from monai_im.methods import LabeledOnly
from monai_im.selftrain import StudentResult, StudyLayout, StudyMismatchError, dataset_fingerprint
from monai_im.selftrain.lock import LOCK_FILE


@pytest.fixture
def count_training(monkeypatch) -> list[tuple[int, int]]:
    """Record the (generation, student) of every student trained."""
    import monai_im.selftrain.generation as generation_mod

    real = generation_mod.train_student
    trained: list[tuple[int, int]] = []

    def counting(**kwargs):
        trained.append((kwargs["generation"], kwargs["index"]))
        return real(**kwargs)

    monkeypatch.setattr(generation_mod, "train_student", counting)
    return trained


def _make_paths_absolute(folder: Path, original: Path) -> None:
    """Rewrite generation 0's JSON files as an older version wrote them: absolute paths of ``original``."""
    for f in (folder / "generation_0").rglob("*.json"):
        data = json.loads(f.read_text())
        for d in [data, *data.get("students", [])]:
            d["checkpoint"] = str(original / d["checkpoint"])
        f.write_text(json.dumps(data))


def _study_files(folder: Path) -> dict[Path, int]:
    """The modification times of a study folder's files but its lock (which records who last held it)."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE}


# ---------------------------------------------------------------------------------------- fingerprint
def test_dataset_fingerprint_survives_a_move_but_not_a_changed_file(tiny_data, tmp_path):
    before = dataset_fingerprint(load_datalist(tiny_data))
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(tiny_data, moved)
    assert dataset_fingerprint(load_datalist(moved)) == before
    datalist = load_datalist(moved)
    reordered = {k: list(reversed(v)) for k, v in reversed(list(datalist.items()))}
    assert dataset_fingerprint(reordered) == before, "entry order does not matter"
    # another split for one image
    resplit = {
        **datalist,
        "test": datalist["test"][1:],
        "validation": datalist["validation"] + datalist["test"][:1],
    }
    assert dataset_fingerprint(resplit) != before
    # an image rewritten with another size
    image = Path(datalist["labeled"][0]["image"])
    image.write_bytes(image.read_bytes() + b"\0")
    assert dataset_fingerprint(load_datalist(moved, check_images=False)) != before


# ---------------------------------------------------------------------------------------- layout
def test_layout_paths_are_stored_relative_and_resolved_against_the_folder(tmp_path):
    layout = StudyLayout(tmp_path / "study")
    ckpt = layout.student_dir(0, 1) / "model.pt"
    assert layout.relative(ckpt) == "generation_0/student_1/model.pt"
    outside = tmp_path / "other" / "model.pt"
    assert layout.relative(outside) == str(outside)
    assert layout.absolute("generation_0/student_1/model.pt") == ckpt
    # an absolute path of an older version: this folder's own file when it exists ...
    old = tmp_path / "gone" / "generation_0" / "student_1" / "model.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert layout.absolute(str(old)) == ckpt
    # ... also when the original still exists (a copied folder uses its own files)
    old.parent.mkdir(parents=True)
    old.write_bytes(b"y")
    assert layout.absolute(str(old)) == ckpt
    # ... and the absolute path itself when this folder has no such file
    other = tmp_path / "gone" / "generation_3" / "student_0" / "model.pt"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"z")
    assert layout.absolute(str(other)) == other


def test_student_results_round_trip_with_relative_checkpoints(tmp_path):
    layout = StudyLayout(tmp_path / "study")
    ckpt = layout.student_dir(2, 0) / "model.pt"
    result = StudentResult(generation=2, index=0, best_metric=0.5, best_epoch=3, checkpoint=str(ckpt))
    f = layout.write_student(result)
    assert json.loads(f.read_text())["checkpoint"] == "generation_2/student_0/model.pt"
    assert layout.read_student(2, 0) is None, "a result without its checkpoint is not finished"
    ckpt.write_bytes(b"weights")
    assert layout.read_student(2, 0) == result
    moved = tmp_path / "moved"
    shutil.move(layout.root, moved)
    again = StudyLayout(moved).read_student(2, 0)
    assert again is not None and again.checkpoint == str(moved / "generation_2" / "student_0" / "model.pt")


def test_clean_partials_removes_interrupted_writes_only(tmp_path):
    layout = StudyLayout(tmp_path / "study")
    gen = layout.generation_dir(1)
    partial = gen / ".pseudo_labels.abc123.partial"
    (partial / "images").mkdir(parents=True)
    (partial / "images" / "a.png").write_bytes(b"png")
    tmp_json = gen / ".summary.json.x1y2.tmp"
    tmp_json.write_text("{")
    tmp_result = layout.student_dir(1, 0) / ".result.json.q9.tmp"
    tmp_result.parent.mkdir()
    tmp_result.write_text("{")
    keep = [
        gen / "pseudo_labels" / "datalist.json",
        gen / "notes.partial",  # not hidden: not one of ours
        layout.root / "mlflow.db",
        layout.student_dir(1, 0) / "model.pt",
    ]
    for f in keep:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("keep")
    removed = layout.clean_partials()
    assert sorted(removed) == sorted([partial, tmp_json, tmp_result])
    assert not partial.exists() and not tmp_json.exists() and not tmp_result.exists()
    assert all(f.is_file() for f in keep)
    assert layout.clean_partials() == []
    assert StudyLayout(tmp_path / "missing").clean_partials() == []


def test_identity_check_names_the_folder_and_the_differing_fields(tmp_path):
    layout = StudyLayout(tmp_path / "runs" / "isic_im")
    datalist = {"labeled": [{"image": str(tmp_path / "a.png")}], "validation": []}
    base = {"num_students": 3, "epochs": 5, "params": {"image_size": [32, 32]}}

    def identity(method="im", seed=42, **protocol):
        from monai_im.selftrain.layout import study_identity

        strategy = {"method": method, "threshold": 0.5, **({"im_dilation": 0} if method == "im" else {})}
        return study_identity(method, strategy, seed, {**base, **protocol}, datalist)

    layout.prepare(identity())
    assert json.loads(layout.identity_file.read_text()) == identity()
    layout.prepare(identity())  # the same study continues
    with pytest.raises(StudyMismatchError) as e:
        layout.check_identity(identity(method="ldt", seed=1))
    msg = str(e.value)
    assert msg.startswith(
        f"{layout.root} holds a study with method=im seed=42; this run has method=ldt seed=1."
    )
    assert "--overwrite true" in msg and "\n" not in msg
    assert "im_dilation" not in msg, "strategy details are not listed when the methods differ"
    with pytest.raises(
        StudyMismatchError, match=r"with epochs=5 params\.image_size=\[32, 32\]; this run has "
    ):
        layout.check_identity(identity(epochs=6, params={"image_size": [64, 64]}))
    # the dataset's display name is no part of what the study is (its fingerprint is)
    layout.check_identity(identity(params={"image_size": [32, 32], "dataset": "my lesions"}))
    other_data = {"labeled": [{"image": str(tmp_path / "b.png")}], "validation": []}
    from monai_im.selftrain.layout import study_identity

    changed = study_identity("im", {"method": "im", "threshold": 0.5, "im_dilation": 0}, 42, base, other_data)
    with pytest.raises(
        StudyMismatchError, match=r"with dataset=[0-9a-f]{12}; this run has dataset=[0-9a-f]{12}\."
    ):
        layout.check_identity(changed)


@pytest.mark.parametrize("damaged", ['{"method": "im", "seed": 4', "", "[1, 2]"])
def test_a_damaged_study_json_stops_in_one_line_and_overwrite_starts_over(tmp_path, damaged):
    layout = StudyLayout(tmp_path)
    layout.identity_file.write_text(damaged)
    (tmp_path / "generation_0").mkdir()
    partial = tmp_path / ".study.json.123.tmp"
    partial.write_text("left over")
    with pytest.raises(StudyMismatchError) as e:
        layout.prepare({"method": "im"})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{layout.identity_file} is damaged (")
    assert "--overwrite true" in msg and "another --output_dir" in msg
    assert layout.identity_file.read_text() == damaged and partial.is_file(), "nothing written or removed"
    layout.prepare({"method": "im"}, overwrite=True)
    assert json.loads(layout.identity_file.read_text()) == {"method": "im"}


# ---------------------------------------------------------------------------------------- whole studies
def test_a_copied_study_resumes_from_its_own_files(make_study, tiny_data, tmp_path, count_training):
    original = tmp_path / "original"
    make_study(tiny_data, original, num_generations=1).run()
    assert count_training == [(0, 0), (0, 1), (1, 0), (1, 1)]
    identity = json.loads((original / "study.json").read_text())
    assert identity["method"] == "im" and identity["seed"] == 42
    assert identity["strategy"]["min_foreground"] == 0
    assert identity["protocol"] == {
        "num_students": 2,
        "num_teachers": 2,
        "epochs": 1,
        "min_steps": 0,
        "batch_size": 4,
        "val_interval": 1,
        "key_metric": "iou",
        "params": {},
    }
    assert identity["dataset"]["fingerprint"] == dataset_fingerprint(load_datalist(tiny_data))
    assert "num_generations" not in json.dumps(identity)
    # stored paths are relative to the study folder
    summary = json.loads((original / "generation_1" / "summary.json").read_text())
    assert summary["checkpoint"] == f"generation_1/student_{summary['best_student']}/model.pt"
    assert [s["checkpoint"] for s in summary["students"]] == [
        f"generation_1/student_{k}/model.pt" for k in range(2)
    ]
    results = json.loads((original / "results.json").read_text())
    assert results["model"] == "model.pt"
    assert all(not os.path.isabs(g["checkpoint"]) for g in results["generations"])

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    _make_paths_absolute(copy, original)  # generation 0 as an older version wrote it
    (copy / "study.json").unlink()  # ... without a study.json
    partial = copy / "generation_1" / ".pseudo_labels.abc123.partial"
    partial.mkdir()
    mtimes = {f: f.stat().st_mtime_ns for f in copy.glob("generation_*/student_*/result.json")}
    pseudo_mtime = (copy / "generation_1" / "pseudo_labels" / "datalist.json").stat().st_mtime_ns

    count_training.clear()
    summaries = make_study(tiny_data, copy, num_generations=2).run()
    assert count_training == [(2, 0), (2, 1)], "generations 0 and 1 are reused"
    assert {f: f.stat().st_mtime_ns for f in mtimes} == mtimes
    assert (copy / "generation_1" / "pseudo_labels" / "datalist.json").stat().st_mtime_ns == pseudo_mtime
    assert not partial.exists()
    assert json.loads((copy / "study.json").read_text()) == identity, "an old folder gets its study.json"
    for s in summaries:
        assert Path(s["checkpoint"]).is_file() and copy in Path(s["checkpoint"]).parents
        assert all(copy in Path(st["checkpoint"]).parents for st in s["students"])
    new = json.loads((copy / "generation_2" / "summary.json").read_text())
    assert not os.path.isabs(new["checkpoint"]) and (copy / new["checkpoint"]).is_file()
    results = json.loads((copy / "results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [0, 1, 2]
    assert results["generations"][0]["checkpoint"].startswith("generation_0/"), "old paths are stored anew"


def test_another_study_is_refused_before_any_work_and_overwrite_starts_over(
    make_study, tiny_data, tmp_path, count_training
):
    out = tmp_path / "runs" / "isic_im"
    make_study(tiny_data, out, num_students=1, num_teachers=1).run()
    (out / "mlflow.db").write_text("not the study's")
    (out / "notes.txt").write_text("mine")
    before = _study_files(out)
    count_training.clear()

    other = make_study(tiny_data, out, num_students=1, num_teachers=1, seed=1, method=LabeledOnly())
    with pytest.raises(StudyMismatchError, match="method=im seed=42; this run has method=ldt seed=1"):
        other.prepare_output_dir()
    with pytest.raises(SystemExit) as e:
        other.run()
    assert str(e.value.code).startswith(f"error: {out} holds a study with method=im seed=42;")
    assert isinstance(e.value.__cause__, StudyMismatchError)
    assert count_training == []
    assert _study_files(out) == before, "nothing touched"

    # more generations of the same study are no other study
    same = make_study(tiny_data, out, num_students=1, num_teachers=1, num_generations=3)
    same.prepare_output_dir()
    assert not same.started_over

    overwriting = make_study(
        tiny_data, out, num_students=1, num_teachers=1, seed=1, method=LabeledOnly(), overwrite=True
    )
    overwriting.run()
    assert overwriting.started_over, "observers can tell that their resume state is stale"
    assert count_training == [(0, 0)]
    assert (out / "mlflow.db").read_text() == "not the study's" and (out / "notes.txt").read_text() == "mine"
    identity = json.loads((out / "study.json").read_text())
    assert identity["method"] == "ldt" and identity["seed"] == 1
    assert json.loads((out / "results.json").read_text())["study"]["method"] == "ldt"


def test_pseudo_labeled_items_follow_a_moved_dataset(make_study, tiny_data, tmp_path, count_training):
    """A pseudo-label set refers to the original unlabeled images by index: after the dataset moved, a
    resumed generation trains on the images where they are now."""
    from monai_im.methods import InconsistencyMask

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    method = InconsistencyMask(min_foreground=0, foreground_exceeds_im=False)
    out = tmp_path / "study"
    make_study(data, out, num_generations=1, method=method).run()
    # interrupt generation 1 after its pseudo-labels: its students and summary are gone
    for p in (out / "generation_1").iterdir():
        if p.name != "pseudo_labels":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    count_training.clear()
    study = make_study(moved, out, num_generations=1, method=method)
    plr, resumed = study.pseudo_label(1, [])
    assert resumed and plr.items
    assert all(Path(it["image"]).is_file() and str(moved) in it["image"] for it in plr.items)
    study.run()
    assert count_training == [(1, 0), (1, 1)]
