"""Batch scoring (``serving.batch_score``): same scores as the SavedModel, every input row accounted for.

One small exported model (a DNN behind a real transform graph) scores a synthetic generic CSV log
with malformed rows appended, and TFRecords of the same examples with malformed records.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import glob
import json

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from contract.config import parse_config
from serving import batch_handlers, batch_inputs, batch_model, batch_outputs, batch_score, cli_options
from ingest import sequences, synthetic, windows
from contract.feature_spec import FeatureSpec

MODEL = "dnn"
VERSION = "7"
# lines appended to events.csv (user_id,item_id,timestamp,clicked,liked,disliked,click_prob,
# click_prob_static), each quarantined with this reason
BAD_EVENT_LINES = {
    "u1,i2,1704070000,1,0": "wrong_column_count",
    "u1,i2,yesterday,1,0,0,0.5,0.5": "unparsable_timestamp",
    ",i2,1704070000,1,0,0,0.5,0.5": "missing_field",
    "u1,i2,1704070000,7,0,0,0.5,0.5": "invalid_flag",
}


def _read_lines(pattern):
    return [line for path in sorted(glob.glob(pattern)) for line in open(path, encoding="utf-8") if line.strip()]


def _read_jsonl(pattern):
    return [json.loads(line) for line in _read_lines(pattern)]


def _ids(record):
    example = tf.train.Example.FromString(record).features.feature
    return (example["user_id"].bytes_list.value[0].decode(), example["item_id"].bytes_list.value[0].decode(),
            example["timestamp"].int64_list.value[0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A synthetic log with bad rows, its config, an exported model and the examples it is scored on."""
    import tensorflow_transform as tft

    from models import registry
    from models.export import export_serving_model
    from models.trainer import vocabulary_sizes
    from tests import raw_data, tft_fixture

    root = tmp_path_factory.mktemp("batch_score")
    data = str(root / "data")
    synthetic.generate(data, num_users=30, num_items=40, events_per_user=8, days=5, seed=3)
    events = os.path.join(data, "events.csv")
    good_lines = _read_lines(events)[1:]
    with open(events, "a", encoding="utf-8") as handle:
        handle.write(good_lines[5])  # the same event twice: duplicate_event (found after reading)
        for line in BAD_EVENT_LINES:
            handle.write(line + "\n")
    with open(os.path.join(data, "items.csv"), encoding="utf-8") as handle:
        first_item = handle.readlines()[1]
    with open(os.path.join(data, "items.csv"), "a", encoding="utf-8") as handle:
        handle.write(first_item)  # a duplicate_item table row: not an input row of the scoring
    config = parse_config({
        "pipeline_name": "bs-test",
        "pipeline_root": str(root / "runs"),
        "serving_root": str(root / "serving"),
        # few features keep the transform analysis and the export quick
        "data": {**synthetic.data_config(data), "item_attributes": ["category"], "user_attributes": []},
        "sequences": {"max_length": 6},
        "features": {"embedding_dim": 4, "gap_buckets": 4},
        "training": {"models": {MODEL: {}}},
    })
    spec = FeatureSpec.from_config(config)
    tft_dir = tft_fixture.analyze(spec, raw_data.raw_examples(spec, users=6, events_per_user=6, seed=0))
    tft_output = tft.TFTransformOutput(tft_dir)
    tf_keras.utils.set_random_seed(0)
    # embeddings spread wider than the 1e-4 init, so that the untrained model's scores differ by
    # more than float noise (as a trained model's do)
    model = registry.build(MODEL, spec, vocabulary_sizes(tft_output, spec), {"embedding_init_std": 0.05})
    model_dir = export_serving_model(model, tft_output, spec, os.path.join(config.serving_root, MODEL, VERSION))

    # the examples the pipeline's sequence builder makes of this log, scored by the SavedModel directly
    with beam.Pipeline() as pipeline:
        built = pipeline | sequences.BuildExamples(config, spec, split=False)
        examples = built[sequences.ALL] | "PerExample" >> beam.FlatMap(lambda rows: zip(rows.keys, rows.serialized()))
        examples | "Records" >> beam.Map(lambda ke: ke[1]) | beam.io.WriteToTFRecord(
            str(root / "examples" / "part"), file_name_suffix=".tfrecord.gz")
        examples | "Keys" >> beam.Map(lambda ke: json.dumps(ke[0])) | beam.io.WriteToText(str(root / "keys" / "part"))
    keys = [tuple(k) for k in map(json.loads, _read_lines(str(root / "keys" / "part*")))]
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(str(root / "examples" / "*"))), compression_type="GZIP")]
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    scores = serve(examples=tf.constant(records))["probability"].numpy()
    direct = {_ids(record): float(score) for record, score in zip(records, scores)}
    assert len(direct) == len(records) == len(keys) == len(good_lines)
    assert {(u, i, int(t)) for t, u, i in keys} == set(direct), "BuildExamples' keys are the examples' ids"
    assert len(set(np.round(scores, 6))) > 10, "degenerate model: scores do not differ"
    return {"root": root, "config": config, "spec": spec, "model_dir": model_dir, "records": records,
            "direct": direct, "events": events, "good_lines": len(good_lines)}


