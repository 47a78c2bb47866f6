"""Request limits of the TF Serving stand-in (message size, declared size, rows per request, calls
in flight) and empty inputs, through the official gRPC stubs and ``ctr-pipeline predict``."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import json

import grpc
import pytest
import tensorflow as tf

from serving import cli_options, grpc_client, servicers
from tests import serving_fixtures as fx
from tests.test_serving_client import REQUEST
from tests.test_serving_server import install, rpc_error, running

MAX_MB = 1
MAX_ROWS = 20  # the server's --max-batch-size
LIMIT_BYTES = MAX_MB << 20
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server of the fixture model accepting 1 MB messages and batches of 20 rows."""
    root = tmp_path_factory.mktemp("limits")
    templates = {1: fx.save_fixture_model(str(root / "template"))}
    install(templates, root / "base", 1)
    with running(root / "base", poll_seconds=3600, max_message_mb=MAX_MB, max_batch_size=MAX_ROWS) as served:
        yield served


@pytest.fixture
def stubs(limited):
    return limited[1]


def _with_user_id_of(size: int):
    """A valid serving_default request of one example whose user_id is ``size`` bytes long."""
    return fx.examples_request([{**fx.random_rows(1)[0], "user_id": "u" * size}])


# ---- message size -----------------------------------------------------------------------------
def test_message_over_the_limit_is_refused_by_grpc_and_the_server_keeps_answering(stubs):
    error = rpc_error(stubs.prediction.Predict, _with_user_id_of(LIMIT_BYTES))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert "Received message larger than max" in error.details() and f"vs. {LIMIT_BYTES})" in error.details()
    assert stubs.scores(_with_user_id_of(LIMIT_BYTES - 2000))[0].shape == (1,)  # just under: answered
    assert stubs.scores(fx.examples_request(fx.random_rows(3)))[0].shape == (3,)


# ---- rows -------------------------------------------------------------------------------------
def _declaring(rows: int):
    """serving_default with ``rows`` examples declared in the shape, values that cannot decode."""
    request = fx.examples_request(fx.random_rows(2))
    request.inputs["examples"].ClearField("string_val")
    request.inputs["examples"].tensor_shape.dim[0].size = rows
    request.inputs["examples"].tensor_content = b"not a string tensor"
    return request


def test_too_many_rows_are_refused_from_the_declared_shape_before_decoding(stubs):
    error = rpc_error(stubs.prediction.Predict, _declaring(MAX_ROWS + 1))
    assert error.code() == INVALID
    assert f"{MAX_ROWS + 1} rows (input 'examples')" in error.details()
    assert f"maximum batch size {MAX_ROWS}" in error.details() and "--max-batch-size" in error.details()
    # at the limit the same request is decoded, and refused for its values
    error = rpc_error(stubs.prediction.Predict, _declaring(MAX_ROWS))
    assert error.code() == INVALID and "is not a valid TensorProto" in error.details()
    assert stubs.scores(fx.examples_request(fx.random_rows(MAX_ROWS)))[0].shape == (MAX_ROWS,)


def test_the_row_limit_counts_candidates_and_comes_first(stubs):
    rows = fx.random_rows(MAX_ROWS + 1, seed=5)
    error = rpc_error(stubs.prediction.Predict, fx.candidates_request(rows[0], rows))
    assert error.code() == INVALID and f"has {MAX_ROWS + 1} rows" in error.details()
    error = rpc_error(stubs.prediction.Predict, fx.examples_request(rows, model="nope"))
    assert error.code() == INVALID and f"maximum batch size {MAX_ROWS}" in error.details()


