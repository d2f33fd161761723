"""Accuracy study: does IM help? LDT, ALDT, FDT and IM (n = 2, 3 teachers) on a demo dataset, over seeds.

Every run goes through the real bundle (``python -m monai.bundle run``) and is logged to one MLflow
store; the summary (tables, gap closure, plot) is written to ``--out`` and logged to MLflow as a run
of its own. Generation 0 of a study *is* labeled-only training, so for each seed the IM study with
three teachers runs first and its finished generation 0 is copied into the LDT and IM (n = 2) output
folders; those studies then resume from it (the bundle skips finished generations), which saves a
third of the work and gives every method of a seed the very same starting students. A source that
is not among ``--methods`` (e.g. ``--methods "IM+ (n=2)"`` alone) runs its generation 0 only, under
``<out>/sources/``, and is left out of the report.

Example (one dataset, about 40 minutes on 2 CPU cores)::

    python benchmarks/accuracy.py isic --out benchmarks/results/isic
    python benchmarks/accuracy.py hela --out benchmarks/results/hela
    # 3D: LDT, FDT and IM on the synthetic FLARE-like CT demo (2 generations)
    python benchmarks/accuracy.py flare --out runs/accuracy/flare --methods "IM (n=3)" LDT FDT --generations 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from accuracy_report import write_report  # a sibling module: the script's folder is on sys.path

from monai_im.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]

BUNDLES = {"isic": "isic_im", "hela": "hela_im", "flare": "flare22_im"}
#: per dataset kind: the defaults of the schedule and data options (2D demos; the 3D demo of flare22_im)
DEFAULTS = {
    "2d": {"epochs": 20, "min_steps": 400, "batch_size": 8, "num_train": 240, "num_val": 40, "num_test": 100},
    "flare": {"epochs": 12, "min_steps": 150, "batch_size": 2, "num_train": 24, "num_val": 4, "num_test": 8},
}
# method label -> bundle overrides
METHODS = {
    "IM (n=3)": {"method": "im", "num_teachers": 3},
    "ALDT": {"method": "aldt"},
    "FDT": {"method": "fdt"},
    "IM (n=2)": {"method": "im", "num_teachers": 2},
    "LDT": {"method": "ldt"},
}
# not in the default set: IM with the ignore-index policy instead of the paper's background policy, and
# an acceptance rule that keeps every image whose IM covers at most 30% of it (--methods ... "IM-ignore (n=2)")
VARIANTS = {
    "IM-ignore (n=2)": {
        "method": "im",
        "num_teachers": 2,
        "label_policy": "ignore",
        "foreground_exceeds_im": False,
        "max_im_fraction": 0.3,
    },
}
# the IM-on-augmented-data variant: generation 0 is ALDT (--methods ... "AIM (n=2)")
VARIANTS["AIM (n=2)"] = {"method": "aim", "num_teachers": 2}
# the rest of the paper's family (docs/methods.md), each with the paper's settings
FAMILY = {
    "AFDT": {"method": "afdt"},
    "Model Ensemble (n=2)": {"method": "model_ensemble", "num_teachers": 2},
    "Input Ensemble": {"method": "input_ensemble"},
    "Consistency Loss": {"method": "consistency_loss"},
    "Noisy Student": {"method": "noisy_student"},
    "EvalNet (n=2)": {"method": "evalnet", "num_teachers": 2},
    "IM+ (n=2)": {"method": "im_plus", "num_teachers": 2},
    "AIM+ (n=2)": {"method": "aim_plus", "num_teachers": 2},
    "IM++ (n=2)": {"method": "im_plus_plus", "num_teachers": 2},
    "AIM++ (n=2)": {"method": "aim_plus_plus", "num_teachers": 2},
    # continuous semi-supervised methods, with and without IM (generation 0 only)
    "FixMatch": {"method": "fixmatch"},
    "FixMatch+IM": {"method": "fixmatch_im"},
    "Mean Teacher": {"method": "mean_teacher"},
    "Mean Teacher+IM": {"method": "mean_teacher_im"},
    "CPS": {"method": "cps"},
    "CPS+IM": {"method": "cps_im"},
}
VARIANTS.update(FAMILY)
#: methods whose generation 0 is their own semi-supervised training (nothing to reuse)
CONTINUOUS = ("FixMatch", "FixMatch+IM", "Mean Teacher", "Mean Teacher+IM", "CPS", "CPS+IM")
# studies whose generation 0 is another study's: (method -> the study it is copied from); every method
# that starts from labeled-only students reuses IM (n=3)'s, those that start from ALDT reuse ALDT's
GENERATION_0_FROM = {
    "IM (n=2)": "IM (n=3)",
    "LDT": "IM (n=3)",
    "IM-ignore (n=2)": "IM (n=3)",
    "AIM (n=2)": "ALDT",
    **{m: "IM (n=3)" for m in FAMILY if m not in ("AFDT", "AIM+ (n=2)", "AIM++ (n=2)", *CONTINUOUS)},
    "AIM+ (n=2)": "ALDT",
    "AIM++ (n=2)": "ALDT",
}
ALL_METHODS = {**METHODS, **VARIANTS}


def slug(label: str) -> str:
    return label.lower().replace(" ", "").replace("(", "_").replace(")", "").replace("=", "")


def run_dir(out: Path, label: str, seed: int) -> Path:
    return out / "runs" / slug(label) / f"seed{seed}"


def has_generation_0(study: Path) -> bool:
    """Whether the study in ``study`` has a finished generation 0."""
    return (study / "generation_0" / "summary.json").is_file()


def study_dir(args: argparse.Namespace, label: str, seed: int) -> Path:
    """Where the study of (``label``, ``seed``) lives: a generation-0 source that was not asked for
    (only there for the methods that reuse it) runs its generation 0 alone, under ``sources/``, so it
    never enters the report nor replaces a published row of that method. A study of that method already
    under ``runs/`` with a finished generation 0 is used as it is."""
    full = run_dir(args.out, label, seed)
    if label in getattr(args, "source_only", ()) and not has_generation_0(full):
        return args.out / "sources" / slug(label) / f"seed{seed}"
    return full


def copy_generation_0(src: Path, dst: Path, label: str) -> None:
    """Give ``dst`` the finished generation 0 of ``src`` (paths inside the JSON files rewritten)."""
    target = dst / "generation_0"
    if has_generation_0(dst):
        return
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src / "generation_0", target)
    for f in target.rglob("*.json"):
        text = f.read_text().replace(str(src.resolve()), str(dst.resolve()))
        data = json.loads(text)
        if f.name == "summary.json":
            data["method"] = ALL_METHODS[label]["method"]
        f.write_text(json.dumps(data, indent=2) + "\n")


def init_store(args: argparse.Namespace) -> None:
    """Create the shared sqlite store and the experiment once, before studies write to it in parallel
    (two processes migrating a new sqlite database at the same time collide)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(args.out / 'mlflow.db').resolve()}")
    name = f"{args.dataset}_accuracy"
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(args.out / "mlartifacts").resolve().as_uri())