def _job(setup, input_path, output, **kwargs):
    model = batch_model.resolve_model(MODEL, setup["config"].serving_root)
    return batch_score.ScoreJob(model=model, input_path=input_path, output_dir=str(output), **kwargs)


@pytest.mark.slow
def test_logs_scores_equal_the_saved_model_and_every_row_is_accounted_for(setup, tmp_path):
    counts = batch_score.score(_job(setup, setup["events"], tmp_path, config=setup["config"]))
    rows = _read_jsonl(str(tmp_path / "scores-*.jsonl"))
    errors = _read_jsonl(str(tmp_path / "errors-*.jsonl"))

    scored = {(r["user_id"], r["item_id"], r["timestamp"]): r["score"] for r in rows}
    assert len(scored) == len(rows) == setup["good_lines"]
    assert scored.keys() == setup["direct"].keys()
    np.testing.assert_allclose([scored[k] for k in sorted(scored)], [setup["direct"][k] for k in sorted(scored)], rtol=1e-5, atol=1e-6)
    assert {(r["model"], r["model_version"]) for r in rows} == {(MODEL, VERSION)}

    expected_reasons = sorted(list(BAD_EVENT_LINES.values()) + ["duplicate_event"])
    assert sorted(e["reason"] for e in errors) == expected_reasons
    assert all(e["source"].startswith(setup["events"] + ":") and e["detail"] for e in errors)
    assert {e["raw"] for e in errors if e["reason"] != "duplicate_event"} == set(BAD_EVENT_LINES)
    rows_in = setup["good_lines"] + 1 + len(BAD_EVENT_LINES)
    assert counts["rows_in"] == rows_in == len(rows) + len(errors)
    assert counts["balanced"] and counts["rows_scored"] == len(rows) and counts["error_rows"] == len(errors)
    # the duplicate items-table row is reported apart: it is not an input row
    table = _read_jsonl(str(tmp_path / "table_quarantine-*.jsonl"))
    assert [t["reason"] for t in table] == ["duplicate_item"]
    assert counts["sequence_builder"]["table_rows_quarantined"] == 1


@pytest.mark.slow
def test_tfrecords_with_malformed_records(setup, tmp_path):
    """Raw tf.Example TFRecords (CSV output); bad records become error rows with their reason."""
    good = setup["records"][:40]
    no_user = tf.train.Example.FromString(good[0])
    del no_user.features.feature["user_id"]
    text_time = tf.train.Example.FromString(good[1])
    text_time.features.feature["timestamp"].Clear()
    text_time.features.feature["timestamp"].bytes_list.value.append(b"noon")
    two_items = tf.train.Example.FromString(good[2])
    two_items.features.feature["item_id"].bytes_list.value.append(b"i1")
    bad = {
        b"\x0a\xff\xff not a proto": "malformed_example",
        no_user.SerializeToString(): "missing_feature",
        text_time.SerializeToString(): "wrong_feature_type",
        two_items.SerializeToString(): "wrong_value_count",
    }
    path = str(tmp_path / "in" / "part.tfrecord")
    os.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for record in good[:20] + list(bad) + good[20:]:
            writer.write(record)
    # a file whose 4th record is corrupt (data CRC): records 1-3 are scored, the rest is one error row
    corrupt = str(tmp_path / "in" / "corrupt.tfrecord")
    tail = setup["records"][40:45]
    with tf.io.TFRecordWriter(corrupt) as writer:
        for record in tail:
            writer.write(record)
    data = bytearray(open(corrupt, "rb").read())
    data[sum(16 + len(r) for r in tail[:3]) + 12 + 3] ^= 0xFF  # a payload byte of record 4
    open(corrupt, "wb").write(bytes(data))
    bad[b"corrupt"] = "unreadable_tfrecord"
    good = good + tail[:3]
    # ids fine, another feature wrong: the model's parsing rejects the batch, the reason is still precise
    no_category = tf.train.Example.FromString(setup["records"][45])
    del no_category.features.feature["category"]
    int_history = tf.train.Example.FromString(setup["records"][46])
    int_history.features.feature["hist_click_item_id"].Clear()
    int_history.features.feature["hist_click_item_id"].int64_list.value.append(7)
    rejected = str(tmp_path / "in" / "rejected.tfrecord")
    with tf.io.TFRecordWriter(rejected) as writer:
        for record in [setup["records"][47], no_category.SerializeToString(), int_history.SerializeToString(), setup["records"][48]]:
            writer.write(record)
    bad[b"no category"] = "missing_feature"
    bad[b"int history"] = "wrong_feature_type"
    good = good + setup["records"][47:49]

    output = tmp_path / "out"
    counts = batch_score.score(_job(setup, str(tmp_path / "in"), output, output_format="csv"))

    lines = _read_lines(str(output / "scores-*.csv"))
    assert lines[0].strip() == ",".join(batch_outputs.SCORE_FIELDS)
    rows = [dict(zip(batch_outputs.SCORE_FIELDS, line.strip().split(","))) for line in lines[1:]]
    assert len(rows) == len(good)
    for row in rows:
        key = (row["user_id"], row["item_id"], int(row["timestamp"]))
        assert float(row["score"]) == pytest.approx(setup["direct"][key], rel=1e-5, abs=1e-6)
    errors = _read_jsonl(str(output / "errors-*.jsonl"))
    assert sorted(e["reason"] for e in errors) == sorted(bad.values())
    assert {e["source"] for e in errors} == (
        {f"{path}:record {n}" for n in range(21, 25)} | {f"{corrupt}:record 4"} | {f"{rejected}:record {n}" for n in (2, 3)}
    )
    by_source = {e["source"]: e for e in errors}
    assert "category" in by_source[f"{rejected}:record 2"]["detail"]
    assert "hist_click_item_id" in by_source[f"{rejected}:record 3"]["detail"]
    assert "corrupted record" in next(e["detail"] for e in errors if e["reason"] == "unreadable_tfrecord")
    assert counts["input_format"] == "tfrecord"
    assert counts["rows_in"] == len(good) + len(bad) == counts["rows_scored"] + counts["error_rows"]


