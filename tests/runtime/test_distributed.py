"""Studies spread over processes: the context, the sharded pseudo-labelling, and a real 2-process torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributed import HashStore

from monai_im.io import load_json
from monai_im.methods import InconsistencyMask
from monai_im.runtime.distributed import DistributedContext
from monai_im.selftrain import PseudoLabeler, PseudoLabelResult, StudyEvents
from monai_im.selftrain.events import replay_student
from monai_im.selftrain.student import StudentResult
from monai_im.transforms.presets import image_segmentation_transforms

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles" / "isic_im" / "configs"


# ---------------------------------------------------------------------- the context
def test_single_process_context_is_a_no_op():
    ctx = DistributedContext.from_env(env={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    ctx.barrier()
    assert ctx.all_gather_object({"a": 1}) == [{"a": 1}]
    assert ctx.broadcast_object("x") == "x"
    assert ctx.broadcast_object_list([3]) == [3]
    with ctx.main_first():
        pass
    assert ctx.shard(10, 4) == (0, 10)
    assert all(ctx.owns(k) for k in range(5))
    ctx.destroy()  # created no process group: nothing to destroy
    assert not torch.distributed.is_initialized()


def test_from_env_refuses_a_world_without_rank():
    with pytest.raises(ValueError, match="RANK is not set"):
        DistributedContext.from_env(env={"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="must be integers"):
        DistributedContext.from_env(env={"WORLD_SIZE": "two"})


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedContext(rank=2, world_size=2, store=HashStore())
    with pytest.raises(ValueError, match="needs the store"):
        DistributedContext(rank=1, world_size=2)


def _context(rank: int, world_size: int, store=None) -> DistributedContext:
    return DistributedContext(
        rank, world_size, device="cpu", store=store if store is not None else HashStore()
    )


def test_processes_wait_for_and_talk_to_each_other():
    """Three ranks in threads sharing one store: barriers hold, objects travel, the sequence stays aligned."""
    store, world = HashStore(), 3
    log: list[tuple[str, int]] = []
    out: dict[int, tuple] = {}

    def process(rank: int) -> None:
        ctx = _context(rank, world, store)
        if rank == 0:
            time.sleep(0.2)  # the main process is slow: the others must wait at the barrier for it
        log.append(("before", rank))
        ctx.barrier()
        log.append(("after", rank))
        with ctx.main_first():
            log.append(("first", rank))
        gathered = ctx.all_gather_object({"rank": rank})
        told = ctx.broadcast_object(f"from {rank}", src=1)
        out[rank] = (gathered, told)
        ctx.destroy()
        with pytest.raises(RuntimeError, match="destroyed"):
            ctx.barrier()

    threads = [threading.Thread(target=process, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(not t.is_alive() for t in threads)
    events = [e for e, _ in log]
    assert max(i for i, e in enumerate(events) if e == "before") < events.index("after")
    firsts = [r for e, r in log if e == "first"]
    assert firsts[0] == 0 and sorted(firsts) == [0, 1, 2]
    assert all(out[r] == ([{"rank": 0}, {"rank": 1}, {"rank": 2}], "from 1") for r in range(world))


def test_students_and_shards_are_spread_over_the_ranks():
    ranks = [_context(r, 3) for r in range(3)]
    assert [[k for k in range(7) if c.owns(k)] for c in ranks] == [[0, 3, 6], [1, 4], [2, 5]]
    # 10 items in batches of 4 (3 batches): whole batches, contiguous, in rank order
    assert [c.shard(10, 4) for c in ranks] == [(0, 4), (4, 8), (8, 10)]
    # more ranks than batches: some shards are empty, none overlaps
    many = [_context(r, 4).shard(3, 2) for r in range(4)]
    assert sorted(i for a, b in many for i in range(a, b)) == [0, 1, 2]


def test_single_process_study_has_the_no_op_context(make_study, tiny_data, tmp_path):
    seen = []
    study = make_study(tiny_data, tmp_path / "run", handlers=[_Recorder(seen)])
    assert not study.distributed.is_distributed and study.distributed.is_main
    assert seen == ["attached"], "handlers are attached in a single process"
    study.run()
    assert (tmp_path / "run" / "results.json").is_file()
    assert [(e, k) for e, k in study._events if e == "finished"] == [("finished", 0), ("finished", 1)]


def test_handlers_are_attached_on_rank_zero_only(make_study, tiny_data, tmp_path):
    seen: list[str] = []
    make_study(tiny_data, tmp_path / "r1", handlers=[_Recorder(seen)], distributed=_fake_rank(1))
    assert seen == []
    make_study(tiny_data, tmp_path / "r0", handlers=[_Recorder(seen)], distributed=_fake_rank(0))
    assert seen == ["attached"]


def test_replayed_student_logs_its_epochs():
    from monai_im.selftrain import StudyEventRegistry

    registry = StudyEventRegistry()
    logged: list[tuple] = []

    def started(study, generation, index, trainer):
        from ignite.engine import Events

        trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: logged.append((index, e.state.epoch, e.state.history_row))
        )

    registry.add_event_handler(StudyEvents.STUDENT_STARTED, started)
    registry.add_event_handler(
        StudyEvents.STUDENT_FINISHED, lambda study, result, resumed: logged.append(("end", resumed))
    )
    history = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25, "val_iou": 0.7}]
    replay_student(registry, StudentResult(1, 3, 0.7, 2, "ckpt.pt", history))
    assert logged == [(3, 1, history[0]), (3, 2, history[1]), ("end", False)]


class _Recorder:
    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    def attach(self, study) -> None:
        self.seen.append("attached")
        study._events = []
        study.add_event_handler(
            StudyEvents.STUDENT_FINISHED,
            lambda s, result, resumed: s._events.append(("finished", result.index)),
        )


def _fake_rank(rank: int) -> DistributedContext:
    """A context that says it is ``rank`` of 2 (only its attributes are used before ``run``)."""
    return _context(rank, 2)


# ---------------------------------------------------------------------- shards of pseudo-labels
class _ThresholdTeacher(torch.nn.Module):
    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] - self.threshold) * 50.0


def _images(root: Path, n: int, size: int = 16) -> list[dict[str, str]]:
    root.mkdir(parents=True)
    ramp = np.linspace(0, 255, size, dtype=np.float32)[:, None].repeat(size, 1)
    items = []
    for i in range(n):
        p = root / f"img{i}.png"
        Image.fromarray(np.clip(ramp + 15 * i, 0, 255).astype(np.uint8)).save(p)
        lab = root / f"lab{i}.png"
        Image.fromarray(((ramp + 15 * i) > 120).astype(np.uint8) * 255).save(lab)
        items.append({"image": str(p), "label": str(lab)})
    return items


class _ScoredIM(InconsistencyMask):
    """IM with a quality score per image (the mean teacher probability), to cover the score statistics."""

    def __call__(self, probs, images=None):
        out = super().__call__(probs, images)
        out.score = probs.mean(dim=tuple(range(2, probs.ndim))).mean(0)
        return out


@pytest.mark.parametrize("world_size, batch_size, starts", [(2, 2, [0, 4]), (3, 4, [0, 0, 4])])
def test_merged_shards_equal_single_process_labelling(tmp_path, world_size, batch_size, starts):
    """7 images in batches of 2 (4 batches) over 2 ranks, and in batches of 4 over 3 (one shard empty)."""
    items = _images(tmp_path / "unlabeled", 7)
    transform = image_segmentation_transforms((16, 16), num_channels=1)
    teachers = [_ThresholdTeacher(t) for t in (0.35, 0.5, 0.65)]

    def labeler():
        strategy = _ScoredIM(mode="binary", min_foreground=0, foreground_exceeds_im=False)
        return PseudoLabeler(strategy, batch_size=batch_size, progress=False, num_figure_images=2)

    single = labeler()(teachers, items, transform, tmp_path / "single" / "pl", extra_stats={"x": 1.0})

    out = tmp_path / "dist" / "pl"
    ranks = [_context(r, world_size) for r in range(world_size)]
    shard_dirs = []
    for ctx in ranks:
        lab = labeler()
        d = lab.label_shard(
            teachers, items, transform, lab.shard_folder(out, ctx.rank), ctx.shard(len(items), lab.batch_size)
        )
        shard_dirs.append(d)
    assert [load_json(d / "shard.json")["start"] for d in shard_dirs] == starts
    assert [(d / "im_figure.png").is_file() for d in shard_dirs].count(True) == 1, (
        "one figure: the first batch's"
    )
    merged = labeler().merge_shards(shard_dirs[::-1], out, extra_stats={"x": 1.0})
    assert not any(d.exists() for d in shard_dirs), "the shards are removed once merged"

    a = load_json(tmp_path / "single" / "pl" / "datalist.json")
    b = load_json(out / "datalist.json")
    assert a == b and [r["source"] for r in b["pseudo_labeled"]] == list(range(7))
    assert "score" in b["pseudo_labeled"][0]
    sa, sb = load_json(tmp_path / "single" / "pl" / "stats.json"), load_json(out / "stats.json")
    assert sa == sb and merged.stats == single.stats
    assert {"label_iou", "score_mean", "im_fraction", "x"} <= set(sb)
    for ra, rb in zip(single.items, merged.items):
        assert Path(ra["label"]).name == Path(rb["label"]).name
        assert Path(ra["label"]).read_bytes() == Path(rb["label"]).read_bytes()
        assert Path(ra["im"]).read_bytes() == Path(rb["im"]).read_bytes()
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))  # noqa: E731
    assert files(tmp_path / "single" / "pl") == files(out)
    loaded = PseudoLabelResult.load(out)
    assert loaded.items == merged.items and loaded.figure_path == merged.figure_path


def test_merge_refuses_a_gap(tmp_path):
    items = _images(tmp_path / "unlabeled", 5)
    transform = image_segmentation_transforms((16, 16), num_channels=1)
    lab = PseudoLabeler(InconsistencyMask(), batch_size=2, progress=False, num_figure_images=0)
    teachers = [_ThresholdTeacher(0.5)]
    first = lab.label_shard(teachers, items, transform, tmp_path / "s0", (0, 2))
    last = lab.label_shard(teachers, items, transform, tmp_path / "s2", (4, 5))
    with pytest.raises(ValueError, match="s2: shard starts at item 4, the previous one ends at 2"):
        lab.merge_shards([first, last], tmp_path / "pl")
    assert not (tmp_path / "pl").exists()
    with pytest.raises(ValueError, match="not a finished pseudo-label shard"):
        lab.merge_shards([first, tmp_path / "nothing"], tmp_path / "pl")


# ---------------------------------------------------------------------- the bundles' configs
@pytest.mark.parametrize("bundle", ["isic_im", "hela_im", "flare22_im"])
def test_multi_gpu_config_adds_the_context_to_each_bundle(bundle, monkeypatch):
    from monai.bundle import ConfigParser

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    configs = REPO / "bundles" / bundle / "configs"
    train = load_json(configs / "train.json")
    multi = load_json(configs / "multi_gpu_train.json")
    # it keeps every step of train.json, and makes the dataset on rank 0 first
    assert [i for i in multi["initialize"] if "@distributed" not in i] == train["initialize"]
    steps = multi["initialize"]
    assert steps.index("$@distributed.enter_main_first()") < steps.index("$@datalist")
    assert steps.index("$@datalist") < steps.index("$@distributed.exit_main_first()")
    assert multi["finalize"] == [*train["finalize"], "$@distributed.destroy()"]
    parser = ConfigParser(
        ConfigParser.load_config_files([configs / "train.json", configs / "multi_gpu_train.json"])
    )
    assert parser["study"]["distributed"] == "@distributed"
    context = parser.get_parsed_content("distributed")
    assert isinstance(context, DistributedContext) and not context.is_distributed
    assert parser.get_parsed_content("device") == context.device


# ---------------------------------------------------------------------- the real thing: torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bundle_command(output_dir: Path, data_dir: Path, configs: list[str]) -> list[str]:
    overrides = {
        "dataset_dir": str(data_dir),
        "output_dir": str(output_dir),
        "demo_num_train": 16,
        "demo_num_val": 4,
        "demo_num_test": 4,
        "demo_image_size": 32,
        "labeled_fraction": 0.5,
        "image_size": [32, 32],
        "alpha": 0.25,
        "epochs": 2,
        "min_steps": 30,  # 15 epochs of 2 steps: teachers that make labels and IMs worth comparing
        "learning_rate": 0.01,
        "threshold": 0.3,
        "batch_size": 4,
        "num_students": 2,
        "num_teachers": 2,
        "num_generations": 1,
        "min_foreground": 0,
        "foreground_exceeds_im": False,
        "progress": False,
        "precision": "fp32",
        "inference_precision": "fp32",
        "channels_last": False,
    }
    args = ["-m", "monai.bundle", "run", "--config_file", json.dumps([str(CONFIGS / c) for c in configs])]
    for k, v in overrides.items():
        args += [f"--{k}", v if isinstance(v, str) else repr(v)]  # fire reads Python literals
    return args


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd[:8])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout + done.stderr


def _mlflow_runs(output_dir: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("isic_im_demo")
    return client.search_runs([exp.experiment_id], max_results=100)


def test_torchrun_two_processes_equal_one_process(tmp_path):
    configs = ["train.json", "demo.json"]
    data = tmp_path / "data"
    single, multi = tmp_path / "single", tmp_path / "multi"
    _run([sys.executable, *_bundle_command(single, data / "a", configs)], tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    log = _run([*torchrun, *_bundle_command(multi, data / "b", [*configs, "multi_gpu_train.json"])], tmp_path)
    for g in (0, 1):  # student k on rank k % 2; 8 unlabeled images in batches of 4: a batch per rank
        assert f"process 0: trains students [0] of generation {g}" in log
        assert f"process 1: trains students [1] of generation {g}" in log
    assert "process 0: pseudo-labels unlabeled images 0:4" in log
    assert "process 1: pseudo-labels unlabeled images 4:8" in log
    assert log.count("study finished") == 1 and log.count("generation 1 [im] | best student") == 1

    # the same students (state dicts equal), trained on both ranks
    for g in (0, 1):
        for k in (0, 1):
            ra = load_json(single / f"generation_{g}" / f"student_{k}" / "result.json")
            rb = load_json(multi / f"generation_{g}" / f"student_{k}" / "result.json")
            assert ra["best_metric"] == rb["best_metric"] and ra["history"] == rb["history"]
            wa = torch.load(single / ra["checkpoint"], map_location="cpu", weights_only=True)
            wb = torch.load(multi / rb["checkpoint"], map_location="cpu", weights_only=True)
            wa, wb = wa.get("network", wa), wb.get("network", wb)
            assert wa.keys() == wb.keys()
            assert all(torch.equal(wa[n], wb[n]) for n in wa), f"student {g}.{k} differs"

    # the same pseudo-labels: rows, files and label contents
    pa, pb = single / "generation_1" / "pseudo_labels", multi / "generation_1" / "pseudo_labels"
    rows_a = load_json(pa / "datalist.json")["pseudo_labeled"]
    rows_b = load_json(pb / "datalist.json")["pseudo_labeled"]
    assert rows_a and [(r["source"], r["label"], r["im"]) for r in rows_a] == [
        (r["source"], r["label"], r["im"]) for r in rows_b
    ]
    for r in rows_a:
        for key in ("label", "im"):
            assert np.array_equal(np.asarray(Image.open(pa / r[key])), np.asarray(Image.open(pb / r[key])))
    assert any(np.asarray(Image.open(pb / r["label"])).any() for r in rows_b), "labels worth comparing"
    assert any(np.asarray(Image.open(pb / r["im"])).any() for r in rows_b), "IMs worth comparing"
    assert load_json(pa / "stats.json") == load_json(pb / "stats.json")
    assert (pb / "im_figure.png").is_file()
    assert not list((multi / "generation_1").glob(".*.partial")), "no shard left behind"

    # the same summaries (but the time taken), written once, by rank 0
    for g in (0, 1):
        sa = load_json(single / f"generation_{g}" / "summary.json")
        sb = load_json(multi / f"generation_{g}" / "summary.json")
        sa.pop("seconds"), sb.pop("seconds")
        assert sa == sb
    ra, rb = load_json(single / "results.json"), load_json(multi / "results.json")
    assert ra.keys() == rb.keys() and len(ra["generations"]) == len(rb["generations"]) == 2
    assert (multi / "model.pt").read_bytes() == (single / "model.pt").read_bytes()

    # one MLflow study with every generation and student, as in the single process
    runs_a, runs_b = _mlflow_runs(single), _mlflow_runs(multi)
    parents = [r for r in runs_b if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in runs_a) == sorted(r.info.run_name for r in runs_b)
    students = [r for r in runs_b if r.info.run_name.startswith("student")]
    assert len(students) == 4 and all("train_loss" in r.data.metrics for r in students)