def study_overrides(
    args: argparse.Namespace,
    *,
    seed: int,
    dataset_dir: Path,
    output_dir: Path,
    experiment: str,
    run_name: str,
) -> dict[str, Any]:
    """The bundle overrides every benchmark study shares: where its data, folder and MLflow store are,
    and the demo schedule and split sizes of ``args`` (also used by ``active_learning.py``)."""
    return {
        "seed": seed,
        "dataset_dir": str(dataset_dir),
        "output_dir": str(output_dir),
        "tracking_uri": f"sqlite:///{(args.out / 'mlflow.db').resolve()}",
        "experiment_name": experiment,
        "run_name": run_name,
        "num_students": args.students,
        "num_generations": args.generations,
        "epochs": args.epochs,
        "min_steps": args.min_steps,
        "batch_size": args.batch_size,
        "demo_num_train": args.num_train,
        "demo_num_val": args.num_val,
        "demo_num_test": args.num_test,
        # the bundle refuses a data folder holding another variety than its demo_variety
        "demo_variety": getattr(args, "variety", "classic"),
        "progress": False,
        "val_interval": 1,  # every epoch: checkpoints and teachers are picked on the validation metric
    }


def bundle_command(
    args: argparse.Namespace,
    label: str,
    seed: int,
    *,
    output_dir: Path | None = None,
    generations: int | None = None,
) -> list[str]:
    bundle = BUNDLES[args.dataset]
    configs = f"['bundles/{bundle}/configs/train.json','bundles/{bundle}/configs/demo.json']"
    overrides = {
        **ALL_METHODS[label],
        **study_overrides(
            args,
            seed=seed,
            dataset_dir=args.out / "data",
            output_dir=output_dir or run_dir(args.out, label, seed),
            experiment=f"{args.dataset}_accuracy",
            run_name=f"{label} seed {seed}",
        ),
    }
    if generations is not None:
        overrides["num_generations"] = generations
    if args.dataset != "flare":  # the 3D demo keeps its own volume and patch sizes
        overrides.update({"demo_image_size": args.size, "image_size": [args.size, args.size]})
    if args.alpha is not None:
        overrides["alpha"] = args.alpha
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs]
    for k, v in overrides.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return cmd


