"""Batch-scoring throughput of ``ctr-pipeline score`` on protocol ml1m-seq (rows/s).

    python benchmarks/batch_scoring.py --data-path /path/to/ml-1m-partial \
        --model runs/quality/ml1m-seq/serving/dnn [--model .../din ...] \
        [--examples runs/quality/ml1m-seq/pipeline/SequenceExampleGen/examples/<id>]

For each model, two jobs on the DirectRunner (the project's defaults), each a real
``ctr-pipeline score`` run in a child process:

* ``logs``: the ml1m-seq rating logs -> the sequence builder (histories of every event) -> the
  model -> one score row per rating;
* ``tfrecords`` (with ``--examples``): the raw tf.Examples the pipeline built (all splits).

Reported: rows in, rows scored, error rows, the job's own wall time (as the CLI prints it:
pipeline construction to counts checked) and rows/s, and the process wall time including the
Python/TensorFlow start. Writes ``batch_scoring.json`` and ``batch_scoring.md`` to ``--output``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402
JOB_LINE = re.compile(r"\[score\] ([0-9.]+)s \(([0-9,]+) rows/s\)")


def score_job(model: str, input_path: str, config: str, workdir: str, beam_args: List[str]) -> Dict[str, object]:
    output = tempfile.mkdtemp(prefix="score-", dir=workdir)
    command = [os.path.join(os.path.dirname(sys.executable), "ctr-pipeline"), "score", "--model", model,
               "--input", input_path, "--config", config, "--output", output] + [f"--beam-arg={arg}" for arg in beam_args]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    process_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    match = JOB_LINE.search(completed.stdout)
    with open(os.path.join(output, "counts.json"), encoding="utf-8") as handle:
        counts = json.load(handle)
    shutil.rmtree(output, ignore_errors=True)
    job_seconds = float(match.group(1))
    return {
        "rows_in": counts["rows_in"], "rows_scored": counts["rows_scored"], "error_rows": counts["error_rows"],
        "job_seconds": round(job_seconds, 1), "rows_per_second": round(counts["rows_in"] / job_seconds),
        "process_seconds": round(process_seconds, 1),
        "rows_per_second_with_startup": round(counts["rows_in"] / process_seconds),
    }


def render(result: Dict[str, object]) -> str:
    lines = ["# Batch scoring throughput (ml1m-seq)", "", f"`{result['command']}`", "",
             f"- {result['started_at']}; {result['machine']}; load average at start {result['load_start']}, at end {result['load_end']}",
             f"- target: >= {result['target_rows_per_second']:,} rows/s", "",
             "| model | input | rows in | scored | errors | job s | rows/s | with process start s | rows/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["jobs"]:
        lines.append(f"| {row['model']} | {row['input']} | {row['rows_in']:,} | {row['rows_scored']:,} | {row['error_rows']:,} | "
                     f"{row['job_seconds']} | {row['rows_per_second']:,} | {row['process_seconds']} | {row['rows_per_second_with_startup']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", required=True, help="ml-1m-partial directory (the logs to score)")
    parser.add_argument("--model", action="append", required=True, help="a SavedModel or model directory (repeatable)")
    parser.add_argument("--examples", default=None, help="an Examples artifact (Split-*/*.gz) to score as TFRecords too")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "ml1m.yaml"))
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="ARG",
                        help="a Beam pipeline option for every job, repeatable (as ctr-pipeline score --beam-arg)")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="batch-scoring-")
    load_start = machine.load_average()
    result = {
        "command": "python benchmarks/batch_scoring.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine.describe(), "load_start": load_start, "target_rows_per_second": 10_000, "jobs": [],
    }
    inputs = [("logs", os.path.abspath(args.data_path))] + ([("tfrecords", os.path.abspath(args.examples))] if args.examples else [])
    try:
        for model in args.model:
            for kind, path in inputs:
                print(f"[batch_scoring] {model} on {kind} ...", flush=True)
                row = {"model": os.path.relpath(os.path.abspath(model), ROOT), "input": kind, **score_job(model, path, args.config, workdir, args.beam_args)}
                print(f"[batch_scoring] {row}", flush=True)
                result["jobs"].append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["load_end"] = machine.load_average()
    markdown = render(result)
    machine.save_results(args.output, "batch_scoring", result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
