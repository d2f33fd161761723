"""Tables, gap closure and plot of an accuracy study (see accuracy.py), logged to MLflow."""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

# the paper's Study B figures (IM_METHOD section 7)
PAPER = {
    "isic": {"metric": "IoU", "LDT": 67.1, "ALDT": 72.4, "FDT": 75.1, "IM": 72.3, "closure": 0.65},
    "hela": {"metric": "MCCE", "LDT": 9.9, "ALDT": 3.3, "FDT": 2.5, "IM": 2.8, "closure": 0.96},
}
KEY = {"isic": ("test_iou", True), "hela": ("test_mcce", False), "flare": ("test_dice", True)}
PSEUDO = ("kept_fraction", "im_fraction", "im_fraction_kept", "label_iou", "label_iou_kept")


#: the references: one generation, no pseudo-labels
REFERENCES = ("LDT", "ALDT", "FDT", "AFDT")


def is_im(method: str) -> bool:
    """Whether a method label names a self-training study (every method but the references): those have
    generations after the first."""
    return method not in REFERENCES


def collect(out: Path, methods: list[str], seeds: list[int], slug) -> list[dict[str, Any]]:
    """One record per (method, seed, generation) from the runs' results.json."""
    rows = []
    for label in methods:
        for seed in seeds:
            f = out / "runs" / slug(label) / f"seed{seed}" / "results.json"
            if not f.is_file():
                continue
            for g in json.loads(f.read_text())["generations"]:
                row = {"method": label, "seed": seed, "generation": g["generation"], **g.get("test", {})}
                row.update(
                    {f"pseudo_{k}": v for k, v in (g.get("pseudo_labels") or {}).items() if k in PSEUDO}
                )
                row["training_images"] = g.get("training_images")
                row["seconds"] = g.get("seconds")
                row["val_key"] = next((v for k, v in g.items() if k.startswith("val_")), None)
                rows.append(row)
    return rows