def finished(out: Path, generations: int, expect: dict | None = None) -> bool:
    """Whether the study in ``out`` has run to the end; a study asked for more generations than it
    has is not (the bundle resumes it and adds the missing ones). A finished study whose settings
    differ from ``expect`` (keys of its ``results.json`` ``study``) stops the run: it is never mixed
    into a table of other settings."""
    f = out / "results.json"
    if not f.is_file():
        return False
    results = json.loads(f.read_text())
    held = results.get("study", {})
    differ = [f"{k}={held[k]} (asked: {v})" for k, v in (expect or {}).items() if k in held and held[k] != v]
    if differ:
        raise SystemExit(f"error: {out} holds a finished study of other settings: {', '.join(differ)}")
    if results.get("study", {}).get("generations") == 0:
        return True  # a method without pseudo-labels: one generation only
    return len(results.get("generations", [])) >= generations + 1


def run_one(args: argparse.Namespace, label: str, seed: int) -> float:
    out = study_dir(args, label, seed)
    source_only = label in getattr(args, "source_only", ())
    generations = 0 if source_only else args.generations
    expect = {
        "students": args.students,
        "epochs": args.epochs,
        "min_steps": args.min_steps,
        "batch_size": args.batch_size,
    }
    if finished(out, generations, expect) or (source_only and has_generation_0(out)):
        return 0.0  # done, or a source whose generation 0 (all the others need of it) is there
    out.mkdir(parents=True, exist_ok=True)
    if label in GENERATION_0_FROM:
        copy_generation_0(study_dir(args, GENERATION_0_FROM[label], seed), out, label)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start = time.time()
    log = args.out / "logs" / f"{slug(label)}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(
            bundle_command(args, label, seed, output_dir=out, generations=generations),
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{label} seed {seed} failed; see {log}")
    seconds = time.time() - start
    print(f"  {label:9s} seed {seed}: {seconds:6.0f}s", flush=True)
    return seconds


