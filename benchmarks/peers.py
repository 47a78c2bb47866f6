"""Reference parity: this project's baselines in their reference form (``dnn_ref``, ``din_ref``)
against FuxiCTR's DNN and DIN on ``ml1m-seq``, side by side on the same machine.

    # FuxiCTR runs, with the harness of ../shared/peers/README.md (outside this repository):
    peers-venv/bin/python ../shared/peers/run_fuxictr.py --model DNN --seed 2023   # and DIN, seeds 2023-2025
    # this project's runs:
    python benchmarks/quality.py --data-path <ml-1m-partial> --seeds 0,1,2 --models dnn_ref,din_ref
    # the tables (--fuxictr-runs first copies the runs' results into benchmarks/results/fuxictr.json):
    python benchmarks/peers.py [--fuxictr-runs <peers-work/runs>]

FuxiCTR's results are kept in ``benchmarks/results/fuxictr.json`` (one row per model and seed),
so the tables survive the harness's scratch folder. Writes ``benchmarks/peers.md``: per implementation and seed the test AUC, gAUC, logloss, best
epoch and the validation AUC of every epoch; the mean +- std over seeds; and the gap of the
means against the bar (|ours - FuxiCTR| <= 0.003, docs/models.md "Shared input contract").
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = {"DNN": "dnn_ref", "DIN": "din_ref"}  # FuxiCTR model -> this project's reference form
BAR = 0.003
SEEDS = 3  # the bar is judged on three seeds of each


def harness_results(runs_dir: str) -> List[dict]:
    """One row per FuxiCTR run of a paired model, from the harness's ``result.json`` files."""
    rows = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "result.json"))):
        with open(path, encoding="utf-8") as handle:
            result = json.load(handle)
        if result["model"] not in PAIRS:
            continue
        rows.append({
            "model": result["model"], "seed": result["seed"], "auc": result["test_auc"], "gauc": result["test_gauc"],
            "logloss": result["test_logloss"], "best_epoch": result["best_epoch"],
            "validation_auc_by_epoch": [epoch["AUC"] for epoch in result["epoch_logs"]],
            "train_examples_per_second": result["train_eps_mean"],
            "source": os.path.relpath(path, os.path.dirname(runs_dir)),
        })
    return rows


def merge_results(stored: List[dict], new: List[dict]) -> List[dict]:
    """``stored`` with ``new``'s rows added; a new row replaces a stored one of the same model and seed."""
    merged = {(r["model"], r["seed"]): r for r in stored}
    merged.update({(r["model"], r["seed"]): r for r in new})
    return sorted(merged.values(), key=lambda r: (r["model"], r["seed"]))


def by_model(rows: List[dict]) -> Dict[str, List[dict]]:
    grouped: Dict[str, List[dict]] = {}
    for row in rows:
        grouped.setdefault(row["model"], []).append(row)
    return grouped


def project_rows(quality_json: str) -> Dict[str, List[dict]]:
    """Reference-form model -> one row per seed from ``benchmarks/quality.py``'s results."""
    with open(quality_json, encoding="utf-8") as handle:
        results = json.load(handle)
    rows: Dict[str, List[dict]] = {}
    for row in results:
        if row["dataset"] != "ml1m-seq" or row["model"] not in PAIRS.values():
            continue
        by_epoch = row.get("validation_auc_by_epoch") or []
        rows.setdefault(row["model"], []).append({
            "seed": row["seed"], "auc": row["auc"], "gauc": row["gauc"], "logloss": row["logloss"],
            "best_epoch": (by_epoch.index(max(by_epoch)) + 1) if by_epoch else None,
            "validation_auc_by_epoch": by_epoch,
            "train_examples_per_second": row.get("train_examples_per_second"),
        })
    return rows


