"""Cost against work (issue 22): wall time and peak memory of each pipeline stage as the logs grow.

For each size (events; users = events / --events-per-user, the demo's 60 by default) it generates
synthetic logs (`ctr-pipeline generate-data`), runs `ctr-pipeline run` of configs/demo.yaml for
--models (default DNN and DUMN, the slowest research model) on an empty pipeline root, then
`ctr-pipeline score` of the last model over the same logs (the AUC gates are opened so that it
is always pushed: this measures cost, not quality), each in a child process whose process
tree's resident memory is sampled every --sample-seconds.

Per stage: seconds from ML Metadata (execution start to end; the Trainer also per epoch, from its
training_stats.json) and the peak of the samples taken while it ran. The local runner runs the
stages one after another in one process, so a stage's peak includes what earlier stages left
allocated: an upper bound on the stage's own need. Then, per stage, the log-log slope of time and
of peak memory against events (1 = linear). Writes benchmarks/results/scaling.{json,md,png}
(--output) with the machine and its load.

    python benchmarks/scaling.py --events 100000,400000,1600000,6400000 [--models dnn,dumn]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import psutil
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402

Sample = Tuple[float, float]  # (unix seconds, MB resident in the process tree)
STAGE_GROUPS = ("SequenceExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "SliceEvaluator")


class TreeMemory(machine.BackgroundPoll):
    """Samples the resident memory of a process and its descendants while the ``with`` block runs."""

    def __init__(self, pid: int, interval: float):
        super().__init__(interval)
        self.pid, self.samples = pid, []

    def poll(self) -> None:
        try:
            pids = [self.pid, *(child.pid for child in psutil.Process(self.pid).children(recursive=True))]
        except psutil.Error:
            return  # the process has ended
        self.samples.append((time.time(), sum(machine.process_rss_bytes(pid) or 0 for pid in pids) / 2**20))


def run_child(argv: List[str], log_path: str, every: float) -> Tuple[float, List[Sample]]:
    """``ctr-pipeline <argv>`` in a child process; (wall seconds, memory samples)."""
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
        with TreeMemory(child.pid, every) as memory:
            code = child.wait()
    samples = memory.samples
    if code != 0:
        raise SystemExit(f"[scaling] ctr-pipeline {argv[0]} failed with exit code {code}; see {log_path}")
    return time.perf_counter() - started, samples


def peak_between(samples: List[Sample], start: float, end: float) -> Optional[float]:
    inside = [mb for t, mb in samples if start <= t <= end]
    return round(max(inside)) if inside else None


def stage_figures(config, samples: List[Sample], models: List[str]) -> Dict[str, dict]:
    """Seconds and peak MB per stage group (a model's Trainer and Evaluators summed over models)."""
    from pipeline.report import PipelineRun

    run = PipelineRun(config.metadata_path, config.pipeline_name)
    figures: Dict[str, dict] = {}
    for node, execution in run.executions.items():
        group = node.split(".", 1)[0]
        if group not in STAGE_GROUPS:
            continue
        start, end = execution.create_time_since_epoch / 1000, execution.last_update_time_since_epoch / 1000
        entry = figures.setdefault(group, {"seconds": 0.0, "peak_rss_mb": 0})
        entry["seconds"] = round(entry["seconds"] + end - start, 1)
        entry["peak_rss_mb"] = max(entry["peak_rss_mb"], peak_between(samples, start, end) or 0)
    for name in models:
        model_run = run.outputs(f"Trainer.{name}").get("model_run")
        path = os.path.join(model_run.uri, "training_stats.json") if model_run else ""
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                stats = json.load(handle)
            figures[f"Trainer.{name} per epoch"] = {"seconds": round(stats["train_seconds"] / len(stats["epochs"]), 1)}
    return figures


def one_size(events: int, events_per_user: int, models: List[str], scratch: str, every: float) -> dict:
    from contract.config import load_config

    users = max(1, events // events_per_user)
    data = os.path.join(scratch, "data")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    print(f"[scaling] {users * events_per_user:,} events ({users:,} users x {events_per_user})", flush=True)
    run_child(["generate-data", "--output", data, "--users", str(users), "--events-per-user", str(events_per_user)],
              os.path.join(scratch, "generate.log"), every)
    with open(os.path.join(ROOT, "configs", "demo.yaml"), encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw["data"]["path"], raw["pipeline_root"], raw["serving_root"] = data, os.path.join(scratch, "runs"), os.path.join(scratch, "serving")
    raw["training"]["models"] = {name: raw["training"]["models"].get(name, {}) for name in models}
    raw["evaluation"].update(auc_lower_bound=0.0, auc_max_drop=1.0)  # cost, not quality: always pushed, then scored
    config_path = os.path.join(scratch, "config.yaml")
    with open(config_path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(raw, handle)
    load = machine.load_average()
    seconds, samples = run_child(["run", "--config", config_path], os.path.join(scratch, "run.log"), every)
    stages = stage_figures(load_config(config_path), samples, models)
    score_seconds, score_samples = run_child(
        ["score", "--config", config_path, "--model", models[-1], "--input", data, "--output", os.path.join(scratch, "scores")],
        os.path.join(scratch, "score.log"), every,
    )
    stages[f"score ({models[-1]})"] = {"seconds": round(score_seconds, 1), "peak_rss_mb": round(max((mb for _, mb in score_samples), default=0))}
    result = {"events": users * events_per_user, "users": users, "run_seconds": round(seconds, 1),
              "run_peak_rss_mb": round(max((mb for _, mb in samples), default=0)), "load_average_before": load, "stages": stages}
    print(f"[scaling] {result['events']:,} events: run {seconds:,.0f} s, peak {result['run_peak_rss_mb']:,} MB; "
          + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in stages.items()), flush=True)
    return result


def slope(points: List[Tuple[float, float]]) -> Optional[float]:
    """Least-squares slope of log(y) against log(x); None with fewer than two usable points."""
    usable = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y and y > 0]
    if len(usable) < 2:
        return None
    mean_x = sum(x for x, _ in usable) / len(usable)
    mean_y = sum(y for _, y in usable) / len(usable)
    spread = sum((x - mean_x) ** 2 for x, _ in usable)
    return round(sum((x - mean_x) * (y - mean_y) for x, y in usable) / spread, 2) if spread else None


def exponents(results: List[dict]) -> Dict[str, dict]:
    stages = sorted({stage for r in results for stage in r["stages"]})
    return {stage: {measure: slope([(r["events"], r["stages"].get(stage, {}).get(measure)) for r in results])
                    for measure in ("seconds", "peak_rss_mb")} for stage in stages}


def markdown(results: List[dict], fitted: Dict[str, dict], meta: dict, command: str) -> str:
    stages = sorted(fitted)
    lines = ["# Cost against work (benchmarks/scaling.py)", "", f"- command: `{command}`",
             f"- machine: {meta['cpu_count']} CPUs, {meta['cpu_model']}, {meta['memory_gb']} GB; load before each size in the JSON",
             "- peak MB: the highest resident memory of the run's process tree while the stage ran (an upper bound: the local "
             "runner runs the stages in one process)", "",
             "| stage | " + " | ".join(f"{r['events']:,} events: s / peak MB" for r in results) + " | time exponent | memory exponent |",
             "| --- | " + " | ".join("---:" for _ in results) + " | ---: | ---: |"]
    for stage in stages:
        cells = []
        for r in results:
            entry = r["stages"].get(stage, {})
            cells.append(f"{entry.get('seconds', '')} / {entry.get('peak_rss_mb', '')}")
        fit = fitted[stage]
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {fit['seconds'] if fit['seconds'] is not None else ''} | "
                     f"{fit['peak_rss_mb'] if fit['peak_rss_mb'] is not None else ''} |")
    return "\n".join(lines) + "\n"


def plot(results: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (times, memory) = plt.subplots(1, 2, figsize=(11, 4))
    events = [r["events"] for r in results]
    for stage in sorted({s for r in results for s in r["stages"]}):
        for axis, measure in ((times, "seconds"), (memory, "peak_rss_mb")):
            values = [r["stages"].get(stage, {}).get(measure) for r in results]
            if any(values):
                axis.plot(events, [v or float("nan") for v in values], marker="o", label=stage)
    for axis, label in ((times, "seconds"), (memory, "peak resident MB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("events")
        axis.set_ylabel(label)
    times.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default="100000,400000,1600000,6400000", help="comma-separated log sizes")
    parser.add_argument("--events-per-user", type=int, default=60)
    parser.add_argument("--models", default="dnn,dumn", help="models trained at each size; the last is scored")
    parser.add_argument("--sample-seconds", type=float, default=0.5)
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, removed)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)

    models = [m for m in args.models.split(",") if m]
    meta = machine.machine_facts()
    workdir = args.workdir or tempfile.mkdtemp(prefix="scaling-")
    command = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = []
    try:
        for events in (int(e) for e in args.events.split(",")):
            results.append(one_size(events, args.events_per_user, models, os.path.join(workdir, str(events)), args.sample_seconds))
            fitted = exponents(results)  # saved after every size: a long sweep keeps what it measured
            machine.save_results(args.output, "scaling", {"meta": meta, "command": command, "results": results, "exponents": fitted},
                                 markdown(results, fitted, meta, command))
            plot(results, os.path.join(args.output, "scaling.png"))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(results, exponents(results), meta, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