@pytest.mark.slow
def test_a_batch_the_model_rejects_costs_only_its_bad_examples(setup, tmp_path):
    """RunInference failures: the batch is rescored one by one; only the bad example is an error."""
    good = setup["records"][:12]
    keyed = [(_ids(record) + (f"s{n}",), record) for n, record in enumerate(good)]
    keyed.insert(5, (("bad", "bad", -1, "s-bad"), b"garbage"))
    chunks = [([key for key, _ in part], [record for _, record in part]) for part in (keyed[:4], keyed[4:9], keyed[9:])]
    with beam.Pipeline() as pipeline:
        out = pipeline | beam.Create(chunks) | batch_handlers.ScoreExamples(batch_handlers.SignatureModelHandler(
            setup["model_dir"], "serving_default", "probability", max_batch_size=64))
        out["scored"] | "S" >> beam.FlatMap(lambda ks: [json.dumps([key[3], score]) for key, score in zip(*ks)]) | "WS" >> beam.io.WriteToText(str(tmp_path / "s"))
        out["errors"] | "E" >> beam.Map(json.dumps) | "WE" >> beam.io.WriteToText(str(tmp_path / "e"))
    scored = dict(json.loads(line) for line in _read_lines(str(tmp_path / "s*")))
    errors = _read_jsonl(str(tmp_path / "e*"))
    expected = [setup["direct"][key[:3]] for key, _ in keyed if key[3] != "s-bad"]
    np.testing.assert_allclose([scored[f"s{n}"] for n in range(len(good))], expected, rtol=1e-5, atol=1e-6)
    assert [(e["source"], e["reason"]) for e in errors] == [("s-bad", "model_error")]
    assert "InvalidArgumentError" in errors[0]["detail"]


def _window_rows(spec, user, flags, start=1_704_000_000):
    """The sequence builder's rows of one user's window: one event per (clicked, liked, disliked)."""
    events = [{"user_id": user, "item_id": f"i{n % 7}", "category": f"c{n % 3}", "timestamp": start + 60 * n,
               "clicked": c, "liked": l, "disliked": d, "source": f"log:{n}"} for n, (c, l, d) in enumerate(flags)]
    return windows.rows_of_window(((user, 0), {"events": [events], "carry": []}), spec, None)


def _raw_path_batch(spec):
    return [
        _window_rows(spec, "u1", [(1, 1, 0), (0, 0, 0), (1, 0, 1), (1, 1, 0)] * 3),  # histories longer than max_length
        _window_rows(spec, "u2", [(1, 0, 0)]),  # one row, every history empty
        _window_rows(spec, "u3", [(0, 0, 0), (1, 0, 0), (0, 0, 0)]),  # no likes, no dislikes
    ]


