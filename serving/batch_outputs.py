"""Batch scoring: the rows it writes (scores, errors), the output files and ``counts.json``
(rows in = rows scored + error rows)."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, Optional, Sequence

import apache_beam as beam

from contract.features import ITEM_ID, TIMESTAMP, USER_ID
from contract.serving import COUNTS_FILE
from serving.batch_model import ModelRef

SCORE_FIELDS = (USER_ID, ITEM_ID, TIMESTAMP, "score", "model", "model_version")
ERRORS = "errors"  # the error rows' output tag and file prefix
_MAX_DETAIL = 500


def error_row(source: str, reason: str, detail: str, ids=(None, None, None), raw: Optional[str] = None) -> dict:
    user_id, item_id, timestamp = ids
    return {
        "source": source, "reason": reason, "detail": detail[:_MAX_DETAIL],
        USER_ID: user_id, ITEM_ID: item_id, TIMESTAMP: timestamp, "raw": raw,
    }


def _csv_line(values: Sequence) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


def summarize(tallies: Dict[str, int], extra: dict, input_format: str, model: ModelRef) -> dict:
    errors = {k.split(".", 1)[1]: v for k, v in sorted(tallies.items()) if k.startswith("errors.")}
    rows_in, scored = tallies.get("rows_in", 0), tallies.get("scored", 0)
    return {
        "input_format": input_format,
        "model": model.name,
        "model_version": model.version,
        "model_path": model.path,
        "rows_in": rows_in,
        "rows_scored": scored,
        "error_rows": sum(errors.values()),
        "errors_by_reason": errors,
        "balanced": rows_in == scored + sum(errors.values()),
        **extra,
    }


def score_lines(chunk, model: ModelRef, output_format: str) -> str:
    """The output lines of a scored chunk, one per row (written as one text element)."""
    keys, scores = chunk
    if output_format == "csv":
        return "\n".join(_csv_line([user, item, ts, score, model.name, model.version]) for (user, item, ts, _), score in zip(keys, scores))
    return "\n".join(
        json.dumps(dict(zip(SCORE_FIELDS, (user, item, ts, score, model.name, model.version))))
        for (user, item, ts, _), score in zip(keys, scores)
    )


def write_outputs(result: dict, job) -> None:
    """Writes the scores, the error rows, the table quarantine (logs) and counts.json of a
    ``build_scoring`` result to ``job.output_dir`` (``job``: the ``serving.batch_score.ScoreJob``)."""
    shards = {"num_shards": job.num_shards} if job.num_shards else {}
    header = {"header": ",".join(SCORE_FIELDS)} if job.output_format == "csv" else {}
    result["scored"] | "ScoreLines" >> beam.Map(score_lines, job.model, job.output_format) | "WriteScores" >> beam.io.WriteToText(
        os.path.join(job.output_dir, "scores"), file_name_suffix=f".{job.output_format}", **header, **shards
    )
    result[ERRORS] | "ErrorJson" >> beam.Map(json.dumps) | "WriteErrors" >> beam.io.WriteToText(
        os.path.join(job.output_dir, "errors"), file_name_suffix=".jsonl", **shards
    )
    if "table_quarantine" in result:
        result["table_quarantine"] | "TableJson" >> beam.Map(json.dumps) | "WriteTableQuarantine" >> beam.io.WriteToText(
            os.path.join(job.output_dir, "table_quarantine"), file_name_suffix=".jsonl"
        )
    result["counts"] | "CountsJson" >> beam.Map(lambda c: json.dumps(c, indent=2, sort_keys=True)) | "WriteCounts" >> beam.io.WriteToText(
        os.path.join(job.output_dir, COUNTS_FILE), shard_name_template=""
    )


def check_counts(counts: dict) -> None:
    if not counts["balanced"]:
        raise RuntimeError(
            f"row accounting does not balance: rows in {counts['rows_in']:,} != scored {counts['rows_scored']:,}"
            f" + errors {counts['error_rows']:,}: {json.dumps(counts)}"
        )
    builder = counts.get("sequence_builder")
    if builder is not None and not builder["balanced"]:
        raise RuntimeError(f"the sequence builder's row accounting does not balance: {json.dumps(builder)}")


def format_counts(counts: dict) -> str:
    line = (f"[score] rows in {counts['rows_in']:,} = scored {counts['rows_scored']:,} + errors {counts['error_rows']:,}"
            f" (model {counts['model']} version {counts['model_version'] or '-'})")
    if counts["errors_by_reason"]:
        line += "\n[score] errors by reason: " + ", ".join(f"{k} {v:,}" for k, v in counts["errors_by_reason"].items())
    table = counts.get("sequence_builder", {}).get("table_rows_quarantined")
    if table:
        line += f"\n[score] items/users table rows quarantined (not input rows): {table:,}"
    return line
