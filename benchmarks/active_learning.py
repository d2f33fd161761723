"""Active-learning simulation: is annotating the images the IM teachers disagree on better than random picks?

On a demo dataset whose unlabeled images carry hidden labels, every strategy of
:mod:`monai_im.apps.active` (``im``: the largest teacher disagreement; ``random``; ``tta_variance``: a
MONAI-Label-like baseline, the best student's variance over flip views) reveals ``--budget-per-round``
labels per round, and a new study is trained after each round, at equal budgets. Every study goes
through the real bundle (``python -m monai.bundle run`` with ``train.json`` + ``demo.json`` and
``--dataset_dir`` at the round's own datalist folder), one at a time, and is logged to one MLflow store;
the rankings are made in this process from the finished studies, built from the same configs.
Finished studies and selections are skipped on rerun.

Writes ``active_learning.{json,md,png}`` (for each strategy and budget: the test metric's mean and std over
seeds, a table, a metric-vs-budget plot) to ``--out`` and ``benchmarks/results/<dataset>/``, and logs them
to an MLflow run of their own.

Example (one seed, two rounds)::

    python benchmarks/active_learning.py isic --seeds 0 --rounds 2 --budget-per-round 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

from accuracy import study_overrides  # a sibling script: its folder is on sys.path

from monai_im.apps.active import STRATEGIES, load_bundle_study, simulate
from monai_im.io import atomic_write_bytes, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {"isic": "isic_im", "hela": "hela_im"}
KEY = {"isic": ("test_iou", True), "hela": ("test_mcce", False)}
NAMES = {"im": "IM disagreement", "random": "random", "tta_variance": "TTA variance (flips)"}


def configs(dataset: str) -> list[str]:
    bundle = REPO / "bundles" / BUNDLES[dataset] / "configs"
    return [str(bundle / "train.json"), str(bundle / "demo.json")]


def overrides(args: argparse.Namespace, seed: int, data_dir: Path, study_dir: Path) -> dict[str, Any]:
    """The bundle overrides of one round's study (the same for training and for building it to rank)."""
    run_name = " ".join(study_dir.relative_to(args.out / "runs").parts[:-1])  # e.g. "seed0 im round_1"
    return {
        "method": "im",
        **study_overrides(
            args,
            seed=seed,
            dataset_dir=data_dir,
            output_dir=study_dir,
            experiment=f"{args.dataset}_active_learning",
            run_name=run_name,
        ),
        "num_teachers": args.teachers,
        "demo_image_size": args.size,
        "labeled_fraction": args.labeled_fraction,
        "image_size": [args.size, args.size],
    }


def train_command(values: dict[str, Any], dataset: str) -> list[str]:
    files = "[" + ",".join(f"'{f}'" for f in configs(dataset)) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    for k, v in values.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, list) else str(v)]
    return cmd


def make_trainer(args: argparse.Namespace, seed: int, trained: list[str]):
    """``train`` (a bundle subprocess; appends the run name to ``trained``) and ``load`` of :func:`simulate`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}

    def train(data_dir: Path, study_dir: Path) -> None:
        values = overrides(args, seed, data_dir, study_dir)
        log = args.out / "logs" / (values["run_name"].replace(" ", "_") + ".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "w") as f:
            proc = subprocess.run(
                train_command(values, args.dataset), cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT
            )
        if proc.returncode != 0:
            raise SystemExit(f"error: the study {values['run_name']} failed; see {log}")
        print(f"  {values['run_name']:28s} {time.time() - start:6.0f}s", flush=True)
        trained.append(values["run_name"])

    def load(data_dir: Path, study_dir: Path) -> Any:
        return load_bundle_study(configs(args.dataset), overrides(args, seed, data_dir, study_dir))

    return train, load


def summarise(reports: dict[int, dict[str, Any]], metric: str) -> dict[str, list[dict[str, Any]]]:
    """For each strategy and budget: the test metric's mean, std and values over seeds."""
    out: dict[str, list[dict[str, Any]]] = {}
    strategies = dict.fromkeys(s for r in reports.values() for s in r["strategies"])
    for strategy in strategies:
        by_budget: dict[int, dict[str, Any]] = {}
        for seed, report in sorted(reports.items()):
            for point in report["strategies"].get(strategy, []):
                entry = by_budget.setdefault(
                    point["annotated"],
                    {"annotated": point["annotated"], "labeled": point["labeled"], "values": []},
                )
                entry["values"].append(point[metric])
                entry.setdefault("seeds", []).append(seed)
        rows = []
        for annotated in sorted(by_budget):
            entry = by_budget[annotated]
            values = [v for v in entry["values"] if v is not None]
            entry.update(mean=mean(values) if values else None, std=pstdev(values) if values else None)
            entry["n"] = len(values)
            rows.append(entry)
        out[strategy] = rows
    return out


