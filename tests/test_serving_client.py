"""The serving client: contract from metadata, request building, scoring, CLI errors."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import copy
import json
import time

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

from contract.serving import PREDICTION_SIGNATURES, read_feature_spec
from serving import cli_options, client, grpc_client, server
from serving.servable import read_signature_defs
from tests import serving_fixtures as fx

T = 1000
REQUEST = {
    "user": {"user_id": "u1", "gender": "F", "ignored": "extra keys are ignored"},
    "timestamp": T,
    "events": [  # not in time order on purpose
        {"item_id": "i3", "genre": "drama", "timestamp": 300, "clicked": 1},
        {"item_id": "i5", "genre": "drama", "timestamp": 2000, "clicked": 1},  # after T
        {"item_id": "i1", "genre": "drama", "timestamp": 100, "clicked": 1, "liked": 1},
        {"item_id": "i4", "genre": "comedy", "timestamp": T, "clicked": 1},  # at T: not before
        {"item_id": "i2", "genre": "comedy", "timestamp": 200, "clicked": 0, "disliked": True},
        {"item_id": "i6", "genre": "x", "timestamp": 50, "clicked": 1},  # dropped: 3rd-last click
    ],
    "candidates": [{"item_id": "c1", "genre": "drama"}, {"item_id": 42, "genre": "comedy"},
                   {"item_id": "c3", "genre": "x"}],
}
MAX_HISTORY = 2
# The histories at T with at most two events per feedback type, most recent last.
HISTORIES = {
    "hist_click_item_id": ["i1", "i3"], "hist_click_genre": ["drama", "drama"],
    "hist_click_timestamp": [100, 300],
    "hist_unclick_item_id": ["i2"], "hist_unclick_genre": ["comedy"],
    "hist_unclick_timestamp": [200],
    "hist_like_item_id": ["i1"], "hist_like_genre": ["drama"], "hist_like_timestamp": [100],
    "hist_dislike_item_id": ["i2"], "hist_dislike_genre": ["comedy"],
    "hist_dislike_timestamp": [200],
}


def expected_rows(request=REQUEST, histories=HISTORIES):
    """The raw feature rows the client must send, written out by hand."""
    return [
        {"user_id": "u1", "gender": "F", "item_id": str(c["item_id"]), "genre": c["genre"],
         "timestamp": request["timestamp"], **histories}
        for c in request["candidates"]
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return fx.save_fixture_model(str(tmp_path_factory.mktemp("models") / fx.MODEL_NAME / "1"))


@pytest.fixture(scope="module")
def served(model_dir):
    handle = server.serve(os.path.dirname(os.path.dirname(model_dir)), 0, poll_seconds=3600)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    yield handle, prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    handle.stop()


@pytest.fixture
def stub(served):
    return served[1]


@pytest.fixture(scope="module")
def contract(served):
    return grpc_client.fetch_contract(served[1], fx.MODEL_NAME, max_history=MAX_HISTORY)


# ---- the contract -----------------------------------------------------------------------------
def test_contract_comes_from_the_metadata(contract):
    assert contract.spec.user_fields == fx.SPEC.user_fields
    assert contract.spec.item_fields == fx.SPEC.item_fields
    assert contract.spec.feedback_types == fx.SPEC.feedback_types
    assert contract.spec.max_length == MAX_HISTORY
    assert contract.spec.raw_features() == fx.RAW
    assert contract.examples_input == "examples"


def test_contract_refuses_models_it_cannot_feed(model_dir):
    signatures = read_signature_defs(model_dir).signature_def
    feature_spec = read_feature_spec(model_dir)
    raw_only = {"serving_raw": signatures["serving_raw"]}
    with pytest.raises(client.ContractError, match="lacks the signature"):
        client.contract_from_signatures("m", raw_only, feature_spec, 50)
    odd = get_model_metadata_pb2.SignatureDefMap()
    odd.signature_def["serving_default"].CopyFrom(signatures["serving_default"])
    odd.signature_def["serving_raw"].CopyFrom(signatures["serving_raw"])
    odd.signature_def["serving_raw"].inputs["price"].dtype = tf.float32.as_datatype_enum
    with pytest.raises(client.ContractError, match="do not match"):
        client.contract_from_signatures("m", odd.signature_def, feature_spec, 50)
    with pytest.raises(ValueError, match="at least 1"):
        client.contract_from_signatures("m", signatures, feature_spec, 0)


def test_the_history_length_is_the_models_unless_overridden(stub, model_dir):
    assert grpc_client.fetch_contract(stub, fx.MODEL_NAME).spec.max_length == fx.SPEC.max_length
    signatures = read_signature_defs(model_dir).signature_def
    contract = client.contract_from_signatures("m", signatures, read_feature_spec(model_dir))
    assert contract.spec == fx.SPEC  # the whole spec the model was exported with
    assert client.contract_from_signatures("m", signatures, read_feature_spec(model_dir), 3).spec.max_length == 3


def test_a_model_without_a_feature_spec_is_refused_clearly(model_dir):
    signatures = read_signature_defs(model_dir).signature_def
    with pytest.raises(client.ContractError, match="carries no feature spec.*re-export"):
        client.contract_from_signatures("old", signatures, None)


# ---- building the request ---------------------------------------------------------------------
def _text(value):
    """bytes as str, also inside lists."""
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value.decode() if isinstance(value, bytes) else value


def _decode_examples(predict_request):
    """The rows of a serving_default request."""
    rows = []
    for serialized in predict_request.inputs["examples"].string_val:
        row = {}
        for name, feature in tf.train.Example.FromString(serialized).features.feature.items():
            values = _text(list(getattr(feature, feature.WhichOneof("kind")).value))
            row[name] = values if fx.RAW[name][1] else values[0]
        rows.append(row)
    return rows


def _decode_raw(predict_request):
    """The input lists of a serving_raw request, and its rows without history padding."""
    arrays = {name: tf.make_ndarray(t).tolist() for name, t in predict_request.inputs.items()}
    rows = []
    for i in range(len(arrays["item_id"])):
        row = {}
        for name, (_, sequence) in fx.RAW.items():
            value = arrays[name][i]
            if sequence:
                item_ids = arrays[f"hist_{name.split('_')[1]}_item_id"][i]
                value = [v for v, item_id in zip(value, item_ids) if item_id != b""]
            row[name] = _text(value)
        rows.append(row)
    return arrays, rows


def test_serving_default_request_carries_histories_strictly_before_the_timestamp(contract):
    request = client.parse_user_request(REQUEST, contract.spec)
    predict = client.build_predict_request(contract, fx.MODEL_NAME, "serving_default", request)
    assert predict.model_spec.signature_name == "serving_default"
    assert list(predict.output_filter) == ["probability"]
    assert list(predict.inputs) == ["examples"]
    assert _decode_examples(predict) == expected_rows()


def test_serving_raw_request_has_right_padded_histories(contract):
    request = client.parse_user_request(REQUEST, contract.spec)
    predict = client.build_predict_request(
        contract, fx.MODEL_NAME, "serving_raw", request, version=1
    )
    assert predict.model_spec.version.value == 1
    assert set(predict.inputs) == set(fx.RAW)
    arrays, rows = _decode_raw(predict)
    assert rows == expected_rows()
    assert arrays["hist_unclick_item_id"] == [[b"i2", b""]] * 3
    assert arrays["hist_unclick_timestamp"] == [[200, 0]] * 3
    assert arrays["user_id"] == [b"u1"] * 3 and arrays["timestamp"] == [T] * 3


def test_serving_candidates_request_sends_the_user_once(contract):
    request = client.parse_user_request(REQUEST, contract.spec)
    predict = client.build_predict_request(contract, fx.MODEL_NAME, "serving_candidates", request)
    assert set(predict.inputs) == set(fx.RAW)
    shapes = {name: [d.size for d in t.tensor_shape.dim] for name, t in predict.inputs.items()}
    assert shapes["item_id"] == shapes["genre"] == [3]
    assert shapes["user_id"] == shapes["timestamp"] == [1] and shapes["hist_unclick_item_id"] == [1, 2]
    assert tf.make_ndarray(predict.inputs["hist_unclick_item_id"]).tolist() == [[b"i2", b""]]
    raw = client.build_predict_request(contract, fx.MODEL_NAME, "serving_raw", request)
    assert predict.ByteSize() < raw.ByteSize()


def test_no_events_means_one_padding_position(contract):
    request = client.parse_user_request({**REQUEST, "events": []}, contract.spec)
    predict = client.build_predict_request(contract, fx.MODEL_NAME, "serving_raw", request)
    assert tf.make_ndarray(predict.inputs["hist_like_item_id"]).tolist() == [[b""]] * 3


item_ids = st.sampled_from(["a", "b", "c", "d"])
events = st.lists(st.fixed_dictionaries({
    "item_id": item_ids, "genre": st.sampled_from(["x", "y"]),
    "timestamp": st.integers(0, 20), "clicked": st.integers(0, 1),
    "liked": st.integers(0, 1), "disliked": st.integers(0, 1),
}), max_size=30)


@settings(max_examples=60, deadline=None)
@given(events=events, timestamp=st.integers(0, 20), candidates=st.integers(1, 4))
def test_both_signatures_carry_the_same_bounded_past_histories(
    contract, events, timestamp, candidates
):
    raw = {"user": {"user_id": "u", "gender": "F"}, "timestamp": timestamp, "events": events,
           "candidates": [{"item_id": f"c{i}", "genre": "x"} for i in range(candidates)]}
    request = client.parse_user_request(raw, contract.spec)
    default_rows = _decode_examples(
        client.build_predict_request(contract, fx.MODEL_NAME, "serving_default", request))
    _, raw_rows = _decode_raw(
        client.build_predict_request(contract, fx.MODEL_NAME, "serving_raw", request))
    assert default_rows == raw_rows
    assert [row["item_id"] for row in raw_rows] == [f"c{i}" for i in range(candidates)]
    for feedback in fx.SPEC.feedback_types:
        stamps = raw_rows[0][f"hist_{feedback}_timestamp"]
        assert len(stamps) <= MAX_HISTORY and stamps == sorted(stamps)
        assert all(t < timestamp for t in stamps)
    clicks_before = [e for e in events if e["clicked"] and e["timestamp"] < timestamp]
    assert len(raw_rows[0]["hist_click_item_id"]) == min(len(clicks_before), MAX_HISTORY)


# ---- scoring ----------------------------------------------------------------------------------
@pytest.mark.parametrize("signature", PREDICTION_SIGNATURES)
@pytest.mark.parametrize("with_events", [True, False])
def test_scores_are_the_models_scores_of_the_expected_features(
    stub, contract, model_dir, signature, with_events
):
    request = REQUEST if with_events else {**REQUEST, "events": []}
    histories = HISTORIES if with_events else {k: [] for k in HISTORIES}
    scores = grpc_client.predict_scores(stub, fx.MODEL_NAME, signature, request, contract=contract)
    expected = fx.direct_scores(model_dir, expected_rows(request, histories), "serving_default")
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-7)


def test_predict_scores_fetches_the_contract_itself(stub, contract):
    text = json.dumps(REQUEST)
    assert grpc_client.predict_scores(stub, fx.MODEL_NAME, "serving_raw", text, max_history=2) == \
        grpc_client.predict_scores(stub, fx.MODEL_NAME, "serving_raw", REQUEST, contract=contract)


# ---- the predict command ----------------------------------------------------------------------
def _args(served, path, *extra):
    parser = argparse.ArgumentParser()
    cli_options.add_predict_arguments(parser)
    return parser.parse_args([
        "--server", f"127.0.0.1:{served[0].port}", "--model", fx.MODEL_NAME,
        "--input", str(path), "--max-history", str(MAX_HISTORY), *extra,
    ])


@pytest.mark.parametrize("signature", PREDICTION_SIGNATURES)
def test_predict_command_ranks_candidates(served, contract, tmp_path, capsys, signature):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(REQUEST))
    assert grpc_client.run_predict(_args(served, path, "--json", "--signature", signature)) == 0
    output = json.loads(capsys.readouterr().out)
    scores = grpc_client.predict_scores(served[1], fx.MODEL_NAME, signature, REQUEST, contract=contract)
    by_item = dict(zip(["c1", "42", "c3"], scores))
    ranking = [(r["item_id"], r["score"]) for r in output["ranking"]]
    assert ranking == sorted(by_item.items(), key=lambda item: -item[1])
    assert (output["version"], output["user_id"], output["timestamp"]) == (1, "u1", T)

    assert grpc_client.run_predict(_args(served, path, "--signature", signature)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "version 1" in lines[0] and "user u1" in lines[0]
    assert [line.split()[-1] for line in lines[2:]] == [item for item, _ in ranking]


def test_predict_command_defaults_to_the_models_history_length(served, tmp_path, capsys):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(REQUEST))
    parser = argparse.ArgumentParser()
    cli_options.add_predict_arguments(parser)
    args = parser.parse_args(["--server", f"127.0.0.1:{served[0].port}", "--model", fx.MODEL_NAME,
                              "--input", str(path), "--json"])
    assert args.max_history is None
    assert grpc_client.run_predict(args) == 0
    scores = [r["score"] for r in json.loads(capsys.readouterr().out)["ranking"]]
    at_model_length = grpc_client.fetch_contract(served[1], fx.MODEL_NAME, max_history=fx.SPEC.max_length)
    expected = grpc_client.predict_scores(served[1], fx.MODEL_NAME, "serving_default", REQUEST, contract=at_model_length)
    assert scores == sorted(expected, reverse=True)


def test_predict_command_reports_errors(served, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**REQUEST, "candidates": [{"item_id": "c1"}]}))
    assert grpc_client.run_predict(_args(served, bad)) == 2
    assert "candidates[0].genre: missing" in capsys.readouterr().err

    bad.write_text("{\"user\": ")
    assert grpc_client.run_predict(_args(served, bad)) == 2
    assert "not valid JSON" in capsys.readouterr().err

    assert grpc_client.run_predict(_args(served, tmp_path / "absent.json")) == 2
    assert "absent.json: cannot read" in capsys.readouterr().err

    bad.write_text(json.dumps(REQUEST))
    args = _args(served, bad)
    args.model = "nope"
    assert grpc_client.run_predict(args) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


# ---- request validation -----------------------------------------------------------------------
def _edited(change):
    request = copy.deepcopy(REQUEST)
    change(request)
    return request


BAD = [
    ("{not json", "not valid JSON"),
    ([REQUEST], "must be a JSON object"),
    (_edited(lambda r: r.pop("user")), "user: missing"),
    (_edited(lambda r: r["user"].pop("gender")), "user.gender: missing"),
    (_edited(lambda r: r["user"].update(gender=1.5)), "user.gender: expected a string"),
    (_edited(lambda r: r["user"].update(user_id="")), "user.user_id: must not be empty"),
    (_edited(lambda r: r.update(timestamp=1.5e9)), "timestamp: expected unix seconds"),
    (_edited(lambda r: r.update(events="none")), "events: expected a list"),
    (_edited(lambda r: r["events"][1].update(timestamp="abc")),
     "events[1].timestamp: expected unix seconds"),
    (_edited(lambda r: r["events"][0].pop("clicked")), "events[0].clicked: missing"),
    (_edited(lambda r: r["events"][0].update(clicked=2)), "events[0].clicked: expected 0 or 1"),
    (_edited(lambda r: r["events"][2].update(liked="yes")), "events[2].liked: expected 0 or 1"),
    (_edited(lambda r: r["events"][3].pop("genre")), "events[3].genre: missing"),
    (_edited(lambda r: r["candidates"][2].pop("genre")), "candidates[2].genre: missing"),
    (_edited(lambda r: r["candidates"][1].update(item_id=True)),
     "candidates[1].item_id: expected a string"),
    (_edited(lambda r: r["candidates"].__setitem__(0, "c1")), "candidates[0]: expected an object"),
    (_edited(lambda r: r.update(candidates=[])), "candidates: at least one"),
    (_edited(lambda r: r.pop("candidates")), "candidates: missing"),
]


@pytest.mark.parametrize("raw, message", BAD, ids=[m for _, m in BAD])
def test_bad_requests_name_the_field(contract, raw, message):
    text = raw if isinstance(raw, str) else json.dumps(raw)
    with pytest.raises(client.RequestError) as caught:
        client.parse_user_request(text, contract.spec)
    assert message in str(caught.value)


def test_timestamp_defaults_to_now(contract):
    request = {k: v for k, v in REQUEST.items() if k != "timestamp"}
    assert client.parse_user_request(request, contract.spec, now=1234).timestamp == 1234
    assert abs(client.parse_user_request(request, contract.spec).timestamp - time.time()) < 5


def test_unknown_signature_is_refused(contract):
    request = client.parse_user_request(REQUEST, contract.spec)
    with pytest.raises(client.RequestError, match="signature must be one of"):
        client.build_predict_request(contract, fx.MODEL_NAME, "transform_features", request)
