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


def _page_report():
    from contract import slices

    row = _report(auc=0.7012, intervals={"auc": (0.69, 0.712)}, baseline_auc=0.7123, blessed=False,
                  validation={"failures": ["auc 0.7012: outside its lower bound 0.75"]},
                  epochs=[{"auc": 0.6, "loss": 0.7, "loss_ctr": 0.69, "val_auc": 0.58, "val_loss": 0.71, "val_loss_ctr": 0.7},
                          {"auc": 0.7, "loss": 0.6, "loss_ctr": 0.59, "val_auc": 0.62, "val_loss": 0.68, "val_loss_ctr": 0.67}],
                  calibration=[{"predicted": 0.2, "observed": 0.25, "weight": 40.0}, {"predicted": 0.6, "observed": 0.5, "weight": 60.0}],
                  slices=[{"feature": slices.HISTORY_LENGTH, "value": 0, "auc": 0.0, "logloss": 0.2, "examples": 3.0, "mean_label": 0.0},
                          {"feature": slices.HISTORY_LENGTH, "value": 2, "auc": 0.7321, "logloss": 0.6, "examples": 97.0, "mean_label": 0.4}])
    row["counts"] = {"log_rows_in": 101, "examples": {"test": 100}, "log_rows_quarantined": 1,
                     "quarantined_by_reason": {"unparsable_timestamp": 1}}
    row["stages"] = {"Trainer.din": {"seconds": 12.0, "state": "COMPLETE"}, "Pusher.din": {"seconds": 0.1, "state": "COMPLETE"}}
    return row


def test_the_page_shows_intervals_the_refusal_with_its_numbers_and_the_quarantine():
    from pipeline import report_page

    text = report_page.render(_page_report())
    assert "0.7012 <span class=note>[0.6900, 0.7120]</span>" in text
    assert "refused" in text and "against the last blessed version's 0.7123" in text
    assert "auc 0.7012: outside its lower bound 0.75" in text
    assert "<td>quarantined: unparsable_timestamp</td><td>1</td>" in text
    assert text.count('src="data:image/png;base64,') == 4  # calibration, AUC by slice, training curves, stage times


def test_a_one_class_slice_shows_no_auc():
    from pipeline import report_page

    text = report_page.render(_page_report())
    one_class = "<tr><td>click history length</td><td>0</td><td>3</td><td>0.000</td><td>-</td>"
    assert one_class in text
    assert "<td>5-19</td><td>97</td><td>0.400</td><td>0.7321</td>" in text


def test_a_model_card_lists_overall_metrics_with_intervals_and_no_auc_for_a_one_class_slice():
    from pipeline import model_card

    report = _page_report()
    row = dict(report["models"][0], pushed="/serving/din/17", gauc=None)
    card = model_card.card(report, row, "DIN", "/data/logs")
    metrics = card["quantitative_analysis"]["performance_metrics"]
    assert metrics[0] == {"type": "auc", "value": "0.7012", "confidence_interval": {"lower_bound": "0.6900", "upper_bound": "0.7120"}}
    assert [m["slice"] for m in metrics if "slice" in m] == ["slice_history_length=5-19"]  # the one-class slice has none
    assert card["model_details"]["version"] == {"name": "17", "diff": "Test AUC 0.7012 against 0.7123 of the last blessed version"}
    assert card["model_parameters"]["data"] == [{"name": "test split", "description": "100 examples built from the logs at /data/logs"}]