def plot(summary: dict[str, list[dict[str, Any]]], path: Path, metric: str, higher: bool, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, (strategy, rows) in enumerate(summary.items()):
        rows = [r for r in rows if r["mean"] is not None]
        x = [r["labeled"] + 0.15 * (i - 1) for r in rows]  # a small offset so that error bars do not overlap
        ax.errorbar(
            x,
            [r["mean"] for r in rows],
            yerr=[r["std"] for r in rows],
            marker="o",
            capsize=3,
            label=NAMES[strategy],
        )
    ax.set_xlabel("labeled images (initial + annotated)")
    ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def markdown(result: dict[str, Any]) -> str:
    s, metric = result["settings"], result["metric"]
    strategies = list(result["strategies"])
    md = [f"# Active-learning simulation: {result['dataset']}-like demo data", ""]
    md.append(
        f"{len(s['seeds'])} seed(s) ({', '.join(map(str, s['seeds']))}); {s['num_train']} training images "
        f"({s['size']}x{s['size']}, {s['labeled_fraction']:.0%} labeled at first; the unlabeled pool's hidden "
        f"labels are revealed on selection), {s['num_val']} validation, {s['num_test']} test; "
        f"{s['rounds']} round(s) of {s['budget_per_round']} annotations; every round trains a new study of "
        f"{s['students']} students ({s['generations']} IM generations after generation 0; 0 = labeled only), "
        f"{s['epochs']} epochs, at least {s['min_steps']} optimiser steps, batch {s['batch_size']}; one study at a "
        f"time with {s['threads']} thread(s) on {platform.machine()}"
        + (f", {result['wall_seconds'] / 60:.0f} min wall clock." if result.get("wall_seconds") else ".")
    )
    md += [
        "",
        f"Strategies: `im` = top-k by `{s['score']}` of the study's teachers; `random` = seeded uniform draw; "
        f"`tta_variance` = top-k by the best student's probability variance over {s['views']} flip views "
        "(a MONAI-Label-like test-time-augmentation baseline).",
        "",
        f"## {metric} on the test set (best student of the round's study; mean ± std over seeds)",
        "",
    ]
    md.append("| labeled | annotated | " + " | ".join(f"`{x}`" for x in strategies) + " |")
    md.append("|---|---|" + "---|" * len(strategies))
    budgets = sorted(
        {r["annotated"]: r["labeled"] for rows in result["strategies"].values() for r in rows}.items()
    )
    for annotated, labeled in budgets:
        cells = []
        for x in strategies:
            row = next((r for r in result["strategies"][x] if r["annotated"] == annotated), None)
            if row is None or row["mean"] is None:
                cells.append("")
            else:
                cells.append(f"{row['mean']:.4f} ± {row['std']:.4f} (n={row['n']})")
        md.append(f"| {labeled} | {annotated} | " + " | ".join(cells) + " |")
    md += ["", "![metric vs budget](active_learning.png)", ""]
    return "\n".join(md)


def log_mlflow(args: argparse.Namespace, result: dict[str, Any], files: list[Path]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(args.out / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(f"{args.dataset}_active_learning")
    exp_id = exp.experiment_id if exp else init_store(args)
    run = client.create_run(
        exp_id, run_name="active learning summary", tags={"kind": "active learning summary"}
    )
    rid = run.info.run_id
    for k, v in result["settings"].items():
        client.log_param(rid, k, str(v))
    for strategy, rows in result["strategies"].items():
        for r in rows:
            if r["mean"] is not None:
                client.log_metric(rid, f"{result['metric']}_{strategy}", r["mean"], step=r["annotated"])
    for f in files:
        client.log_artifact(rid, str(f))
    client.set_terminated(rid, "FINISHED")


def init_store(args: argparse.Namespace) -> str:
    """Create the sqlite store and the experiment before any study writes to it."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(args.out / 'mlflow.db').resolve()}")
    name = f"{args.dataset}_active_learning"
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=(args.out / "mlartifacts").resolve().as_uri())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(BUNDLES))
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="data, runs, MLflow store (default: runs/active_learning_<dataset>)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=3, help="annotation rounds after round 0")
    p.add_argument("--budget-per-round", type=int, default=12, help="labels revealed per round and strategy")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--score", default="im_fraction", help="the disagreement score of the im strategy")
    p.add_argument("--views", type=int, default=4, help="flip views of tta_variance (2D: at most 4)")
    p.add_argument("--generations", type=int, default=0, help="IM generations per study (0: labeled only)")
    p.add_argument("--students", type=int, default=3)
    p.add_argument("--teachers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--min-steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-train", type=int, default=240)
    p.add_argument("--num-val", type=int, default=40)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--labeled-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="torch threads (studies run one at a time)")
    p.add_argument("--publish", type=Path, default=None, help="default: benchmarks/results/<dataset>")
    args = p.parse_args(argv)
    args.out = (args.out or REPO / "runs" / f"active_learning_{args.dataset}").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    metric, higher = KEY[args.dataset]

    import torch

    from monai_im.datasets import ensure_demo_dataset

    torch.set_num_threads(args.threads)
    start = time.time()
    source = ensure_demo_dataset(
        args.dataset,
        args.out / "data",
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        size=args.size,
        labeled_fraction=args.labeled_fraction,
        seed=0,
        progress=False,
    )
    init_store(args)
    reports = {}
    trained: list[str] = []
    for seed in args.seeds:
        print(f"{args.dataset} seed {seed}: strategies {args.strategies}, {args.rounds} rounds", flush=True)
        train, load = make_trainer(args, seed, trained)
        reports[seed] = simulate(
            source,
            args.out / "runs" / f"seed{seed}",
            train,
            load,
            strategies=args.strategies,
            rounds=args.rounds,
            budget=args.budget_per_round,
            seed=seed,
            metric=metric,
            generations=args.generations,
            score=args.score,
            views=args.views,
            expect={
                "students": args.students,
                "epochs": args.epochs,
                "min_steps": args.min_steps,
                "batch_size": args.batch_size,
            },
        )
    # the wall clock of the last invocation that trained studies (a rerun that skips them all is shorter)
    timing = args.out / "timing.json"
    if trained or not timing.is_file():
        atomic_write_json(
            timing, {"wall_seconds": round(time.time() - start, 1), "studies_trained": len(trained)}
        )
    wall_seconds = json.loads(timing.read_text())["wall_seconds"]
    settings = {
        "seeds": args.seeds,
        "rounds": args.rounds,
        "budget_per_round": args.budget_per_round,
        "strategies": args.strategies,
        "score": args.score,
        "views": args.views,
        "generations": args.generations,
        "students": args.students,
        "teachers": args.teachers,
        "epochs": args.epochs,
        "min_steps": args.min_steps,
        "batch_size": args.batch_size,
        "num_train": args.num_train,
        "num_val": args.num_val,
        "num_test": args.num_test,
        "size": args.size,
        "labeled_fraction": args.labeled_fraction,
        "threads": args.threads,
    }
    result = {
        "dataset": args.dataset,
        "metric": metric,
        "higher_is_better": higher,
        "settings": settings,
        "wall_seconds": wall_seconds,
        "strategies": summarise(reports, metric),
    }
    files = [
        atomic_write_json(args.out / "active_learning.json", result),
        atomic_write_bytes(args.out / "active_learning.md", markdown(result).encode()),
        plot(
            result["strategies"],
            args.out / "active_learning.png",
            metric,
            higher,
            f"{args.dataset}-like demo: {metric} vs labeled images ({len(args.seeds)} seed(s))",
        ),
    ]
    log_mlflow(args, result, files)
    publish = args.publish or REPO / "benchmarks" / "results" / args.dataset
    publish.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, publish / f.name)
    print(markdown(result))
    print(f"results in {args.out}; report, table and plot copied to {publish}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