def _cell(text: str) -> Any:
    """A runs.csv cell back as a number (empty: None); method names stay text."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def merge_rows(rows: list[dict[str, Any]], earlier: list[Path], methods: list[str], seeds: list[int]):
    """``rows`` plus the records of earlier runs.csv files (a published report, another machine's run)
    for the (method, seed) studies that ``rows`` does not hold; the first file that has a study wins.

    A study run here always replaces an earlier record of it, so rerunning a seed updates the table."""
    have = {(r["method"], r["seed"]) for r in rows}
    merged = list(rows)
    for path in earlier:
        with open(path, newline="") as f:
            records = [{k: _cell(v) for k, v in r.items()} for r in csv.DictReader(f)]
        if records and not {"method", "seed", "generation"} <= set(records[0]):
            raise ValueError(f"{path}: not a runs.csv of an accuracy study (needs method, seed, generation)")
        added = set()
        for r in records:
            r["method"] = str(r["method"])
            study = (r["method"], r["seed"])
            if study in have or r["method"] not in methods or r["seed"] not in seeds:
                continue
            merged.append(r)
            added.add(study)
        have |= added
    return merged


def _stats(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {}
    return {
        "mean": mean(values),
        "std": pstdev(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["generation"])].append(r)
    table = []
    for (method, gen), rs in groups.items():
        entry = {"method": method, "generation": gen}
        entry.update({f"{key}_{k}": v for k, v in _stats([r.get(key) for r in rs]).items()})
        val = _stats([r.get("val_key") for r in rs])
        if val:
            entry["val_key_mean"] = val["mean"]
        for p in PSEUDO:
            s = _stats([r.get(f"pseudo_{p}") for r in rs])
            if s:
                entry[f"pseudo_{p}_mean"] = s["mean"]
        table.append(entry)
    return table


def gap_closure(table: list[dict[str, Any]], key: str, higher: bool) -> dict[str, Any]:
    def at(method: str, gen: int | None = None) -> float | None:
        vals = [t for t in table if t["method"] == method and (gen is None or t["generation"] == gen)]
        return vals[0].get(f"{key}_mean") if vals else None

    ldt, fdt = at("LDT", 0), at("FDT", 0)
    out: dict[str, Any] = {"LDT": ldt, "FDT": fdt, "ALDT": at("ALDT", 0), "AFDT": at("AFDT", 0)}
    for method in sorted({t["method"] for t in table if is_im(t["method"])}):
        gens = sorted((t["generation"], t.get(f"{key}_mean")) for t in table if t["method"] == method)
        if not gens or ldt is None or fdt is None or fdt == ldt:
            continue
        final = gens[-1][1]
        # the generation one would pick without the test set: best mean validation key metric
        vals = {t["generation"]: t.get("val_key_mean") for t in table if t["method"] == method}
        if all(v is not None for v in vals.values()):
            best_gen = (max if higher else min)(vals, key=lambda g: vals[g])
        else:
            best_gen = (max if higher else min)(gens, key=lambda gv: gv[1])[0]
        best = dict(gens)[best_gen]
        sign = 1 if higher else -1
        out[method] = {
            "final_generation": gens[-1][0],
            "final": final,
            "closure_final": sign * (final - ldt) / (sign * (fdt - ldt)) + 0.0,
            "best_generation": best_gen,
            "best": best,
            "closure_best": sign * (best - ldt) / (sign * (fdt - ldt)) + 0.0,
        }
    return out


def method_summary(
    table: list[dict[str, Any]], key: str, higher: bool, methods: list[str], gap: dict[str, Any]
) -> dict[str, Any]:
    """``methods.json``: per method, the test metric's mean and std over seeds at the generation picked on
    the mean validation metric, that generation, its LDT -> FDT gap closure, and the metric's direction."""
    ldt, fdt = gap.get("LDT"), gap.get("FDT")
    sign = 1 if higher else -1
    out: dict[str, Any] = {"metric": key, "higher_is_better": higher, "methods": {}}
    for method in methods:
        gens = {t["generation"]: t for t in table if t["method"] == method}
        if not gens:
            continue
        vals = {g: t.get("val_key_mean") for g, t in gens.items()}
        if all(v is not None for v in vals.values()):
            picked = (max if higher else min)(vals, key=lambda g: vals[g])
        else:
            picked = max(gens)
        t = gens[picked]
        mean_, std_ = t.get(f"{key}_mean"), t.get(f"{key}_std")
        closure = None
        if mean_ is not None and ldt is not None and fdt is not None and fdt != ldt:
            closure = sign * (mean_ - ldt) / (sign * (fdt - ldt)) + 0.0
        out["methods"][method] = {
            "generation": picked,
            "mean": mean_,
            "std": std_,
            "seeds": t.get(f"{key}_n"),
            "gap_closure": closure,
        }
    return out


def _markdown(table: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    args,
    methods: list[str],
    wall_seconds: float | None,
    slug,
    reused: Collection[str] = (),
) -> Path:
    """Write report.md, summary.csv, runs.csv, gap_closure.json and the plot into ``args.out``.

    ``slug(label)`` names a method's folder under ``args.out / "runs"``; the methods in ``reused``
    copied their generation 0 from another study, so its time is not counted twice.
    """
    from monai_im.io import atomic_write_bytes, atomic_write_json
    from monai_im.visualize import plot_metric_over_generations

    key, higher = KEY[args.dataset]
    variety = getattr(args, "variety", "classic")
    data = f"{args.dataset}-like demo" + ("" if variety == "classic" else f" ({variety})")
    rows = collect(args.out, methods, args.seeds, slug)
    rows = merge_rows(rows, list(getattr(args, "merge", None) or []), methods, args.seeds)
    table = sorted(summarise(rows, key), key=lambda t: (methods.index(t["method"]), t["generation"]))
    gap = gap_closure(table, key, higher)

    buf = io.StringIO()
    cols = sorted({k for t in table for k in t}, key=lambda c: (c not in ("method", "generation"), c))
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(table)
    atomic_write_bytes(args.out / "summary.csv", buf.getvalue().encode())
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf,
        fieldnames=sorted(
            {k for r in rows for k in r}, key=lambda c: (c not in ("method", "seed", "generation"), c)
        ),
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(args.out / "runs.csv", buf.getvalue().encode())
    atomic_write_json(args.out / "gap_closure.json", gap)
    summary = method_summary(table, key, higher, methods, gap)
    atomic_write_json(args.out / "methods.json", summary)

    per_seed: dict[str, list[list[float]]] = {}
    for method in [m for m in methods if is_im(m)]:
        seeds = []
        for seed in args.seeds:
            vals = sorted(
                (r["generation"], r.get(key)) for r in rows if r["method"] == method and r["seed"] == seed
            )
            if vals:
                seeds.append([v for _, v in vals])
        if seeds:
            per_seed[method] = seeds
    refs = {m: gap[m] for m in ("LDT", "ALDT", "FDT") if gap.get(m) is not None}
    plot = None
    if per_seed:
        plot = plot_metric_over_generations(
            per_seed,
            args.out / f"{key}_over_generations.png",
            key,
            higher_is_better=higher,
            title=f"{data}: {key} over generations ({len(args.seeds)} seeds)",
            references=refs,
        )

    paper = PAPER.get(args.dataset)
    md = [f"# Accuracy study: {data} data", ""]
    md.append(
        f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); {args.num_train} training "
        + (
            "CT-like volumes (64 x 64 x 48, 25% labeled, mean Dice over 13 organs)"
            if args.dataset == "flare"
            else f"images ({args.size}x{args.size}, 10% labeled"
            + ("" if variety == "classic" else f", {variety} variety")
            + ")"
        )
        + f", {args.num_val} validation, {args.num_test} test; "
        f"{args.students} students per generation, {args.generations} generations after generation 0, "
        f"{args.epochs} epochs (at least {args.min_steps} optimiser steps per student), batch {args.batch_size}; "
        f"{args.jobs} studies at a time with {args.threads} "
        f"thread(s) each on {platform.machine()}"
        + (f" ({wall_seconds / 60:.0f} min wall clock for the last invocation)." if wall_seconds else ".")
    )
    by_method = defaultdict(float)
    for r in rows:
        if not (r["method"] in reused and r["generation"] == 0):
            by_method[r["method"]] += r["seconds"] or 0
    study_seconds = sum(by_method.values())
    md += [
        "",
        f"Training, pseudo-labelling and testing took {study_seconds / 60:.0f} min summed over all studies "
        f"(without process start-up), about {study_seconds / 60 / max(args.jobs, 1):.0f} min with "
        f"{args.jobs} at a time: " + ", ".join(f"{m} {v / 60:.1f}" for m, v in by_method.items()) + " min.",
    ]
    md += [
        "",
        f"## {key} on the test set (best student of each generation; mean, std, min, max over seeds)",
        "",
    ]
    md.append(
        _markdown(
            table,
            ["method", "generation", f"{key}_mean", f"{key}_std", f"{key}_min", f"{key}_max", f"{key}_n"],
        )
    )
    md += ["", "## Gap closure", ""]
    formula = "(IM - LDT) / (FDT - LDT)" if higher else "(LDT - IM) / (LDT - FDT)"
    md.append(
        f"{formula}; paper: {paper['closure']:.0%} (LDT {paper['LDT']}, IM {paper['IM']}, FDT {paper['FDT']} {paper['metric']})."
        if paper
        else f"{formula}; the paper has no volume study."
    )
    md.append("")
    md.append(
        "| method | final generation | final | closure (final) | generation picked on validation | its test | closure (picked) |"
    )
    md.append("|---|---|---|---|---|---|---|")
    for method in [m for m in methods if is_im(m)]:
        g = gap.get(method)
        if g:
            md.append(
                f"| {method} | {g['final_generation']} | {g['final']:.4f} | {g['closure_final']:.0%} | "
                f"{g['best_generation']} | {g['best']:.4f} | {g['closure_best']:.0%} |"
            )
    md += ["", f"LDT {gap.get('LDT')}, ALDT {gap.get('ALDT')}, FDT {gap.get('FDT')} (means of {key}).", ""]
    md += ["## Every method at the generation picked on validation (methods.json)", ""]
    md.append(f"| method | generation | {key} mean | std | seeds | gap closure |")
    md.append("|---|---|---|---|---|---|")
    for method, m in summary["methods"].items():
        closure = f"{m['gap_closure']:.0%}" if m["gap_closure"] is not None else ""
        mean_ = f"{m['mean']:.4f}" if m["mean"] is not None else ""
        std_ = f"{m['std']:.4f}" if m["std"] is not None else ""
        md.append(f"| {method} | {m['generation']} | {mean_} | {std_} | {m['seeds']} | {closure} |")
    md.append("")
    md += ["## Pseudo-labels (IM studies; means over seeds)", ""]
    md.append(
        "`label_iou`: agreement of the pseudo-labels with the hidden true labels outside the IM, over all "
        "unlabeled images and over the kept ones."
    )
    md.append("")
    pl = [t for t in table if is_im(t["method"]) and t["generation"] > 0]
    md.append(_markdown(pl, ["method", "generation"] + [f"pseudo_{p}_mean" for p in PSEUDO]))
    if plot is not None:
        md += ["", f"![{key} over generations]({Path(plot).name})"]
    report = args.out / "report.md"
    atomic_write_bytes(report, ("\n".join(md) + "\n").encode())
    _log_mlflow(args, methods, gap, [report, args.out / "summary.csv", args.out / "runs.csv", plot])
    return report