def test_a_shape_that_would_decode_past_the_message_limit_is_refused_before_decoding(stubs):
    """One value fills a declared shape of any size when decoded: the request is refused from
    its declared shape, naming the input, however small its message is."""
    name = next(n for n in sorted(fx.RAW) if fx.RAW[n][1] and fx.RAW[n][0] == tf.int64)
    request = fx.raw_request(fx.random_rows(1, seed=8))
    proto = request.inputs[name]
    length = proto.tensor_shape.dim[1].size
    proto.ClearField("int64_val")
    proto.int64_val.append(1)
    proto.tensor_shape.dim[1].size = LIMIT_BYTES // 8 + 1  # int64: just over the limit once decoded
    assert request.ByteSize() < 10_000
    error = rpc_error(stubs.prediction.Predict, request)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert f"(input '{name}' has shape [1, {LIMIT_BYTES // 8 + 1}])" in error.details()
    assert f"more than the limit of {MAX_MB} MB (ctr-pipeline serve --max-message-mb)" in error.details()
    proto.tensor_shape.dim[1].size = length  # the same value filling the history's own length: answered
    assert stubs.scores(request)[0].shape == (1,)


# ---- error messages ---------------------------------------------------------------------------
def test_an_error_naming_thousands_of_inputs_reaches_the_client_cut_short(stubs):
    """The message names every unexpected input; uncut, 10,000 of them would be over the client's
    metadata limit and arrive as RESOURCE_EXHAUSTED "Stream removed" instead of the request's status."""
    request = fx.examples_request(fx.random_rows(2))
    for k in range(10_000):
        request.inputs[f"extra_{k:05d}"].CopyFrom(tf.make_tensor_proto(["x"]))
    error = rpc_error(stubs.prediction.Predict, request)
    assert error.code() == INVALID, error.details()
    assert "inputs do not match the signature" in error.details() and "'extra_00000'" in error.details()
    assert len(error.details().encode()) <= servicers.MAX_DETAILS_BYTES
    assert error.details().endswith(" bytes)") and "(cut: the message has " in error.details()
    non_ascii = fx.examples_request(fx.random_rows(2))
    non_ascii.inputs["é" * 3000].CopyFrom(tf.make_tensor_proto(["x"]))  # 2 bytes each, percent-encoded
    error = rpc_error(stubs.prediction.Predict, non_ascii)
    assert error.code() == INVALID and "'éé" in error.details()


# ---- load shedding ----------------------------------------------------------------------------
def test_calls_beyond_max_pending_are_refused_at_once_and_the_server_keeps_answering(tmp_path):
    """One worker, at most one call in flight: of a burst of 60 calls, those arriving while another
    is in flight get RESOURCE_EXHAUSTED at once; the others are answered, and so is the next call."""
    install({1: fx.save_fixture_model(str(tmp_path / "template"))}, tmp_path / "base", 1)
    request = fx.examples_request(fx.random_rows(MAX_ROWS))
    with running(tmp_path / "base", poll_seconds=3600, workers=1, max_pending=1) as (_, stubs):
        futures = [stubs.prediction.Predict.future(request, timeout=30) for _ in range(60)]
        codes, details = [], set()
        for future in futures:
            error = future.exception()
            codes.append(grpc.StatusCode.OK if error is None else error.code())
            if error is not None:
                details.add(error.details())
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, (codes, details)
        assert details == {"Concurrent RPC limit exceeded!"}
        assert stubs.scores(request)[0].shape == (MAX_ROWS,)


def test_client_says_the_server_is_busy_when_it_sheds_the_call(tmp_path, capsys):
    install({1: fx.save_fixture_model(str(tmp_path / "template"))}, tmp_path / "base", 1)
    busy = fx.examples_request(fx.random_rows(MAX_ROWS))
    with running(tmp_path / "base", poll_seconds=3600, workers=1, max_pending=1) as served:
        for _ in range(10):  # keep the one slot taken by a burst, then call through the client
            burst = [served[1].prediction.Predict.future(busy, timeout=30) for _ in range(30)]
            shed = _predict(served, tmp_path, REQUEST) == 1
            for future in burst:
                future.exception()
            if shed:
                break
    assert shed, "the client's call was never shed"
    err = capsys.readouterr().err
    assert "RESOURCE_EXHAUSTED: Concurrent RPC limit exceeded!" in err
    assert "the server is busy" in err and "--max-pending" in err and "message size" not in err


