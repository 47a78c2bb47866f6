"""``benchmarks/reliability.py --small`` against the fixture model (a real ``ctr-pipeline serve``
subprocess): what a user relies on. Every kind of malformed request gets its status, valid requests
never fail (under the corpus, the throughput runs and the soak with its hot swap), batch scoring of
a corrupted log accounts for every row by reason, and the table is written."""
import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest

from benchmarks import reliability
from serving import warmup
from tests import serving_fixtures as fx

SHED = "RESOURCE_EXHAUSTED"  # calls refused by --max-pending: reported, not failed


def _failed_valid(row) -> int:
    return row["failures"] - row["failures_by_code"].get(SHED, 0)


@pytest.mark.slow
def test_small_run_answers_every_malformed_kind_and_loses_no_valid_request_nor_log_row(tmp_path):
    model_dir = fx.save_fixture_model(str(tmp_path / "base" / fx.MODEL_NAME / "1"))
    warmup.write_warmup_requests(model_dir, fx.MODEL_NAME, [fx.serialize(row) for row in fx.random_rows(3)])
    output = tmp_path / "results"

    code = reliability.main(["--model-base", str(tmp_path / "base"), "--small", "--output", str(output)])

    result = json.loads((output / "reliability.json").read_text())
    assert code == 0 and result["ok"], result["failures"]
    corpus = result["corpus"][fx.MODEL_NAME]
    assert len(corpus["kinds"]) >= 30
    for name, kind in corpus["kinds"].items():
        assert kind["received"] == {kind["expected"]: kind["sent"]}, (name, kind["details"])
    assert {kind["expected"] for kind in corpus["kinds"].values()} == {
        "OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "INTERNAL"}
    assert set(corpus["valid_requests"]) == {"OK"}

    for row in result["throughput"][fx.MODEL_NAME]:
        assert _failed_valid(row) == 0 and row["requests"] > 0
    soak = result["soak"][fx.MODEL_NAME]
    assert _failed_valid(soak) == 0
    assert soak["swap"]["observed"] and soak["swap"]["responses_per_version"].keys() == {"1", "2"}

    scoring = result["batch_scoring"][fx.MODEL_NAME]
    counts, expected = scoring["counts"], scoring["expected"]
    assert counts["rows_in"] == counts["rows_scored"] + counts["error_rows"] == expected["rows_in"]
    assert counts["rows_scored"] == expected["rows_scored"]
    assert counts["errors_by_reason"] == expected["errors_by_reason"] and len(expected["errors_by_reason"]) >= 10

    table = (output / "reliability.md").read_text()
    assert "| part | measure | value | target | verdict | load |" in table
    assert "RSS after abuse / post-load" in table and "Result: **PASS**" in table
