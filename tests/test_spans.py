"""Daily retraining's ingestion: dated span folders, and a day built from the history state an
earlier run left equals the same day in a rebuild over every day."""
import json
import os

import apache_beam as beam
import pytest
import tensorflow as tf

from contract.config import ConfigError, parse_config
from contract.feature_spec import FeatureSpec
from ingest import sequences, spans, synthetic, windows


def test_span_numbers_follow_tfx_date_and_number_conventions(tmp_path):
    for name in ("2024-01-02", "2024-01-01", "notes", "2024-13-40"):
        (tmp_path / name).mkdir()
    (tmp_path / "2024-01-03").write_text("a file, not a span folder")
    found = spans.list_spans(str(tmp_path), "{YYYY}-{MM}-{DD}")
    assert [(s.name, s.number) for s in found] == [("2024-01-01", 19723), ("2024-01-02", 19724)]
    assert spans.span_number("day-{SPAN}", "day-7") == 7
    assert spans.span_number("day-{SPAN}", "day-x") is None
    assert [s.name for s in spans.spans_to_ingest(found, 19723)] == ["2024-01-02"]
    assert spans.spans_to_ingest(found, None) == found


def test_two_folders_of_one_span_and_no_span_at_all_are_refused(tmp_path):
    for name in ("day-1", "day-01"):
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match=r"\['day-01', 'day-1'\].*same span"):
        spans.list_spans(str(tmp_path), "day-{SPAN}")
    with pytest.raises(FileNotFoundError, match="matches data.span_pattern"):
        spans.list_spans(str(tmp_path), "{YYYY}-{MM}-{DD}")


@pytest.mark.parametrize("pattern, message", [
    ("{YYYY}-{MM}", "holds {SPAN}, or all of"),
    ("{SPAN}-{YYYY}-{MM}-{DD}", "not both"),
    ("{YYYY}/{MM}-{DD}", "no path separator"),
])
def test_config_refuses_a_pattern_that_names_no_span(pattern, message):
    data = {"path": "logs", "events": "events", "span_pattern": pattern}
    with pytest.raises(ConfigError, match="span_pattern") as caught:
        parse_config({"data": data})
    assert message in str(caught.value)


def test_config_refuses_spans_outside_the_generic_format():
    with pytest.raises(ConfigError, match="generic format, not movielens-1m"):
        parse_config({"data": {"format": "movielens-1m", "path": "ml", "span_pattern": "{SPAN}"}})


def _config(path, root):
    return parse_config({
        "pipeline_root": str(root),
        "data": synthetic.data_config(str(path), dated_folders=True),
        "sequences": {"max_length": 5, "window_days": 0.5},
    })


def _build(config, chosen, prior_state, out):
    spec = FeatureSpec.from_config(config)
    with beam.Pipeline() as pipeline:
        outputs = pipeline | sequences.BuildExamples(config, spec, spans=chosen, prior_state=prior_state)
        sequences.write_outputs(outputs, str(out / "examples"), str(out / "quarantine"), str(out / "counts.json"), str(out / "state"))
    examples = []
    for name in sequences.SPLITS:
        files = tf.io.gfile.glob(str(out / "examples" / f"Split-{name}" / "*"))
        examples += [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    state = dict(windows.parse_state_record(line) for f in (out / "state").glob("*.jsonl") for line in f.read_text().splitlines())
    quarantined = [json.loads(l) for f in (out / "quarantine").glob("*.jsonl") for l in f.read_text().splitlines()]
    return examples, state, json.loads((out / "counts.json").read_text()), quarantined


def _timestamp(serialized: bytes) -> int:
    return tf.train.Example.FromString(serialized).features.feature["timestamp"].int64_list.value[0]


def _content(examples):
    """The examples as sorted feature mappings (equal examples may serialize in another order)."""
    def features(serialized):
        found = tf.train.Example.FromString(serialized).features.feature
        return tuple(sorted((name, tuple(getattr(f, f.WhichOneof("kind")).value)) for name, f in found.items()))

    return sorted(map(features, examples))


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    path = tmp_path_factory.mktemp("daily")
    synthetic.generate(str(path), num_users=40, num_items=60, events_per_user=30, days=3, static_samples=1, dated_folders=True)
    config = _config(path, path / "root")
    return path, config, spans.list_spans(os.path.join(str(path), synthetic.DATED_EVENTS), config.data.span_pattern)


def test_a_day_built_on_the_state_of_earlier_days_equals_that_day_in_a_full_rebuild(days, tmp_path):
    path, config, found = days
    assert len(found) == 3
    everything, full_state, _, _ = _build(config, found, None, tmp_path / "full")
    _, state_after_day_1, _, _ = _build(config, found[:1], None, tmp_path / "day1")
    later, state_after, counts, _ = _build(config, found[1:], str(tmp_path / "day1" / "state" / "*"), tmp_path / "days23")

    day_2_starts = found[1].number * 86400
    assert _content(later) == _content([e for e in everything if _timestamp(e) >= day_2_starts])
    assert counts["balanced"] and counts["examples_total"] == len(later)
    assert state_after == full_state  # the next day starts from the same history either way
    assert set(state_after_day_1) <= set(state_after)  # a user without events on days 2-3 keeps their state
    # histories reach back into day 1: the run of days 2-3 never read it, the state carried it
    reaching_back = [e for e in later if any(
        t < day_2_starts for t in tf.train.Example.FromString(e).features.feature["hist_click_timestamp"].int64_list.value
    )]
    assert reaching_back


def test_an_event_older_than_an_earlier_days_history_is_quarantined_not_built(days, tmp_path):
    path, config, found = days
    _build(config, found[:2], None, tmp_path / "first")
    late_dir = tmp_path / "late" / "2024-01-05"
    late_dir.mkdir(parents=True)
    with open(os.path.join(found[0].path, "events.csv")) as handle:
        header, *rows = handle.read().splitlines()
    (late_dir / "events.csv").write_text("\n".join([header, rows[0]]) + "\n")  # a day-1 event delivered late
    late_span = spans.Span(19727, "2024-01-05", str(late_dir))
    examples, _, counts, quarantined = _build(config, [late_span], str(tmp_path / "first" / "state" / "*"), tmp_path / "out")
    assert examples == []
    assert [q["reason"] for q in quarantined] == ["before_ingested_history"]
    assert "before" in quarantined[0]["detail"] and quarantined[0]["source"].endswith("events.csv:2")
    assert counts["log_rows_in"] == 1 and counts["log_rows_quarantined"] == 1 and counts["balanced"]


def _state(first, last, carried_from, uri):
    from pipeline.components import SequenceState

    state = SequenceState()
    state.uri = uri
    state.set_int_custom_property("first_span", first)
    state.set_int_custom_property("last_span", last)
    state.set_string_custom_property("carried_from", carried_from)
    return state


def test_a_run_ingests_the_spans_after_the_last_state_and_a_retry_rebuilds_them(days):
    from pipeline.components import _spans_and_prior_state

    _, config, found = days
    first, second, third = (s.number for s in found)
    chosen, carried = _spans_and_prior_state(config.data, None)
    assert [s.number for s in chosen] == [first, second, third] and carried == ""
    chosen, carried = _spans_and_prior_state(config.data, _state(first, first, "", "/state/1"))
    assert [s.number for s in chosen] == [second, third] and carried == "/state/1"
    # nothing newer than the latest state: its spans again, from the state it started from
    chosen, carried = _spans_and_prior_state(config.data, _state(second, third, "/state/1", "/state/2"))
    assert [s.number for s in chosen] == [second, third] and carried == "/state/1"
