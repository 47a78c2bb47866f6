"""The run report's table: a nan or infinite metric is marked and explained, never printed bare."""
from pipeline.metrics import NON_FINITE_WHY
from pipeline.report import format_report


def _report(**metrics):
    row = {"model": "din", "auc": 0.71, "gauc": 0.65, "logloss": 0.45, "blessed": False, "pushed": None,
           "train_examples_per_second": None, "diagnostics": {}, **metrics}
    return {"run_id": "r1", "split": "test", "models": [row], "oracle_auc": None, "counts": {}, "stages": {}}


def test_finite_metrics_are_printed_as_numbers_without_a_mark():
    text = format_report(_report())
    assert "0.7100" in text and "0.4500" in text and "(!)" not in text


def test_a_nan_or_infinite_metric_is_marked_and_explained():
    text = format_report(_report(logloss=float("nan"), gauc=float("inf")))
    table_row = next(line for line in text.splitlines() if line.startswith("din "))
    assert "nan(!)" in table_row and "inf(!)" in table_row and "0.7100" in table_row
    assert f"(!) din: gAUC inf, logloss nan, not finite: {NON_FINITE_WHY}" in text.splitlines()
