"""What `make demo` costs on a fresh checkout: wall time and peak memory of each step.

Runs the demo's two steps as `make demo` does, in child processes, on fresh data in a scratch
directory: `ctr-pipeline generate-data` (the Makefile's demo sizes) and `ctr-pipeline run` of
configs/demo.yaml (every model, an empty pipeline root, so nothing is cached). Prints and saves
each step's wall time and peak resident memory (the child's, from wait4) with the machine and its
load, to benchmarks/results/demo.json and demo.md. A second run (`--cached-rerun`) adds the same
`run` again on the same pipeline root, where TFX's cache skips the unchanged components.

    python benchmarks/demo.py [--cached-rerun] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
DEMO_USERS, DEMO_EVENTS = 800, 60  # the Makefile's DEMO_USERS / DEMO_EVENTS


def _step(name: str, argv: List[str], log_path: str) -> Dict[str, object]:
    command = [sys.executable, "-m", "pipeline.cli", *argv]
    print(f"[demo] {name}: {' '.join(argv)} (log: {log_path})", flush=True)
    load = machine.load_average()
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
        _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"[demo] {name} failed with exit code {code}; see {log_path}")
    result = {"step": name, "seconds": round(time.perf_counter() - started, 1),
              "peak_rss_mb": round(usage.ru_maxrss / 1024), "load_average_before": load}
    print(f"[demo] {name}: {result['seconds']:.0f} s, peak {result['peak_rss_mb']:,} MB", flush=True)
    return result


def _demo_config(scratch: str) -> str:
    with open(os.path.join(ROOT, "configs", "demo.yaml"), encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config["data"]["path"] = os.path.join(scratch, "data")
    config["pipeline_root"] = os.path.join(scratch, "runs")
    config["serving_root"] = os.path.join(scratch, "serving_models")
    path = os.path.join(scratch, "demo.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    return path


def _markdown(summary: dict) -> str:
    facts = summary["machine"]
    lines = [
        "# `make demo`: wall time and peak memory per step",
        "",
        f"`python benchmarks/demo.py{' --cached-rerun' if len(summary['steps']) > 2 else ''}` at commit "
        f"{facts['git_commit'][:7] if facts['git_commit'] else '?'}; machine: {facts['cpu_count']} CPUs, "
        f"{facts['cpu_model']}, {facts['memory_gb']} GiB; {summary['started']}.",
        "",
        "| step | wall time (s) | peak memory (MB) | load average before (1/5/15 min) |",
        "| --- | ---: | ---: | --- |",
    ]
    for step in summary["steps"]:
        lines.append(f"| {step['step']} | {step['seconds']:.0f} | {step['peak_rss_mb']:,} | "
                     f"{' / '.join(str(x) for x in step['load_average_before'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cached-rerun", action="store_true", help="also time a second run on the same root")
    parser.add_argument("--keep", default=None, help="scratch directory to use and keep (default: a temporary one)")
    parser.add_argument("--output", default=RESULTS, help="directory for demo.json and demo.md")
    args = parser.parse_args(argv)

    scratch = args.keep or tempfile.mkdtemp(prefix="ctr-demo-")
    os.makedirs(scratch, exist_ok=True)
    summary = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine.machine_facts(), "steps": []}
    try:
        data = os.path.join(scratch, "data")
        summary["steps"].append(_step("generate-data", ["generate-data", "--output", data, "--users", str(DEMO_USERS),
                                                        "--events-per-user", str(DEMO_EVENTS)], os.path.join(scratch, "generate.log")))
        config = _demo_config(scratch)
        summary["steps"].append(_step("run", ["run", "--config", config], os.path.join(scratch, "run.log")))
        if args.cached_rerun:
            summary["steps"].append(_step("run again (cached)", ["run", "--config", config], os.path.join(scratch, "rerun.log")))
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    markdown = _markdown(summary)
    machine.save_results(args.output, "demo", summary, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
