"""The benchmark scripts' own bookkeeping (no timing here): docs update and accuracy scheduling."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def scripts():
    """The benchmark scripts import their siblings from their own folder, also lazily."""
    sys.path.insert(0, str(BENCH))
    yield importlib.import_module
    sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def speed(scripts):
    return scripts("speed")


@pytest.fixture(scope="module")
def accuracy(scripts):
    return scripts("accuracy")


def test_docs_get_the_tables_between_the_markers_only(speed, tmp_path):
    results = json.loads((BENCH / "results" / "speed.json").read_text())
    doc = tmp_path / "doc.md"
    start, end = speed.MARKERS
    doc.write_text(f"# intro\n\n{start}\nold tables\n{end}\n\n## after\n")
    speed.update_docs(doc, results)
    text = doc.read_text()
    assert text.startswith("# intro\n\n" + start) and text.endswith(end + "\n\n## after\n")
    assert "old tables" not in text
    for name in results["benchmarks"]:
        assert speed.TITLES[name] in text
    speed.update_docs(doc, results)  # idempotent
    assert doc.read_text() == text


def test_docs_without_markers_are_left_alone(speed, tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="speed-results"):
        speed.update_docs(doc, {"benchmarks": {}})
    assert doc.read_text() == "no markers here\n"


def test_accuracy_schedule_runs_generation_zero_first_and_waits_for_it(accuracy, tmp_path):
    methods = list(accuracy.METHODS)
    order = accuracy.schedule(methods, [0, 1])
    assert order[:2] == [("IM (n=3)", 0), ("IM (n=3)", 1)]
    assert sorted(order) == sorted((m, s) for m in methods for s in (0, 1))
    args = type("Args", (), {"out": tmp_path})()
    assert accuracy.ready(args, "FDT", 0)
    assert not accuracy.ready(args, "IM (n=2)", 0)
    summary = accuracy.run_dir(tmp_path, "IM (n=3)", 0) / "generation_0" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text("{}")
    assert accuracy.ready(args, "IM (n=2)", 0) and accuracy.ready(args, "LDT", 0)
    assert not accuracy.ready(args, "LDT", 1)


def test_speedup_line_names_the_fastest_setting_of_each_workload(scripts):
    sp = scripts("speed_precision")

    def workload(**speedups):
        return {"variants": {name: {"speedup": s} for name, s in speedups.items()}}

    def sizes(train, pseudo):
        return {"training": workload(**train), "pseudo_labelling": workload(**pseudo)}

    base = {sp.BASELINE: 1.0}
    result = {
        "sizes": {
            "64": sizes({**base, sp.ALL: 9.0, sp.DEFAULTS: 9.0}, {**base, sp.ALL: 9.0, sp.DEFAULTS: 9.0}),
            "256": sizes(
                {**base, sp.ALL: 5.42, sp.DEFAULTS: 2.86}, {**base, sp.ALL: 4.06, sp.DEFAULTS: 5.77}
            ),
        }
    }
    assert sp.fastest(result, "training") == (sp.ALL, 5.42)
    assert sp.fastest(result, "pseudo_labelling") == (sp.DEFAULTS, 5.77)
    assert sp.speedup_line(result) == (
        "speed-up at 256x256: training 5.42x, pseudo-labelling 5.77x (eager fp32 = 1.00x)"
    )
    assert "bundle defaults 2.86x" in sp.fastest_settings_line(result)


def test_methods_json_picks_the_generation_on_validation_and_gives_gap_closure(scripts):
    report = scripts("accuracy_report")
    key = "test_iou"

    def row(method, gen, test, val, n=3):
        return {
            "method": method,
            "generation": gen,
            f"{key}_mean": test,
            f"{key}_std": 0.01,
            f"{key}_n": n,
            "val_key_mean": val,
        }

    table = [
        row("LDT", 0, 0.50, 0.5),
        row("FDT", 0, 0.70, 0.7),
        row("IM (n=2)", 0, 0.50, 0.5),
        row("IM (n=2)", 1, 0.65, 0.66),  # best on validation
        row("IM (n=2)", 2, 0.68, 0.60),  # best on test, not picked
    ]
    gap = report.gap_closure(table, key, True)
    out = report.method_summary(table, key, True, ["LDT", "FDT", "IM (n=2)"], gap)
    im = out["methods"]["IM (n=2)"]
    assert im["generation"] == 1 and im["mean"] == 0.65 and im["seeds"] == 3
    assert im["gap_closure"] == pytest.approx(0.75)
    assert out["methods"]["LDT"]["gap_closure"] == 0 and out["higher_is_better"] is True
    lower = report.method_summary(
        [row("LDT", 0, 9.0, 9.0), row("FDT", 0, 3.0, 3.0), row("AIM", 1, 4.5, 4.0)],
        "test_iou",
        False,
        ["LDT", "FDT", "AIM"],
        {"LDT": 9.0, "FDT": 3.0},
    )
    assert lower["methods"]["AIM"]["gap_closure"] == pytest.approx(0.75)


def test_earlier_runs_fill_the_studies_not_run_here_and_never_replace_one_that_was(scripts, tmp_path):
    report = scripts("accuracy_report")
    earlier = tmp_path / "runs.csv"
    earlier.write_text(
        "generation,method,seed,seconds,test_iou,training_images,val_key\n"
        "0,LDT,0,59.2,0.40,24,0.42\n"  # run again here: the local record wins
        "0,LDT,1,41.0,0.43,24,0.44\n"
        "0,IM (n=2),1,10.0,0.41,24,\n"
        "1,IM (n=2),1,50.5,0.52,60,0.50\n"
        "0,FDT,1,70.0,0.60,240,0.61\n"  # a method not asked for
        "0,LDT,5,40.0,0.30,24,0.30\n"  # a seed not asked for
    )
    here = [{"method": "LDT", "seed": 0, "generation": 0, "test_iou": 0.45, "seconds": 60.0}]
    rows = report.merge_rows(here, [earlier], ["LDT", "IM (n=2)"], [0, 1])
    assert sorted((r["method"], r["seed"], r["generation"]) for r in rows) == [
        ("IM (n=2)", 1, 0),
        ("IM (n=2)", 1, 1),
        ("LDT", 0, 0),
        ("LDT", 1, 0),
    ]
    assert next(r for r in rows if r["seed"] == 0)["test_iou"] == 0.45
    im1 = next(r for r in rows if r["method"] == "IM (n=2)" and r["generation"] == 1)
    assert im1["test_iou"] == 0.52 and im1["training_images"] == 60 and isinstance(im1["generation"], int)
    assert next(r for r in rows if r["method"] == "IM (n=2)" and r["generation"] == 0)["val_key"] is None
    table = report.summarise(rows, "test_iou")
    ldt = next(t for t in table if t["method"] == "LDT")
    assert ldt["test_iou_n"] == 2 and ldt["test_iou_mean"] == pytest.approx(0.44)
    wrong = tmp_path / "other.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a runs.csv"):
        report.merge_rows(here, [wrong], ["LDT"], [0])


def test_allocator_line_compares_the_defaults_with_eager_fp32_on_the_default_allocator(scripts):
    al = scripts("speed_allocator")
    seconds = {
        ("training", "eager fp32", al.MODES[0]): 2.0,
        ("training", "eager fp32", al.MODES[1]): 1.2,
        ("training", "defaults", al.MODES[0]): 0.9,
        ("training", "defaults", al.MODES[1]): 0.5,
        ("pseudo_labelling", "eager fp32", al.MODES[0]): 3.0,
        ("pseudo_labelling", "eager fp32", al.MODES[1]): 2.0,
        ("pseudo_labelling", "defaults", al.MODES[0]): 1.0,
        ("pseudo_labelling", "defaults", al.MODES[1]): 0.4,
    }
    result = {
        "size": 256,
        "batch_size": 16,
        "rounds": 3,
        "calls_per_process": 3,
        "rows": {
            "|".join(k): {"seconds_median": v, "seconds": [v], "kernel_seconds_median": 0.0}
            for k, v in seconds.items()
        },
    }
    assert al.allocator_line(result) == (
        "speed-up at 256x256 with the bundle defaults: training 4.00x, pseudo-labelling 7.50x "
        "(eager fp32 with glibc's default allocator = 1.00x)"
    )
    text = al.allocator_table(result)
    # defaults with reuse vs defaults without: 0.9 / 0.5
    assert "1.80x" in text and "2.50x" in text  # and pseudo-labelling's 1.0 / 0.4


def test_contention_runs_the_other_work_only_inside_the_block(scripts):
    import threading
    import time

    ct = scripts("speed_contention")
    calls = []
    lock = threading.Lock()

    def work():
        with lock:
            calls.append(1)
        time.sleep(0.001)

    beside = ct._Beside(work)
    with beside:
        deadline = time.time() + 5.0
        while not calls and time.time() < deadline:
            time.sleep(0.001)
    after = len(calls)
    time.sleep(0.05)
    assert after > 0  # it ran while the block was open
    assert len(calls) == after  # and not after it: the thread was stopped and joined
    assert not beside.thread.is_alive()
    with beside:  # the same object serves every round
        time.sleep(0.02)
    assert len(calls) > after


def test_every_benchmark_has_a_title_and_renders_from_its_saved_result(speed, scripts):
    assert set(speed.TITLES) == set(speed.BENCHMARKS)
    ct = scripts("speed_contention")
    rows = {
        name: {"wall": {"median": 0.5 * (i + 1), "min": 0.4, "max": 0.6}}
        for i, name in enumerate(ct.VARIANTS)
    }
    for r in rows.values():
        r["ratio"] = r["wall"]["median"] / 0.5
    result = {"image_size": 256, "batch_size": 32, "repeats": 5, "threads": 1, "rows": rows}
    text = speed.render("contention", result)
    assert " 3.00x |" in text and "reading process" in text


def test_accuracy_refuses_an_output_folder_holding_another_variety_of_data(scripts, tmp_path, capsys):
    accuracy = scripts("accuracy")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"kind": "isic", "variety": "classic"}))
    with pytest.raises(SystemExit) as e:
        accuracy.main(["isic", "--out", str(tmp_path), "--variety", "families", "--report-only"])
    assert e.value.code == 2 and "another variety of demo data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        accuracy.main(["flare", "--out", str(tmp_path / "f"), "--variety", "families", "--report-only"])
    assert "only the classic variety" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        accuracy.main(["isic", "--out", str(tmp_path), "--merge", str(tmp_path / "none.csv")])
    assert "no such runs.csv" in capsys.readouterr().err


def test_accuracy_source_not_asked_for_runs_generation_zero_alone_outside_the_report(accuracy, tmp_path):
    args = type("Args", (), {"out": tmp_path, "source_only": ["IM (n=3)"]})()
    source = accuracy.study_dir(args, "IM (n=3)", 1)
    assert source == tmp_path / "sources" / "im_n3" / "seed1"
    assert accuracy.study_dir(args, "IM (n=2)", 1) == accuracy.run_dir(tmp_path, "IM (n=2)", 1)
    assert not accuracy.ready(args, "IM (n=2)", 1)
    (source / "generation_0").mkdir(parents=True)
    (source / "generation_0" / "summary.json").write_text("{}")
    assert accuracy.ready(args, "IM (n=2)", 1)
    full = type("Args", (), {"out": tmp_path})()
    assert not accuracy.ready(full, "IM (n=2)", 1)  # asked for, the source is the reported study
    earlier = accuracy.run_dir(tmp_path, "IM (n=3)", 2) / "generation_0"
    earlier.mkdir(parents=True)
    (earlier / "summary.json").write_text("{}")
    assert (
        accuracy.study_dir(args, "IM (n=3)", 2) == earlier.parent
    )  # an earlier study's generation 0 is reused

    cli = type(
        "Args",
        (),
        {
            **{k: None for k in ("students", "epochs", "min_steps", "batch_size")},
            "out": tmp_path,
            "dataset": "isic",
            "generations": 2,
            "num_train": 8,
            "num_val": 4,
            "num_test": 4,
            "size": 32,
            "alpha": None,
            "variety": "families",
        },
    )()
    cmd = accuracy.bundle_command(cli, "IM (n=3)", 1, output_dir=source, generations=0)
    assert cmd[cmd.index("--num_generations") + 1] == "0"
    assert cmd[cmd.index("--demo_variety") + 1] == "families"  # else the bundle refuses the data folder
    assert cmd[cmd.index("--output_dir") + 1] == str(source)
    cmd = accuracy.bundle_command(cli, "IM (n=2)", 1)
    assert cmd[cmd.index("--num_generations") + 1] == "2"