def _mean_std(values: List[Optional[float]]) -> str:
    """Mean +- std of the known values; ``(n of m)`` when some rows lack the figure."""
    known = [v for v in values if v is not None]
    if len(known) < len(values) and known:
        return f"{_mean_std(known)} ({len(known)} of {len(values)})"
    values = known
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def format_markdown(fuxictr: Dict[str, List[dict]], ours: Dict[str, List[dict]], commands: List[str]) -> str:
    lines = ["# Reference parity on ml1m-seq: dnn_ref / din_ref against FuxiCTR's DNN / DIN", "", "Rows from:", ""]
    lines += [f"- `{c}`" for c in commands]
    lines += ["", f"Bar: |mean test AUC ours - mean test AUC FuxiCTR| <= {BAR} (three seeds each).", "",
              "| model | implementation | seeds | test AUC | gAUC | logloss | gap of the means | within the bar |",
              "|---|---|---|---|---|---|---:|---|"]
    for reference, project in PAIRS.items():
        theirs, mine = fuxictr.get(reference, []), ours.get(project, [])
        gap = (statistics.fmean(r["auc"] for r in mine) - statistics.fmean(r["auc"] for r in theirs)) if theirs and mine else None
        for name, rows in ((f"FuxiCTR {reference}", theirs), (f"ctr-pipeline {project}", mine)):
            if gap is None or rows is theirs:
                verdict = "-"
            elif min(len(theirs), len(mine)) < SEEDS:
                verdict = f"pending: {len(mine)} and {len(theirs)} of {SEEDS} seeds"
            else:
                verdict = "yes" if abs(gap) <= BAR else "no"
            lines.append(
                f"| {reference} | {name} | {','.join(str(r['seed']) for r in rows) or '-'} | {_mean_std([r['auc'] for r in rows])} | "
                f"{_mean_std([r['gauc'] for r in rows])} | {_mean_std([r['logloss'] for r in rows])} | "
                f"{'' if gap is None or rows is theirs else f'{gap:+.4f}'} | {verdict} |"
            )
    lines += ["", "Per run: validation AUC after each epoch (the best in bold), test AUC:", "",
              "| implementation | seed | validation AUC by epoch | best epoch | test AUC | train ex/s |", "|---|---|---|---|---|---:|"]
    for reference, project in PAIRS.items():
        for name, rows in ((f"FuxiCTR {reference}", fuxictr.get(reference, [])), (f"ctr-pipeline {project}", ours.get(project, []))):
            for r in rows:
                curve = r["validation_auc_by_epoch"]
                shown = " ".join(f"**{v:.4f}**" if v == max(curve) else f"{v:.4f}" for v in curve) if curve else "-"
                speed = f"{r['train_examples_per_second']:,.0f}" if r.get("train_examples_per_second") else "-"
                lines.append(f"| {name} | {r['seed']} | {shown} | {r['best_epoch'] or '-'} | {r['auc']:.4f} | {speed} |")
    lines += ["", "Training examples/s were measured while other jobs shared the 2-core machine: compare them only within one run."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuxictr-runs", default=None,
                        help="the harness's runs folder (peers-work/runs): its results are added to --fuxictr-json")
    parser.add_argument("--fuxictr-json", default=os.path.join(ROOT, "benchmarks", "results", "fuxictr.json"))
    parser.add_argument("--quality-json", default=os.path.join(ROOT, "benchmarks", "results", "quality.json"))
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "peers.md"))
    args = parser.parse_args()
    stored = []
    if os.path.exists(args.fuxictr_json):
        with open(args.fuxictr_json, encoding="utf-8") as handle:
            stored = json.load(handle)
    if args.fuxictr_runs:
        stored = merge_results(stored, harness_results(args.fuxictr_runs))
        with open(args.fuxictr_json, "w", encoding="utf-8") as handle:
            json.dump(stored, handle, indent=2)
    fuxictr, ours = by_model(stored), project_rows(args.quality_json)
    commands = [
        "peers-venv/bin/python ../shared/peers/run_fuxictr.py --model {DNN,DIN} --seed {2023,2024,2025}  (../shared/peers/README.md)",
        "python benchmarks/quality.py --data-path <ml-1m-partial> --seeds 0,1,2 --models dnn_ref,din_ref",
        "python benchmarks/peers.py [--fuxictr-runs <peers-work/runs>]",
    ]
    text = format_markdown(fuxictr, ours, commands)
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
