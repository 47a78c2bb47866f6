"""The run report as one self-contained HTML page (``report.html`` beside ``report.json``).

Static and offline: the pictures (pipeline/report_plots.py) are PNGs inlined as data URIs, the
style is inline, and nothing is fetched when the page opens. It shows, from ``report.json``
alone: per model the test metrics with their 95% intervals where the Evaluator computed them,
the blessing decision with the numbers it compared, what was pushed; the row accounting (rows
in, examples per split, quarantined by reason); the calibration diagram; the metrics per slice;
each model's training and validation curves with every named loss term and its diagnostics; and
the stage wall times.
"""
from __future__ import annotations

import base64
import html
import math
from typing import List, Optional

from contract import slices
from pipeline import report_plots
from pipeline.report_evaluation import has_auc

REPORT_PAGE = "report.html"

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.refused { color: #b00020; font-weight: bold; } .blessed { color: #1b7f3b; font-weight: bold; }
.note { color: #555; font-size: 0.85em; } img { max-width: 100%; }
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} (!)"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _image(png: Optional[bytes], alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: List[str], rows: List[List[str]], table_id: str = "") -> str:
    """``rows`` hold HTML already escaped by the caller."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _with_interval(row: dict, key: str) -> str:
    interval = (row.get("intervals") or {}).get(key)
    text = _num(row.get(key))
    if interval:
        text += f" <span class=note>[{_num(interval[0])}, {_num(interval[1])}]</span>"
    return text


def _decision(row: dict) -> str:
    blessed = row.get("blessed")
    if blessed is None:
        return "not evaluated"
    word = '<span class=blessed>blessed</span>' if blessed else '<span class=refused>refused</span>'
    reasons = [_esc(line) for line in (row.get("validation") or {}).get("failures", [])]
    compared = []
    if row.get("baseline_auc") is not None:
        compared.append(f"AUC {_num(row.get('auc'))} against the last blessed version's {_num(row['baseline_auc'])}")
    return word + "".join(f"<br><span class=note>{text}</span>" for text in compared + reasons)


def models_section(report: dict) -> str:
    rows = []
    for row in report["models"]:
        rows.append([
            _esc(row["model"]), _with_interval(row, "auc"), _with_interval(row, "gauc"), _with_interval(row, "logloss"),
            _decision(row), _esc(row.get("pushed") or "-"), _num(row.get("train_examples_per_second"), 0),
        ])
    note = "95% intervals in brackets where the Evaluator computed them." if any(r.get("intervals") for r in report["models"]) else ""
    oracle = report.get("oracle_auc")
    if oracle is not None:
        note += f" Oracle AUC (the true click probability of synthetic logs): {_num(oracle)}."
    return (f"<h2>Models on the {_esc(report['split'])} split</h2>"
            + _table(["model", "AUC", "gAUC", "logloss", "blessing", "pushed to", "train ex/s"], rows, "models")
            + (f"<p class=note>{_esc(note.strip())}</p>" if note else ""))


def rows_section(report: dict) -> str:
    counts = report.get("counts") or {}
    if not counts:
        return "<h2>Rows</h2><p class=note>no row counts recorded (SequenceExampleGen did not run)</p>"
    lines = [["log rows in", _num(counts.get("log_rows_in"))]]
    lines += [[f"examples: {_esc(split)}", _num(n)] for split, n in sorted((counts.get("examples") or {}).items())]
    lines.append(["log rows quarantined", _num(counts.get("log_rows_quarantined"))])
    lines += [[f"quarantined: {_esc(reason)}", _num(n)] for reason, n in sorted((counts.get("quarantined_by_reason") or {}).items())]
    if counts.get("table_rows_quarantined"):
        lines.append(["item/user table rows quarantined", _num(counts["table_rows_quarantined"])])
    return "<h2>Rows</h2>" + _table(["what", "rows"], lines, "rows")


def slices_section(report: dict) -> str:
    """One row per slice value: its examples and click rate, then each model's AUC and logloss."""
    sliced = {row["model"]: row["slices"] for row in report["models"] if row.get("slices")}
    if not sliced:
        return ""
    by_value = {}
    for model, rows in sliced.items():
        for entry in rows:
            by_value.setdefault((entry["feature"], entry["value"]), {})[model] = entry
    lines = []
    for (feature, value), entries in by_value.items():
        first = next(iter(entries.values()))
        line = [_esc(slices.TITLES.get(feature, feature)), _esc(slices.value_label(feature, value)),
                _num(first.get("examples"), 0), _num(first.get("mean_label"), 3)]
        for model in sliced:
            entry = entries.get(model, {})
            line += [_num(entry.get("auc")) if entry and has_auc(entry) else "-", _num(entry.get("logloss"))]
        lines.append(line)
    header = ["slice", "value", "examples", "click rate"] + [f"{model} {metric}" for model in sliced for metric in ("AUC", "logloss")]
    png = report_plots.slice_auc(sliced, slices.TITLES, slices.value_label)
    return ("<h2>Metrics by slice</h2><p class=note>Computed by the Evaluator (TFMA) on the test split; "
            "a slice without both clicks and non-clicks has no AUC (-).</p>" + _image(png, "AUC by slice")
            + _table(header, lines, "slices"))


def calibration_section(report: dict) -> str:
    png = report_plots.calibration({row["model"]: row.get("calibration") or [] for row in report["models"]})
    return "<h2>Calibration</h2>" + _image(png, "calibration diagram") if png else ""


def training_section(report: dict) -> str:
    parts = ["<h2>Training</h2>"]
    for row in report["models"]:
        epochs = row.get("epochs") or []
        if not epochs:
            parts.append(f"<p class=note>{_esc(row['model'])}: no training logs</p>")
            continue
        parts.append(f"<h3>{_esc(row['model'])}</h3>")
        parts.append(_image(report_plots.training_curves(row["model"], epochs), f"{row['model']} training curves"))
        parts.append(_image(report_plots.diagnostics(row["model"], epochs), f"{row['model']} diagnostics"))
    return "".join(parts)


def stages_section(report: dict) -> str:
    stages = report.get("stages") or {}
    failed = [f"{_esc(node)} ({_esc(info['state'].lower())})" for node, info in stages.items() if info.get("state") != "COMPLETE"]
    text = f"<p class=refused>not complete: {', '.join(failed)}</p>" if failed else ""
    return "<h2>Stages</h2>" + text + _image(report_plots.stage_times(stages), "stage wall times")


def cards_section(report: dict) -> str:
    cards = report.get("model_cards") or {}
    if not cards:
        return ""
    parts = ["<h2>Model cards</h2><p class=note>One per pushed model, in the Model Card Toolkit's JSON schema.</p>"]
    for model, entry in cards.items():
        card = entry["card"]
        details, considerations = card["model_details"], card["considerations"]
        items = "".join(f"<li>{_esc(item['description'])}</li>" for item in considerations["limitations"])
        parts.append(
            f"<h3>{_esc(model)} version {_esc(details['version']['name'])}</h3>"
            f"<p>{_esc(details['overview'])} {_esc(details['version']['diff'])}.<br>"
            f"<span class=note>{_esc(entry['path'])}</span></p>"
            f"<p>Intended use: {_esc(considerations['use_cases'][0]['description'])}</p><p>Limits:</p><ul>{items}</ul>"
        )
    return "".join(parts)


def tensorboard_note(report: dict) -> str:
    folder = report.get("tensorboard_dir")
    return f"<p class=note>Every model's curves in TensorBoard: <code>tensorboard --logdir {_esc(folder)}</code></p>" if folder else ""


def render(report: dict) -> str:
    body = "".join([
        f"<h1>ctr-pipeline run {_esc(report['run_id'])}</h1>",
        models_section(report), rows_section(report), calibration_section(report), slices_section(report),
        training_section(report), tensorboard_note(report), stages_section(report), cards_section(report),
    ])
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>ctr-pipeline run {_esc(report['run_id'])}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")


def write(report: dict, path: str) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render(report))
    return path