@pytest.mark.slow
def test_logs_rows_score_through_serving_raw_as_through_serving_default(setup):
    """The logs path feeds the builder's columns to serving_raw, histories gathered in the graph."""
    spec = setup["spec"]
    batch = _raw_path_batch(spec)
    handler = batch_handlers.WindowRowsModelHandler(setup["model_dir"], "serving_default", "probability", 64, None, spec)
    scorer = handler.load_model()
    assert scorer.raw is not None, "the exported model has serving_raw: the logs path must use it"
    scalars, columns, positions = batch_handlers.raw_columns(batch, spec)
    assert positions["click"].shape == (12 + 1 + 3, spec.max_length)
    assert positions["dislike"].shape[1] == 3  # u1's last rows see its three dislikes
    raw = scorer.raw(scalars, columns, positions).numpy()
    serialized = [record for rows in batch for record in rows.serialized()]
    default = tf.saved_model.load(setup["model_dir"]).signatures["serving_default"](examples=tf.constant(serialized))["probability"].numpy()
    np.testing.assert_allclose(raw, default, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(raw, 6))) > 3
    results = handler.run_inference(batch, scorer)
    assert [keys for keys, _, _ in results] == [[(u, i, t, "") for t, u, i in rows.keys] for rows in batch]
    np.testing.assert_allclose([x for _, scores, _ in results for x in scores], default, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_logs_rows_the_raw_signature_rejects_are_scored_as_tf_examples(setup, monkeypatch):
    spec = setup["spec"]
    batch = _raw_path_batch(spec)
    handler = batch_handlers.WindowRowsModelHandler(setup["model_dir"], "serving_default", "probability", 64, None, spec)
    scorer = handler.load_model()
    expected, _ = scorer.score(batch)

    def rejects(*_):
        raise tf.errors.InvalidArgumentError(None, None, "rejected")

    monkeypatch.setattr(scorer, "raw", rejects)
    fallback, problems = scorer.score(batch)
    assert problems == {}
    np.testing.assert_allclose(fallback, expected, rtol=1e-5, atol=1e-6)


def test_counts_that_do_not_balance_raise():
    counts = batch_outputs.summarize({"rows_in": 5, "scored": 3, "errors.model_error": 1}, {}, "tfrecord",
                                     batch_model.ModelRef("/m/1", "m", "1"))
    assert not counts["balanced"]
    with pytest.raises(RuntimeError, match="does not balance"):
        batch_outputs.check_counts(counts)


@pytest.mark.slow
def test_model_resolution(setup, tmp_path):
    root = setup["config"].serving_root
    newer = os.path.join(root, MODEL, "10")
    os.symlink(setup["model_dir"], newer)
    try:
        assert batch_model.resolve_model(os.path.join(root, MODEL)) == batch_model.ModelRef(newer, MODEL, "10")
        assert batch_model.resolve_model(MODEL, root).version == "10"  # numeric order, not text order
        assert batch_model.resolve_model(f"{MODEL}@{VERSION}", root) == batch_model.ModelRef(setup["model_dir"], MODEL, VERSION)
        assert batch_model.resolve_model(setup["model_dir"]) == batch_model.ModelRef(setup["model_dir"], MODEL, VERSION)
        with pytest.raises(FileNotFoundError, match="version 3 not found"):
            batch_model.resolve_model(f"{MODEL}@3", root)
        with pytest.raises(FileNotFoundError, match="--serving-root"):
            batch_model.resolve_model(MODEL)
    finally:
        os.remove(newer)


@pytest.mark.slow
def test_input_checks(setup, tmp_path):
    with pytest.raises(ValueError, match="needs --config"):
        batch_score.score(_job(setup, setup["events"], tmp_path))
    other = setup["config"].model_copy(update={"data": setup["config"].data.model_copy(update={"item_attributes": ["brand"]})})
    with pytest.raises(ValueError, match="do not match the config"):
        batch_score.score(_job(setup, setup["events"], tmp_path, config=other))
    assert batch_inputs.is_tfrecord_name("data_tfrecord-00000-of-00001.gz")
    assert batch_inputs.is_tfrecord_name("x.tfrecord")
    assert not batch_inputs.is_tfrecord_name("events.csv.gz")


@pytest.mark.slow
def test_cli_arguments(setup):
    parser = argparse.ArgumentParser()
    cli_options.add_score_arguments(parser)
    args = parser.parse_args(["--model", "dnn@3", "--serving-root", "/s", "--input", "x", "--output", "o",
                              "--beam-arg=--runner=DirectRunner", "--beam-arg=--direct_num_workers=2"])
    assert args.beam_args == ["--runner=DirectRunner", "--direct_num_workers=2"]
    assert args.output_format == "jsonl" and args.input_format == "auto"