def test_serve_arguments_bound_the_calls_in_flight():
    parser = argparse.ArgumentParser()
    cli_options.add_serve_arguments(parser)
    assert parser.parse_args(["--model-base", "m"]).max_pending == cli_options.DEFAULT_MAX_PENDING == 64
    assert parser.parse_args(["--model-base", "m", "--max-pending", "3"]).max_pending == 3
    assert "--max-pending" in parser.format_help()


# ---- empty inputs -----------------------------------------------------------------------------
def test_zero_candidates_are_refused_naming_the_candidate_inputs(stubs):
    user = fx.random_rows(1, seed=6)[0]
    error = rpc_error(stubs.prediction.Predict, fx.candidates_request(user, []))
    assert error.code() == INVALID, error.details()
    assert "signature 'serving_candidates': the request has 0 candidates" in error.details()
    assert "inputs 'genre', 'item_id'" in error.details() and "send at least one" in error.details()
    assert stubs.scores(fx.candidates_request(user, [user]))[0].shape == (1,)


def _no_history(row):
    return {name: [] if fx.RAW[name][1] else value for name, value in row.items()}


def test_empty_batches_and_histories_are_answered(stubs):
    """Zero rows of serving_default / serving_raw answer zero scores, as TF Serving does (the
    exported models do too); empty histories ([B, 0]) are scored like histories of padding."""
    assert stubs.scores(fx.examples_request([]))[0].shape == (0,)
    empty = fx.raw_request(fx.random_rows(1))
    for proto in empty.inputs.values():
        proto.tensor_shape.dim[0].size = 0
        for field in ("string_val", "int64_val"):
            proto.ClearField(field)
    assert stubs.scores(empty)[0].shape == (0,)
    rows = [_no_history(r) for r in fx.random_rows(3, seed=7)]
    raw = fx.raw_request(rows)
    assert [d.size for d in raw.inputs["hist_click_item_id"].tensor_shape.dim] == [3, 0]
    assert stubs.scores(raw)[0].shape == (3,)
    assert stubs.scores(fx.candidates_request(rows[0], rows))[0].shape == (3,)


# ---- the client -------------------------------------------------------------------------------
def _predict(limited, tmp_path, request, *extra):
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    parser = argparse.ArgumentParser()
    cli_options.add_predict_arguments(parser)
    args = parser.parse_args(["--server", f"127.0.0.1:{limited[0].port}", "--model", fx.MODEL_NAME,
                              "--input", str(path), *extra])
    return grpc_client.run_predict(args)


def test_client_names_the_message_limit_the_server_refused(limited, tmp_path, capsys):
    big = {**REQUEST, "candidates": [{"item_id": "i" * 600_000, "genre": "drama"}] * 2}
    assert _predict(limited, tmp_path, big) == 1
    err = capsys.readouterr().err
    assert "RESOURCE_EXHAUSTED: SERVER: Received message larger than max" in err
    assert f"vs. {LIMIT_BYTES})" in err and "ctr-pipeline serve --max-message-mb" in err
    # the client's own send limit refuses before sending
    assert _predict(limited, tmp_path, big, "--max-message-mb", "1") == 1
    err = capsys.readouterr().err
    assert "CLIENT: Sent message larger than max" in err and "this client's is 1 MB" in err
    assert _predict(limited, tmp_path, REQUEST) == 0


def test_client_prints_the_row_limit_the_server_refused(limited, tmp_path, capsys):
    many = {**REQUEST, "candidates": [{"item_id": f"c{i}", "genre": "x"} for i in range(MAX_ROWS + 1)]}
    assert _predict(limited, tmp_path, many, "--signature", "serving_candidates") == 1
    err = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in err and f"{MAX_ROWS + 1} rows" in err and f"maximum batch size {MAX_ROWS}" in err


def test_predict_arguments_default_to_the_servers_message_limit():
    parser = argparse.ArgumentParser()
    cli_options.add_predict_arguments(parser)
    args = parser.parse_args(["--model", "m", "--input", "-"])
    assert args.max_message_mb == cli_options.DEFAULT_MAX_MESSAGE_MB == 64
    assert "--max-message-mb" in parser.format_help()