def schedule(methods: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The studies in the order they should start: each seed's IM (n = 3) study first (the others of
    that seed reuse its generation 0), then the longest studies first (IM before ALDT, FDT, LDT)."""
    rank = {"IM (n=3)": 0, "ALDT": 1, **{m: 2 for m in GENERATION_0_FROM if m != "LDT"}, "FDT": 3, "AFDT": 3}
    rank["LDT"] = 4
    jobs = [(m, s) for m in methods for s in seeds]
    return sorted(jobs, key=lambda ms: (rank.get(ms[0], 1), ms[1]))


def ready(args: argparse.Namespace, label: str, seed: int) -> bool:
    """Whether a study can start: those that reuse generation 0 wait for it to be finished."""
    if label not in GENERATION_0_FROM:
        return True
    return has_generation_0(study_dir(args, GENERATION_0_FROM[label], seed))


def run_all(args: argparse.Namespace, methods: list[str]) -> None:
    """Run every (method, seed) study, ``args.jobs`` at a time, each as soon as it can start (no
    barrier between the generation-0 studies and those that reuse them)."""
    pending = schedule(methods, args.seeds)
    print(f"{args.dataset}: {len(pending)} studies, {args.jobs} at a time", flush=True)
    running: dict = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        while pending or running:
            while len(running) < args.jobs:
                nxt = next((ms for ms in pending if ready(args, *ms)), None)
                if nxt is None:
                    break
                pending.remove(nxt)
                running[pool.submit(run_one, args, *nxt)] = nxt
            if not running:
                raise RuntimeError(f"studies waiting on a generation 0 that no study makes: {pending}")
            done, _ = wait(list(running), timeout=5, return_when=FIRST_COMPLETED)
            for fut in done:
                running.pop(fut)
                fut.result()  # a failed study stops the driver (finished studies are kept and skipped on rerun)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(BUNDLES))
    p.add_argument("--out", type=Path, required=True, help="folder for data, runs, MLflow store and report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(ALL_METHODS),
        metavar="METHOD",
        help=f"any of {list(ALL_METHODS)} (default: {list(METHODS)})",
    )
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--students", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="default: 20 (2D), 12 (flare)")
    p.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="floor on each student's optimiser steps (default 400 for 2D: the paper's labeled-only ISIC "
        "students take about 400; 150 for flare)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 (2D), 2 volumes (flare)")
    p.add_argument("--num-train", type=int, default=None, help="default: 240 images (2D), 24 volumes (flare)")
    p.add_argument("--num-val", type=int, default=None, help="default: 40 (2D), 4 (flare)")
    p.add_argument("--num-test", type=int, default=None, help="default: 100 (2D), 8 (flare)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument(
        "--variety",
        default="classic",
        help="demo data variety: 'classic', or 'families' (acquisition families that augmentation "
        "cannot turn into one another); use a new --out for each",
    )
    p.add_argument("--alpha", type=float, default=None, help="network width (default: the demo's)")
    p.add_argument("--jobs", type=int, default=2, help="studies run at the same time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per study")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUNS_CSV",
        help="add the studies of earlier runs.csv files (e.g. benchmarks/results/<dataset>/runs.csv) that "
        "were not run under --out, so seeds run at different times make one table",
    )
    p.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="copy the report, tables and plot here (default: benchmarks/results/<dataset>)",
    )
    args = p.parse_args(argv)
    for f in args.merge:
        if not f.is_file():
            p.error(f"--merge: no such runs.csv: {f}")
    from monai_im.datasets.synthetic import dataset_variety

    if dataset_variety(args.out / "data") not in (None, args.variety):
        p.error(
            f"{args.out / 'data'} holds another variety of demo data than --variety {args.variety}; use a new --out"
        )
    if args.dataset == "flare" and args.variety != "classic":
        p.error("--variety: the flare-like volumes have only the classic variety")
    for key, value in DEFAULTS["flare" if args.dataset == "flare" else "2d"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in ALL_METHODS if m in args.methods]
    # the generation-0 sources that were not asked for run their generation 0 alone, under sources/
    args.source_only = sorted(
        {GENERATION_0_FROM[m] for m in methods if m in GENERATION_0_FROM} - set(methods)
    )
    start = time.time()
    if not args.report_only:
        from monai_im.datasets import ensure_demo_dataset, ensure_flare_like_dataset

        sizes = {"num_train": args.num_train, "num_val": args.num_val, "num_test": args.num_test}
        if args.dataset == "flare":
            ensure_flare_like_dataset(args.out / "data", **sizes, seed=0, progress=False)
        else:
            ensure_demo_dataset(
                args.dataset,
                args.out / "data",
                **sizes,
                size=args.size,
                seed=0,
                progress=False,
                variety=args.variety,
            )
        init_store(args)
        run_all(args, args.source_only + methods)
    timing = args.out / "timing.json"
    if not args.report_only:
        # the wall clock of this run, kept for --report-only (a rerun that skips finished studies is shorter)
        atomic_write_json(
            timing, {"wall_seconds": time.time() - start, "jobs": args.jobs, "threads": args.threads}
        )
    wall = json.loads(timing.read_text())["wall_seconds"] if timing.is_file() else None
    report = write_report(args, methods, wall_seconds=wall, slug=slug, reused=GENERATION_0_FROM)
    publish = args.publish or REPO / "benchmarks" / "results" / args.dataset
    publish.mkdir(parents=True, exist_ok=True)
    for f in report.parent.iterdir():
        if f.suffix in (".md", ".csv", ".png") or f.name in ("gap_closure.json", "methods.json"):
            shutil.copy2(f, publish / f.name)
    print(report.read_text())
    print(f"report, tables and plot copied to {publish}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
