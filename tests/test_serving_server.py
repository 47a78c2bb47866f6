"""The TF Serving stand-in, driven through the official TF Serving gRPC stubs."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import contextlib
import dataclasses
import logging
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import cli_options, model_config, server, servicers, versions, warmup
from serving.servable import Servable, predict, read_signature_defs
from tests import serving_fixtures as fx

State = get_model_status_pb2.ModelVersionStatus.State
MAX_BATCH = 50
NEVER = 3600.0  # poll interval of tests that poll by hand


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    """Fixture SavedModels: version 1 (bias 0) and version 2 (bias 1, other scores)."""
    root = tmp_path_factory.mktemp("templates")
    return {v: fx.save_fixture_model(str(root / f"v{v}"), bias=v - 1.0) for v in (1, 2)}


def install(templates, base, version, template=None, model=fx.MODEL_NAME) -> str:
    """Copies a template into ``<base>/<model>/<version>`` (file by file, not atomically)."""
    path = os.path.join(str(base), model, str(version))
    shutil.copytree(templates[template or version], path)
    return path


@dataclasses.dataclass
class Stubs:
    prediction: prediction_service_pb2_grpc.PredictionServiceStub
    model: model_service_pb2_grpc.ModelServiceStub

    def scores(self, request, timeout=10):
        response = self.prediction.Predict(request, timeout=timeout)
        return tf.make_ndarray(response.outputs["probability"]), response.model_spec.version.value

    def status(self, model=fx.MODEL_NAME):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = self.model.GetModelStatus(request, timeout=10)
        return {s.version: s for s in response.model_version_status}


@contextlib.contextmanager
def running(base, **kwargs):
    handle = server.serve(str(base), 0, **kwargs)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    try:
        yield handle, Stubs(
            prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel),
        )
    finally:
        channel.close()
        handle.stop()


@pytest.fixture(scope="module")
def v1_server(tmp_path_factory, templates):
    """A server with version 1 only, max batch size 50."""
    base = tmp_path_factory.mktemp("base")
    install(templates, base, 1)
    with running(base, poll_seconds=NEVER, max_batch_size=MAX_BATCH) as (handle, stubs):
        yield handle, stubs


@pytest.fixture
def stubs(v1_server):
    return v1_server[1]


def wait_until(condition, seconds=60.0):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def rpc_error(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=10)
    return caught.value


# ---- answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("signature", ["serving_default", "serving_raw"])
def test_predict_matches_the_saved_model(stubs, templates, signature):
    rows = fx.random_rows(20, seed=1)
    request = fx.raw_request(rows) if signature == "serving_raw" else fx.examples_request(rows)
    response = stubs.prediction.Predict(request, timeout=10)
    assert list(response.outputs) == ["probability"]
    output = response.outputs["probability"]
    assert output.dtype == tf.float32.as_datatype_enum and len(output.float_val) == 20
    np.testing.assert_allclose(
        tf.make_ndarray(output), fx.direct_scores(templates[1], rows, signature), rtol=0, atol=1e-7
    )
    assert response.model_spec.name == fx.MODEL_NAME
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == signature


def test_candidates_signature_takes_one_user_and_a_batch_of_candidates(stubs, templates):
    rows = fx.random_rows(6, seed=4)
    user = rows[0]
    candidates = [{**user, **{f: r[f] for f in fx.SPEC.item_fields}} for r in rows]
    request = fx.candidates_request(user, rows)
    scores, _ = stubs.scores(request)
    np.testing.assert_allclose(scores, fx.direct_scores(templates[1], candidates, "serving_default"), rtol=0, atol=1e-7)
    # the user part has a fixed batch of one: two users are refused with the input named
    request.inputs["user_id"].CopyFrom(tf.make_tensor_proto(["u1", "u2"], dtype=tf.string))
    error = rpc_error(stubs.prediction.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "input 'user_id'" in error.details()


def test_empty_signature_name_means_serving_default(stubs, templates):
    rows = fx.random_rows(3, seed=2)
    request = fx.examples_request(rows, signature="")
    scores, _ = stubs.scores(request)
    np.testing.assert_allclose(scores, fx.direct_scores(templates[1], rows, "serving_default"))


def test_explicit_version_and_output_filter(stubs):
    request = fx.examples_request(fx.random_rows(2), version=1)
    request.output_filter.append("probability")
    assert stubs.scores(request)[1] == 1


def test_metadata_is_the_signature_def_map(stubs, templates):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = fx.MODEL_NAME
    response = stubs.prediction.GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert signature_map == read_signature_defs(templates[1])
    signatures = signature_map.signature_def
    assert list(signatures["serving_default"].inputs) == ["examples"]
    raw = signatures["serving_raw"]
    assert set(raw.inputs) == set(fx.RAW)
    assert [d.size for d in raw.inputs["hist_click_item_id"].tensor_shape.dim] == [-1, -1]
    assert raw.inputs["timestamp"].dtype == tf.int64.as_datatype_enum
    assert raw.outputs["probability"].dtype == tf.float32.as_datatype_enum


def test_status_reports_the_available_version(stubs):
    statuses = stubs.status()
    assert list(statuses) == [1]
    assert statuses[1].state == State.AVAILABLE and statuses[1].status.error_code == 0
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = fx.MODEL_NAME
    request.model_spec.version.value = 1
    assert len(stubs.model.GetModelStatus(request, timeout=10).model_version_status) == 1
    request.model_spec.version.value = 9
    assert rpc_error(stubs.model.GetModelStatus, request).code() == grpc.StatusCode.NOT_FOUND


# ---- refused requests -------------------------------------------------------------------------
def _with(request, mutate):
    mutate(request)
    return request


def _string_tensor(values, shape):
    return tf.make_tensor_proto(np.array(values, dtype=object).reshape(shape), dtype=tf.string)


ROWS = fx.random_rows(4, seed=3)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_REQUESTS = {
    "unknown model": (lambda: fx.examples_request(ROWS, model="nope"),
                      grpc.StatusCode.NOT_FOUND, "'nope'"),
    "version not loaded": (lambda: fx.examples_request(ROWS, version=7),
                           grpc.StatusCode.NOT_FOUND, "version 7"),
    "version label": (lambda: _with(fx.examples_request(ROWS),
                                    lambda r: setattr(r.model_spec, "version_label", "stable")),
                      INVALID, "stable"),
    "unknown signature": (lambda: fx.examples_request(ROWS, signature="serving_nope"),
                          INVALID, "serving_nope"),
    "missing input": (lambda: _with(fx.raw_request(ROWS), lambda r: r.inputs.pop("gender")),
                      INVALID, "gender"),
    "extra input": (lambda: _with(fx.examples_request(ROWS),
                                  lambda r: r.inputs["bogus"].CopyFrom(_string_tensor(["x"], [1]))),
                    INVALID, "bogus"),
    "wrong dtype": (lambda: _with(fx.raw_request(ROWS), lambda r: r.inputs["timestamp"].CopyFrom(
        _string_tensor(["1"] * 4, [4]))), INVALID, "'timestamp' expects dtype int64"),
    "wrong rank": (lambda: _with(fx.raw_request(ROWS), lambda r: r.inputs["user_id"].CopyFrom(
        _string_tensor(["u"] * 4, [4, 1]))), INVALID, "'user_id' expects shape"),
    "history of rank 1": (lambda: _with(fx.raw_request(ROWS), lambda r: r.inputs[
        "hist_click_item_id"].CopyFrom(_string_tensor(["i"] * 4, [4]))),
        INVALID, "'hist_click_item_id' expects shape"),
    "different batch sizes": (lambda: _with(fx.raw_request(ROWS), lambda r: r.inputs[
        "gender"].CopyFrom(_string_tensor(["F"] * 3, [3]))), INVALID, "different batch sizes"),
    "undecodable tensor": (lambda: _with(fx.examples_request(ROWS), lambda r: r.inputs[
        "examples"].string_val.append(b"one too many")), INVALID, "'examples'"),
    "malformed tf.Example": (lambda: _with(fx.examples_request(ROWS), lambda r: r.inputs[
        "examples"].CopyFrom(_string_tensor([b"\xff\x00 not a proto"], [1]))),
        INVALID, "model 'ctr'"),
    "tf.Example without a feature": (lambda: _with(fx.examples_request(ROWS), lambda r: r.inputs[
        "examples"].CopyFrom(_string_tensor([tf.train.Example().SerializeToString()], [1]))),
        INVALID, "is required but could not be found"),
    "batch too large": (lambda: fx.examples_request(fx.random_rows(MAX_BATCH + 1)),
                        INVALID, f"maximum batch size {MAX_BATCH}"),
    "unknown output": (lambda: _with(fx.examples_request(ROWS), lambda r: r.output_filter.append(
        "logits")), INVALID, "logits"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_the_server_keeps_serving(stubs, case):
    build, code, text = BAD_REQUESTS[case]
    error = rpc_error(stubs.prediction.Predict, build())
    assert error.code() == code, error.details()
    assert text in error.details()
    assert stubs.scores(fx.examples_request(ROWS))[0].shape == (len(ROWS),)


@pytest.mark.parametrize("fields, code", [
    ([], grpc.StatusCode.INVALID_ARGUMENT),
    (["signature_def", "other"], grpc.StatusCode.INVALID_ARGUMENT),
])
def test_metadata_refuses_unsupported_fields(stubs, fields, code):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = fx.MODEL_NAME
    assert rpc_error(stubs.prediction.GetModelMetadata, request).code() == code


def test_unknown_model_has_no_metadata_nor_status(stubs):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "nope"
    assert rpc_error(stubs.prediction.GetModelMetadata, request).code() == grpc.StatusCode.NOT_FOUND
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "nope"
    error = rpc_error(stubs.model.GetModelStatus, status_request)
    assert error.code() == grpc.StatusCode.NOT_FOUND


# ---- versions ---------------------------------------------------------------------------------
def test_hot_swap_under_load_loses_no_request(tmp_path, templates):
    install(templates, tmp_path, 1)
    rows = fx.random_rows(8, seed=4)
    expected = {v: fx.direct_scores(templates[v], rows, "serving_default") for v in (1, 2)}
    requests = [fx.examples_request(rows), fx.raw_request(rows)]
    stop = threading.Event()
    failures, wrong_scores = [], []
    versions_seen = [[] for _ in range(4)]

    def send(stubs, worker):
        while not stop.is_set():
            try:
                scores, version = stubs.scores(requests[worker % 2])
            except grpc.RpcError as e:
                failures.append(f"{e.code()}: {e.details()}")
                continue
            versions_seen[worker].append(version)
            if not np.allclose(scores, expected[version], rtol=0, atol=1e-7):
                wrong_scores.append(version)

    with running(tmp_path, poll_seconds=0.05) as (handle, stubs):
        workers = [threading.Thread(target=send, args=(stubs, w)) for w in range(4)]
        for w in workers:
            w.start()
        try:
            wait_until(lambda: all(seen for seen in versions_seen))
            install(templates, tmp_path, 2)
            wait_until(lambda: all(seen[-1] == 2 for seen in versions_seen))
        finally:
            stop.set()
            for w in workers:
                w.join()
        after = stubs.scores(fx.examples_request(rows))
        statuses = stubs.status()

    assert failures == [] and wrong_scores == []
    for seen in versions_seen:
        assert seen[0] == 1 and seen[-1] == 2, "each worker saw both versions"
        assert seen == sorted(seen), "no request went back to the old version after the swap"
    assert after[1] == 2
    np.testing.assert_allclose(after[0], expected[2], rtol=0, atol=1e-7)
    assert statuses[1].state == State.END and statuses[2].state == State.AVAILABLE


def test_while_a_version_loads_the_served_one_answers_requests_one_at_a_time(tmp_path, templates, monkeypatch):
    """A load is not starved by many clients (the swap under 50 clients): while version 2 loads,
    version 1 answers every request, REQUESTS_DURING_LOAD at a time, each turn followed by a rest
    as long as the request; after the swap, all at once."""
    install(templates, tmp_path, 1)
    request = fx.examples_request(fx.random_rows(2))
    loading, release = threading.Event(), threading.Event()
    warm_up = Servable.warm_up

    def held_warm_up(self, max_batch_size):
        if self.version == 2:
            loading.set()
            release.wait(60)
        return warm_up(self, max_batch_size)

    REQUEST_SECONDS = 0.5
    together, peak, started, lock = [0], [0], [0.0], threading.Lock()
    answer = servicers.predict

    def slow_predict(*args):
        with lock:
            together[0] += 1
            peak[0] = max(peak[0], together[0])
        try:
            time.sleep(REQUEST_SECONDS)  # long enough for the burst's requests to overlap if allowed
            return answer(*args)
        finally:
            with lock:
                together[0] -= 1

    def burst(stubs, n=4):
        """(the most requests answered together, the versions answering) for n requests at once."""
        peak[0] = 0
        started[0] = time.perf_counter()
        answered_by = []
        threads = [threading.Thread(target=lambda: answered_by.append(stubs.scores(request)[1])) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return peak[0], sorted(answered_by)

    monkeypatch.setattr(Servable, "warm_up", held_warm_up)
    monkeypatch.setattr(servicers, "predict", slow_predict)
    with running(tmp_path, poll_seconds=NEVER) as (handle, stubs):
        peak_before, answered_by = burst(stubs)
        assert peak_before > 1 and answered_by == [1, 1, 1, 1]  # overlapping
        install(templates, tmp_path, 2)
        handle.manager.poll_once()  # first sight of version 2: wait until its files settle
        poller = threading.Thread(target=handle.manager.poll_once)
        poller.start()
        assert loading.wait(60)
        assert burst(stubs) == (versions.REQUESTS_DURING_LOAD, [1, 1, 1, 1])
        assert time.perf_counter() - started[0] >= 4 * 2 * REQUEST_SECONDS  # each turn: the request, then a rest as long
        release.set()
        poller.join()
        peak_after, answered_by = burst(stubs)
        assert peak_after > 1 and answered_by == [2, 2, 2, 2]


def test_old_version_unloads_only_after_its_requests_finish(tmp_path, templates):
    install(templates, tmp_path, 1)
    rows = fx.random_rows(2)
    with running(tmp_path, poll_seconds=NEVER) as (handle, stubs):
        manager = handle.manager
        with manager.acquire(fx.MODEL_NAME) as in_flight:
            install(templates, tmp_path, 2)
            manager.poll_once()  # first sight of version 2: wait until its files settle
            assert stubs.scores(fx.examples_request(rows))[1] == 1
            manager.poll_once()
            assert stubs.scores(fx.examples_request(rows))[1] == 2
            assert stubs.status()[1].state == State.UNLOADING
            response = predict(in_flight, fx.examples_request(rows), MAX_BATCH)
            assert response.model_spec.version.value == 1
        assert stubs.status()[1].state == State.END
        error = rpc_error(stubs.prediction.Predict, fx.examples_request(rows, version=1))
        assert error.code() == grpc.StatusCode.NOT_FOUND


def test_half_written_and_broken_versions_are_skipped(tmp_path, templates, caplog):
    install(templates, tmp_path, 1)
    rows = fx.random_rows(2)
    version_2 = tmp_path / fx.MODEL_NAME / "2"
    with running(tmp_path, poll_seconds=NEVER) as (handle, stubs):
        poll = handle.manager.poll_once
        shutil.copytree(os.path.join(templates[2], "variables"), version_2 / "variables")
        poll(), poll()
        assert list(stubs.status()) == [1], "a directory without saved_model.pb is not a version"

        (version_2 / "saved_model.pb").write_bytes(b"truncated")
        with caplog.at_level(logging.ERROR, logger="serving.server"):
            poll(), poll(), poll()
        assert len(caplog.records) == 1, "a failed version is retried only when its files change"
        statuses = stubs.status()
        assert statuses[1].state == State.AVAILABLE
        assert statuses[2].state == State.END and statuses[2].status.error_message
        assert stubs.scores(fx.examples_request(rows))[1] == 1

        shutil.rmtree(version_2)
        install(templates, tmp_path, 2)
        poll(), poll()
        statuses = stubs.status()
        assert statuses[2].state == State.AVAILABLE and statuses[2].status.error_message == ""
        assert stubs.scores(fx.examples_request(rows))[1] == 2


def test_startup_serves_the_newest_version_that_loads(tmp_path, templates):
    install(templates, tmp_path, 1)
    os.makedirs(tmp_path / fx.MODEL_NAME / "2")
    (tmp_path / fx.MODEL_NAME / "2" / "saved_model.pb").write_bytes(b"garbage")
    with running(tmp_path, poll_seconds=NEVER) as (handle, stubs):
        statuses = stubs.status()
        assert statuses[1].state == State.AVAILABLE
        assert statuses[2].state == State.END and statuses[2].status.error_code != 0


def test_new_model_directory_is_picked_up(tmp_path, templates):
    install(templates, tmp_path, 1)
    with running(tmp_path, poll_seconds=NEVER) as (handle, stubs):
        install(templates, tmp_path, 5, template=2, model="other")
        handle.manager.poll_once(), handle.manager.poll_once()
        scores, version = stubs.scores(fx.examples_request(fx.random_rows(2), model="other"))
        assert version == 5


# ---- warmup -----------------------------------------------------------------------------------
def test_warmup_file_is_written_as_prediction_logs_and_replayed_at_load(tmp_path, templates):
    model_dir = str(tmp_path / "export")
    shutil.copytree(templates[2], model_dir)
    examples = [fx.serialize(row) for row in fx.random_rows(3, seed=5)]
    path = warmup.write_warmup_requests(model_dir, fx.MODEL_NAME, examples)
    assert path == os.path.join(model_dir, "assets.extra", "tf_serving_warmup_requests")

    records = [prediction_log_pb2.PredictionLog.FromString(r)
               for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert [log.WhichOneof("log_type") for log in records] == ["predict_log"] * 9
    requests = [log.predict_log.request for log in records]
    signatures = [r.model_spec.signature_name for r in requests]
    assert signatures == ["serving_default"] * 3 + ["serving_raw", "serving_candidates"] * 3
    assert {r.model_spec.name for r in requests} == {fx.MODEL_NAME}
    assert [list(r.inputs["examples"].string_val) for r in requests[:3]] == [[e] for e in examples]
    # the raw requests carry each example's own features and score as the example does
    model = tf.saved_model.load(model_dir)
    for example, request in zip(examples, requests[3::2]):
        inputs = {name: tf.make_ndarray(t) for name, t in request.inputs.items()}
        raw_score = model.signatures["serving_raw"](**inputs)["probability"].numpy()
        expected = model.signatures["serving_default"](examples=tf.constant([example]))["probability"].numpy()
        np.testing.assert_allclose(raw_score, expected, rtol=0, atol=1e-7)

    base = tmp_path / "base"
    install(templates, base, 1)
    with running(base, poll_seconds=NEVER) as (handle, stubs):
        assert handle.manager.serving[fx.MODEL_NAME].warmup_count == 0
        install({2: model_dir}, base, 2)
        handle.manager.poll_once(), handle.manager.poll_once()
        assert handle.manager.serving[fx.MODEL_NAME].version == 2
        assert handle.manager.serving[fx.MODEL_NAME].warmup_count == 9  # 3 examples x 3 signatures


def test_failing_warmup_fails_the_load(tmp_path, templates):
    model_dir = str(tmp_path / "export")
    shutil.copytree(templates[2], model_dir)
    warmup.write_warmup_requests(model_dir, fx.MODEL_NAME, [b"\xff not an example"])
    base = tmp_path / "base"
    install(templates, base, 1)
    install({2: model_dir}, base, 2)
    with running(base, poll_seconds=NEVER) as (handle, stubs):
        statuses = stubs.status()
        assert statuses[1].state == State.AVAILABLE
        assert "warmup request 0 failed" in statuses[2].status.error_message


def test_warmup_needs_an_examples_signature(tmp_path, templates):
    with pytest.raises(ValueError, match="one string input"):
        warmup.write_warmup_requests(templates[1], fx.MODEL_NAME, [b""], signature="serving_raw")
    with pytest.raises(ValueError, match="no signature"):
        warmup.write_warmup_requests(templates[1], fx.MODEL_NAME, [b""], signature="nope")
    with pytest.raises(ValueError, match="at least one"):
        warmup.write_warmup_requests(templates[1], fx.MODEL_NAME, [])
    with pytest.raises(ValueError, match="at most 1000 warmup records"):  # 400 examples x 3 signatures
        warmup.write_warmup_requests(templates[1], fx.MODEL_NAME, [fx.serialize(fx.random_rows(1)[0])] * 400)


# ---- models.config ----------------------------------------------------------------------------
def test_models_config_lists_every_model(tmp_path):
    for model in ("ctr", "din"):
        os.makedirs(tmp_path / model / "1")
    (tmp_path / "README").write_text("not a model")
    path = model_config.write_models_config(str(tmp_path))
    assert path == str(tmp_path / "models.config")
    config = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
    models = config.model_config_list.config
    assert [m.name for m in models] == ["ctr", "din"]
    assert [m.base_path for m in models] == [str(tmp_path / "ctr"), str(tmp_path / "din")]
    assert all(m.model_platform == "tensorflow" for m in models)
    assert all(m.model_version_policy.latest.num_versions == 1 for m in models)

    model_config.write_models_config(str(tmp_path), container_root="/models/")
    config = text_format.Parse(open(path).read(), model_server_config_pb2.ModelServerConfig())
    assert [m.base_path for m in config.model_config_list.config] == ["/models/ctr", "/models/din"]


# ---- starting the server ----------------------------------------------------------------------
def test_serve_refuses_a_missing_base_and_a_busy_port(tmp_path, v1_server):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        server.serve(str(tmp_path / "missing"), 0)
    with pytest.raises(OSError, match="cannot listen"):
        server.serve(str(tmp_path), v1_server[0].port)


def test_serve_arguments(tmp_path):
    parser = argparse.ArgumentParser()
    cli_options.add_serve_arguments(parser)
    args = parser.parse_args(["--model-base", str(tmp_path / "missing")])
    assert (args.port, args.host, args.poll_seconds, args.max_batch_size) == (
        8500, "127.0.0.1", 1.0, 1000)
    assert args.max_message_mb == 64 and "--max-message-mb" in parser.format_help()
    assert server.run_serve(args) == 1