def _log_mlflow(args, methods: list[str], gap: dict[str, Any], files: list[Path | None]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{(args.out / 'mlflow.db').resolve()}")
    name = f"{args.dataset}_accuracy"
    exp = client.get_experiment_by_name(name)
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(name, (args.out / "mlartifacts").resolve().as_uri())
    )
    run = client.create_run(exp_id, run_name="summary", tags={"kind": "accuracy summary"})
    rid = run.info.run_id
    params = {
        "dataset": args.dataset,
        "seeds": str(args.seeds),
        "methods": ", ".join(methods),
        "generations": args.generations,
        "students": args.students,
        "epochs": args.epochs,
        "min_steps": args.min_steps,
        "image_size": args.size,
        "num_train": args.num_train,
    }
    for k, v in params.items():
        client.log_param(rid, k, str(v))
    for method in [m for m in methods if is_im(m)]:
        if method in gap:
            tag = (
                method.replace(" ", "")
                .replace("(", "_")
                .replace(")", "")
                .replace("=", "")
                .replace("+", "plus")
            )
            client.log_metric(rid, f"gap_closure_final_{tag}", gap[method]["closure_final"])
            client.log_metric(rid, f"gap_closure_best_{tag}", gap[method]["closure_best"])
    for f in files:
        if f is not None and Path(f).is_file():
            client.log_artifact(rid, str(f))
    client.set_terminated(rid, "FINISHED")
