"""Reliability benchmark: the real server (``ctr-pipeline serve``) under abuse, in one table.

    python benchmarks/reliability.py --model-base SERVING_ROOT [--models din_reg] [--requests 10000]
                                     [--clients 50] [--duration 60] [--output benchmarks/results]
    python benchmarks/reliability.py --pipeline-root runs/demo ...   # the models the Pusher would push
    python benchmarks/reliability.py --model-base SERVING_ROOT --small   # the quick check (about a minute)

The models (the newest version of each; by default the first one found) are copied to a temporary
model base (the given one is never touched) and served by ``ctr-pipeline serve`` in a subprocess with
its default limits, as ``benchmarks/serving.py`` serves them (its model-base copy, server, request
building and hot-swap push are reused). Clients call the official gRPC API
(``tensorflow_serving.apis.prediction_service_pb2_grpc``).

1. Malformed requests: a corpus of kinds of broken Predict / GetModelMetadata requests (unknown
   model, version or signature, missing or extra inputs, wrong dtypes and ranks, negative and huge
   declared shapes, ragged inputs, empty batches, no candidate, garbage tf.Examples, bad UTF-8,
   messages over --max-message-mb, rows over --max-batch-size, NaN floats, duplicate inputs...),
   ``--requests`` in all (each kind its share; the heavy kinds, 64 MB messages and 100,000-row
   requests, 10 each, 1 with --small), sent by 4 clients with a valid request after every 10. Per
   kind: the gRPC status expected and the ones received. The server's resident memory (VmRSS) after
   loading and warming up, its peak during the corpus, and after the corpus plus a settling pause.
2. Soak: ``--clients`` clients send valid requests back to back for ``--duration`` seconds; at half
   time version+1 is pushed as TFX's Pusher writes it (saved_model.pb last). Throughput, p50/p99,
   failed valid requests, calls shed by ``--max-pending`` (RESOURCE_EXHAUSTED, counted apart: not a
   failure) and the seconds from the new version's saved_model.pb on disk to its first answer; then
   the same swap again with one client asking every 0.1 s, to tell the traffic's share apart.
3. Throughput and p50/p99 at 1, 8, 32 and ``--clients`` clients (short runs).
4. Corrupted logs: ``python -m pipeline.cli score`` on a small generic log written for the model's
   feature spec with a known number of corrupt rows of each quarantine reason: rows in = scored
   rows + error rows, per reason.

Kill-and-resume is not measured here: tests/test_killed_runs.py SIGKILLs a real run in its Trainer
and resumes it; even a tiny pipeline (Transform, Trainer, Evaluator) takes minutes, too dear for
this benchmark.

A failure is a malformed kind answered with another status than expected (INTERNAL or UNKNOWN where
the server's own code answers, DEADLINE_EXCEEDED: a hang, UNAVAILABLE: a crash), a valid request
that fails (calls shed by --max-pending apart), a server that exits, a swap never served, or batch
scoring whose rows do not add up. Unparsable request bytes are expected INTERNAL: gRPC itself
answers them before the server's code runs, as TF Serving's C++ gRPC does. The memory (after /
post-load <= 1.10) and swap (<= 15 s) targets are reported, not failures: they depend on the
machine's load.

Writes ``reliability.json`` and ``reliability.md`` to ``--output`` and prints the table. Exits 1 on a
failure, 2 on a setup error. ``--server-env MALLOC_ARENA_MAX=2`` (repeatable) sets the server's
environment only, to see where its memory goes.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import collections
import concurrent.futures
import dataclasses
import datetime
import json
import math
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402
from benchmarks import serving as serving_benchmark  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from contract.feature_spec import FeatureSpec  # noqa: E402
from contract.features import DISLIKED, ITEM_ID, LABEL, LIKED, TIMESTAMP, USER_ID  # noqa: E402
from contract.serving import COUNTS_FILE, OUTPUT_KEY, SERVING_CANDIDATES, SERVING_DEFAULT, SERVING_RAW  # noqa: E402
from serving import client, grpc_client  # noqa: E402
from serving.cli_options import DEFAULT_MAX_MESSAGE_MB, MB  # noqa: E402

OK, INVALID, NOT_FOUND = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
EXHAUSTED, INTERNAL = grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL
MAX_BATCH_SIZE = 1000  # the server's default --max-batch-size
HUGE_ROWS = 100_000
CORPUS_CLIENTS = 4
VALID_EVERY = 10  # a valid request after every this many malformed ones
CALL_TIMEOUT_S = 60.0  # a call still unanswered by then is a hang
RSS_TARGET = 1.10  # RSS after the corpus / post-load
SWAP_TARGET_S = 15.0  # new version on disk -> its first answer
LEVELS = (1, 8, 32, 50)
CORRUPT_ROWS_PER_REASON = 3
FULL = {"requests": 10_000, "heavy": 10, "clients": 50, "duration": 60.0, "level_seconds": 10.0, "settle_seconds": 10.0}
SMALL = {"requests": 150, "heavy": 1, "clients": 4, "duration": 6.0, "level_seconds": 2.0, "settle_seconds": 2.0}


# ---- part 1: the malformed-request corpus ----------------------------------------------------
Request = Union[predict_pb2.PredictRequest, get_model_metadata_pb2.GetModelMetadataRequest, bytes]


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of malformed request: ``request`` is a message, or bytes sent as a Predict as they are."""

    name: str
    expected: grpc.StatusCode
    request: Request
    heavy: bool = False  # sent a fixed number of times, not a share of --requests


@dataclasses.dataclass(frozen=True)
class ValidRequests:
    """One user's valid requests to a served model: the corpus's starting points."""

    contract: client.ModelContract
    model: str
    user: client.UserRequest
    default: predict_pb2.PredictRequest
    raw: predict_pb2.PredictRequest
    candidates: predict_pb2.PredictRequest

    @property
    def spec(self) -> FeatureSpec:
        return self.contract.spec

    @property
    def examples_input(self) -> str:
        return self.contract.examples_input

    def build(self, signature: str, candidates: Sequence[Dict[str, str]], events=None) -> predict_pb2.PredictRequest:
        """The user's request for other ``candidates`` (and ``events``: default the user's)."""
        user = dataclasses.replace(self.user, candidates=list(candidates),
                                   events=self.user.events if events is None else events)
        return client.build_predict_request(self.contract, self.model, signature, user)


def valid_requests(contract: client.ModelContract, model: str, user_text: str) -> ValidRequests:
    user = client.parse_user_request(user_text, contract.spec)
    built = {s: client.build_predict_request(contract, model, s, user) for s in (SERVING_DEFAULT, SERVING_RAW, SERVING_CANDIDATES)}
    return ValidRequests(contract, model, user, built[SERVING_DEFAULT], built[SERVING_RAW], built[SERVING_CANDIDATES])


def _changed(request, *changes: Callable):
    """A copy of ``request`` changed by each of ``changes`` in turn."""
    copy = type(request)()
    copy.CopyFrom(request)
    for change in changes:
        change(copy)
    return copy


def _in_model_spec(**fields) -> Callable:
    """Sets fields of the request's model_spec (``version``: its value)."""
    def change(request):
        for field, value in fields.items():
            if field == "version":
                request.model_spec.version.value = value
            else:
                setattr(request.model_spec, field, value)
    return change


def _strings(values, shape) -> tf.Tensor:
    return tf.make_tensor_proto(np.array(values, dtype=object).reshape(shape), dtype=tf.string)


def _repeated(values: Sequence, dtype, n: int) -> tf.Tensor:
    """[n] values of ``dtype``: ``values`` repeated."""
    return tf.make_tensor_proto(np.resize(np.array(values, dtype), n))


def _set_input(name: str, proto) -> Callable:
    return lambda request: request.inputs[name].CopyFrom(proto)


def _dtype_of(name: str, enum: int) -> Callable:
    """Input ``name`` declares the dtype ``enum`` (values unchanged)."""
    return lambda request: setattr(request.inputs[name], "dtype", enum)


def _declared(name: str, change: Callable) -> Callable:
    """Changes the declared shape of input ``name`` (its tensor_shape proto)."""
    return lambda request: change(request.inputs[name].tensor_shape)


def _first_dim(name: str, size: int) -> Callable:
    return _declared(name, lambda shape: setattr(shape.dim[0], "size", size))


def _keep_first_value(name: str) -> Callable:
    """Input ``name`` keeps its shape and only its first string value."""
    return lambda request: request.inputs[name].string_val.__delitem__(slice(1, None))


def _many_extra_inputs(request, count: int = 10_000) -> None:
    for k in range(count):
        request.inputs[f"extra_{k:05d}"].CopyFrom(_strings(["x"], [1]))


def _one_value_huge_shape(name: str, rows: int) -> Callable:
    """An int64 history holding one value and declaring [rows, 10^8] (decodes to 800 MB per row)."""
    def change(request):
        proto = request.inputs[name]
        proto.ClearField("int64_val")
        proto.int64_val.append(1)
        del proto.tensor_shape.dim[:]
        proto.tensor_shape.dim.add(size=rows)
        proto.tensor_shape.dim.add(size=10**8)
    return change


def _content(name: str, content: bytes) -> Callable:
    """Input ``name``'s values given as ``tensor_content`` bytes instead."""
    def change(request):
        proto = request.inputs[name]
        for field in ("string_val", "int64_val"):
            proto.ClearField(field)
        proto.tensor_content = content
    return change


def _examples(valid: ValidRequests, examples: Sequence[bytes]) -> predict_pb2.PredictRequest:
    """The user's serving_default request with ``examples`` (serialized) instead of its own."""
    return _changed(valid.default, _set_input(valid.examples_input, _strings(list(examples), [len(examples)])))


def _timestamp_as(valid: ValidRequests, kind: str, values: Sequence) -> predict_pb2.PredictRequest:
    """The user's first tf.Example, its timestamp feature given as ``kind`` (e.g. float_list) ``values``."""
    example = tf.train.Example.FromString(valid.default.inputs[valid.examples_input].string_val[0])
    feature = example.features.feature[TIMESTAMP]
    feature.Clear()
    getattr(feature, kind).value.extend(values)
    return _examples(valid, [example.SerializeToString()])


def _metadata(model: str, *fields: str) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = model
    return request


def _wire_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag, varint length, payload)."""
    length, varint = len(payload), b""
    while True:
        byte, length = length & 0x7F, length >> 7
        varint += bytes([byte | (0x80 if length else 0)])
        if not length:
            return bytes([number << 3 | 2]) + varint + payload


def _unparsable_model_name(request: predict_pb2.PredictRequest) -> bytes:
    """``request`` followed by a model_spec whose name is not UTF-8 (later fields merge into it)."""
    return request.SerializeToString() + _wire_field(1, _wire_field(1, b"\xff\xfe"))


def _unparsable_input_name(request: predict_pb2.PredictRequest) -> bytes:
    """``request`` followed by an inputs map entry whose key is not UTF-8."""
    entry = _wire_field(1, b"\xff") + _wire_field(2, _strings(["x"], [1]).SerializeToString())
    return request.SerializeToString() + _wire_field(2, entry)


def malformed_kinds(valid: ValidRequests, max_message_mb: int) -> List[Kind]:
    """The corpus: kinds of malformed requests for one served model."""
    spec, model, n = valid.spec, valid.model, len(valid.user.candidates)
    default, raw, candidates, examples = valid.default, valid.raw, valid.candidates, valid.examples_input
    feedback = spec.feedback_types[0]
    history, history_time = spec.history(feedback, ITEM_ID), spec.history_timestamp(feedback)
    as_int64 = predict_pb2.PredictRequest()
    as_int64.inputs[examples].CopyFrom(_repeated([1], np.int64, n))
    too_many = [valid.user.candidates[k % n] for k in range(MAX_BATCH_SIZE + 1)]
    huge = [valid.user.candidates[k % n] for k in range(HUGE_ROWS)]
    kinds = [
        # which model, version, signature
        Kind("unknown model", NOT_FOUND, _changed(default, _in_model_spec(name="no_such_model"))),
        Kind("empty model name", NOT_FOUND, _changed(default, _in_model_spec(name=""))),
        Kind("version not loaded", NOT_FOUND, _changed(default, _in_model_spec(version=2**62))),
        Kind("version label", INVALID, _changed(default, _in_model_spec(version_label="stable"))),
        Kind("unknown signature", INVALID, _changed(default, _in_model_spec(signature_name="serving_nope"))),
        # which inputs
        Kind("missing input (serving_raw without user_id)", INVALID, _changed(raw, lambda r: r.inputs.pop(USER_ID))),
        Kind("no input at all", INVALID, _changed(default, lambda r: r.ClearField("inputs"))),
        Kind("extra input", INVALID, _changed(default, _set_input("bogus", _strings(["x"], [1])))),
        Kind("input name of 1 MB", INVALID, _changed(default, _set_input("x" * MB, _strings(["x"], [1])))),
        Kind("10,000 extra inputs", INVALID, _changed(raw, _many_extra_inputs)),
        Kind("duplicate input on the wire (the last, int64, wins)", INVALID,
             default.SerializeToString() + as_int64.SerializeToString()),
        # dtypes
        Kind("wrong dtype (timestamp as strings)", INVALID, _changed(raw, _set_input(TIMESTAMP, _strings(["1"] * n, [n])))),
        Kind("NaN / inf float32 timestamps", INVALID,
             _changed(raw, _set_input(TIMESTAMP, _repeated([np.nan, np.inf, -np.inf], np.float32, n)))),
        Kind("unknown dtype enum (999)", INVALID, _changed(raw, _dtype_of(TIMESTAMP, 999))),
        Kind("DT_INVALID dtype", INVALID, _changed(raw, _dtype_of(TIMESTAMP, 0))),
        # ranks and declared shapes
        Kind("wrong rank (user_id [N, 1])", INVALID, _changed(raw, _set_input(USER_ID, _strings(["u"] * n, [n, 1])))),
        Kind("history of rank 1", INVALID, _changed(raw, _set_input(history, _strings(["i"] * n, [n])))),
        Kind("history of rank 3", INVALID, _changed(raw, _declared(history, lambda shape: shape.dim.add(size=1)))),
        Kind("examples of rank 0", INVALID, _changed(default, _set_input(examples, _strings(b"x", [])))),
        Kind("unknown rank", INVALID, _changed(raw, _declared(USER_ID, lambda shape: setattr(shape, "unknown_rank", True)))),
        Kind("negative declared dimension", INVALID, _changed(raw, _first_dim(USER_ID, -1))),
        Kind("huge declared shape, one value (800 MB decoded)", EXHAUSTED, _changed(raw, _one_value_huge_shape(history_time, n))),
        Kind("10^12 rows declared", INVALID, _changed(default, _first_dim(examples, 10**12))),
        # values against shapes
        Kind("more values than the shape holds", INVALID, _changed(default, lambda r: r.inputs[examples].string_val.append(b"x"))),
        Kind("ragged: inputs of different batch sizes", INVALID,
             _changed(raw, _set_input(USER_ID, _strings(["u"] * (n - 1), [n - 1])))),
        Kind("ragged: fewer strings than the shape (TF repeats the last)", OK, _changed(raw, _keep_first_value(history))),
        Kind("tensor_content shorter than the shape", INVALID,
             _changed(raw, _content(TIMESTAMP, np.arange(n - 1, dtype=np.int64).tobytes()))),
        Kind("tensor_content not a multiple of 8 bytes (int64)", INVALID, _changed(raw, _content(TIMESTAMP, b"1234567"))),
        Kind("string tensor as garbage tensor_content", INVALID, _changed(default, _content(examples, b"not a string tensor"))),
        Kind("extreme int64 timestamps", OK,
             _changed(raw, _set_input(TIMESTAMP, _repeated([2**63 - 1, -2**63, -1, 0], np.int64, n)))),
        # empty requests
        Kind("empty batch (serving_default, 0 examples)", OK, _examples(valid, [])),
        Kind("empty batch (serving_raw, 0 rows)", OK, valid.build(SERVING_RAW, [])),
        Kind("zero candidates (serving_candidates)", INVALID, valid.build(SERVING_CANDIDATES, [])),
        Kind("serving_candidates with two users", INVALID, _changed(candidates, _set_input(USER_ID, _strings(["u1", "u2"], [2])))),
        # tf.Examples
        Kind("garbage serialized tf.Example", INVALID, _examples(valid, [b"\xff\x00 not a tf.Example"])),
        Kind("tf.Example without features", INVALID, _examples(valid, [tf.train.Example().SerializeToString()])),
        Kind("tf.Example with a NaN float timestamp", INVALID, _timestamp_as(valid, "float_list", [float("nan")])),
        Kind("tf.Example with a bytes timestamp", INVALID, _timestamp_as(valid, "bytes_list", [b"noon"])),
        Kind("tf.Example with two timestamps", INVALID, _timestamp_as(valid, "int64_list", [1, 2])),
        # bytes
        Kind("bad UTF-8 in string values (ids are bytes)", OK, _changed(raw, _set_input(USER_ID, _strings([b"\xff\xfe"] * n, [n])))),
        Kind("bad UTF-8 in the model name (gRPC: unparsable)", INTERNAL, _unparsable_model_name(default)),
        Kind("bad UTF-8 in an input name (gRPC: unparsable)", INTERNAL, _unparsable_input_name(default)),
        Kind("bytes that are not a PredictRequest (gRPC)", INTERNAL, b"\xff" * 64),
        Kind("truncated PredictRequest (gRPC)", INTERNAL, default.SerializeToString()[: default.ByteSize() // 2]),
        # sizes
        Kind(f"message over --max-message-mb ({max_message_mb} MB)", EXHAUSTED,
             _examples(valid, [b"x" * (max_message_mb * MB + 1024)]), heavy=True),
        Kind(f"{MAX_BATCH_SIZE + 1:,} examples (over --max-batch-size)", INVALID, valid.build(SERVING_DEFAULT, too_many)),
        Kind(f"{HUGE_ROWS:,} candidates (serving_candidates)", INVALID, valid.build(SERVING_CANDIDATES, huge), heavy=True),
        Kind(f"{HUGE_ROWS:,} rows (serving_raw, no history)", INVALID, valid.build(SERVING_RAW, huge, events=[]), heavy=True),
        # outputs
        Kind("unknown output_filter", INVALID, _changed(default, lambda r: r.output_filter.append("logits"))),
        Kind("output_filter naming the output twice", OK, _changed(default, lambda r: r.output_filter.append(OUTPUT_KEY))),
        # GetModelMetadata
        Kind("metadata: unknown model", NOT_FOUND, _metadata("no_such_model", "signature_def")),
        Kind("metadata: no metadata_field", INVALID, _metadata(model)),
        Kind("metadata: unsupported field", INVALID, _metadata(model, "signature_def", "other")),
        Kind("metadata: version not loaded", NOT_FOUND, _changed(_metadata(model, "signature_def"), _in_model_spec(version=2**62))),
        Kind("metadata: version label", INVALID, _changed(_metadata(model, "signature_def"), _in_model_spec(version_label="stable"))),
    ]
    if len(spec.item_fields) > 1:  # the candidates' inputs are the item fields
        kinds.append(Kind("serving_candidates: candidate inputs of different lengths", INVALID,
                          _changed(candidates, _set_input(spec.item_fields[1], _strings(["x"] * (n - 1), [n - 1])))))
    return kinds


def kind_counts(kinds: List[Kind], requests: int, heavy: int) -> Dict[str, int]:
    """Requests per kind: ``heavy`` for each heavy kind, the rest of ``requests`` (at least) shared."""
    light = [k for k in kinds if not k.heavy]
    share = max(1, math.ceil((requests - heavy * (len(kinds) - len(light))) / len(light)))
    return {k.name: heavy if k.heavy else share for k in kinds}


def schedule(kinds: List[Kind], counts: Dict[str, int]) -> Iterator[Optional[Kind]]:
    """The kinds round robin, each its count of times; None (a valid request) after every VALID_EVERY."""
    sent = 0
    for round_ in range(max(counts.values())):
        for kind in kinds:
            if counts[kind.name] > round_:
                yield kind
                sent += 1
                if sent % VALID_EVERY == 0:
                    yield None


class Caller:
    """Sends a corpus request through the official stub (bytes: through the raw Predict method)."""

    def __init__(self, channel: grpc.Channel):
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.raw_predict = serving_benchmark.predict_call(channel)

    def __call__(self, request: Request):
        if isinstance(request, bytes):
            return self.raw_predict(request, timeout=CALL_TIMEOUT_S)
        if isinstance(request, get_model_metadata_pb2.GetModelMetadataRequest):
            return self.stub.GetModelMetadata(request, timeout=CALL_TIMEOUT_S)
        return self.stub.Predict(request, timeout=CALL_TIMEOUT_S)


@dataclasses.dataclass
class KindResult:
    codes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    details: Dict[str, str] = dataclasses.field(default_factory=dict)  # code -> the first message
    slowest_s: float = 0.0

    def add(self, code: str, details: str, seconds: float) -> None:
        self.codes[code] += 1
        self.details.setdefault(code, details[:300])
        self.slowest_s = max(self.slowest_s, seconds)


def run_corpus(address: str, kinds: List[Kind], counts: Dict[str, int], valid_pool) -> Dict[str, object]:
    """Sends the corpus from CORPUS_CLIENTS threads; a valid request of ``valid_pool`` after every
    VALID_EVERY malformed ones."""
    results = {kind.name: KindResult() for kind in kinds}
    valid = KindResult()
    lock = threading.Lock()
    with grpc.insecure_channel(address) as channel:
        call = Caller(channel)

        def send(indexed) -> None:
            index, kind = indexed
            request = kind.request if kind else valid_pool.requests[index % len(valid_pool.requests)]
            started = time.perf_counter()
            try:
                response = call(request)
                if kind is None:
                    serving_benchmark.check_response(response, valid_pool.candidates)
                code, details = "OK", ""
            except grpc.RpcError as e:
                code, details = e.code().name, e.details() or ""
            except AssertionError as e:  # a valid request answered with the wrong number of scores
                code, details = "WRONG_ANSWER", str(e)
            with lock:
                (results[kind.name] if kind else valid).add(code, details, time.perf_counter() - started)

        corpus_started = time.perf_counter()
        load = os.getloadavg()[0]
        with concurrent.futures.ThreadPoolExecutor(CORPUS_CLIENTS) as pool:
            list(pool.map(send, enumerate(schedule(kinds, counts))))
    seconds = time.perf_counter() - corpus_started
    return {"kinds": results, "valid": valid, "seconds": seconds, "load_1min": round(load, 2)}


class RssSampler(machine.BackgroundPoll):
    """Samples a process's VmRSS every ``interval`` seconds: ``peak`` bytes."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(interval)
        self.pid, self.peak = pid, 0

    def poll(self) -> None:
        self.peak = max(self.peak, machine.process_rss_bytes(self.pid) or 0)


class VersionWatcher(machine.BackgroundPoll):
    """Polls a model's GetModelStatus: ``seen[(version, state)]``, when first seen (perf_counter seconds)."""

    def __init__(self, address: str, model: str, interval: float = 0.2):
        super().__init__(interval)
        self.address, self.model = address, model
        self.seen: Dict[tuple, float] = {}

    def poll(self) -> None:
        try:
            states = serving_benchmark.model_status(self.address, self.model)
        except grpc.RpcError:
            return
        now = time.perf_counter()
        for version, state in states.items():
            self.seen.setdefault((int(version), state), now)


def swap_phases(on_disk_at: float, seen: Dict[tuple, float], swap: Dict[str, object]) -> Dict[str, Optional[float]]:
    """Seconds of the swap's steps: new version on disk -> LOADING seen (the poller's wait for stable
    files), -> its first answer (load, warmup and the swap); GetModelStatus is polled every 0.2 s."""
    loading = seen.get((swap["to_version"], "LOADING"))
    first_answer = on_disk_at + swap["push_to_new_version_s"] - swap["copy_seconds"] if swap["observed"] else None

    def between(start, end):
        return round(end - start, 2) if start is not None and end is not None else None

    return {"on_disk_to_loading": between(on_disk_at, loading), "loading_to_first_answer": between(loading, first_answer),
            "on_disk_to_first_answer": between(on_disk_at, first_answer)}


def swap_without_traffic(address: str, pool, push: Callable, timeout: float = 300.0) -> Optional[float]:
    """Pushes a version while one client asks every 0.1 s: seconds from its files on disk to its
    first answer (None: not served within ``timeout``)."""
    with grpc.insecure_channel(address) as channel:
        call = serving_benchmark.predict_call(channel)
        new_version, _ = push()
        on_disk_at = time.perf_counter()
        while time.perf_counter() < on_disk_at + timeout:
            response = call(pool.requests[0], timeout=CALL_TIMEOUT_S)
            if serving_benchmark.check_response(response, pool.candidates) == new_version:
                return time.perf_counter() - on_disk_at
            time.sleep(0.1)
    return None


def settled_rss(pid: int, seconds: float) -> int:
    time.sleep(seconds)
    return machine.process_rss_bytes(pid) or 0


# ---- part 4: batch scoring of a corrupted log ---------------------------------------------------
EVENT_HEADER = f"{USER_ID},{ITEM_ID},{TIMESTAMP},{LABEL},{LIKED},{DISLIKED}"


def _corrupt_lines(user: str, item: str, timestamp: int, k: int, good_line: str) -> Dict[str, bytes]:
    """One corrupt events.csv line per quarantine reason (``k`` tells copies apart)."""
    return {
        "undecodable_row": f"{user},".encode() + b"\xff\xfe" + f",{timestamp},1,0,0".encode(),
        "malformed_row": f"{user},{item}\0,{timestamp},1,0,0".encode(),
        "wrong_column_count": f"{user},{item},{timestamp},1,0".encode(),
        "missing_field": f",{item},{timestamp},1,0,0".encode(),
        "unparsable_timestamp": f"{user},{item},yesterday {k},1,0,0".encode(),
        "negative_timestamp": f"{user},{item},-{60 + k},1,0,0".encode(),
        "absurd_timestamp": f"{user},{item},{99_999_999_000 + k},1,0,0".encode(),
        "invalid_flag": f"{user},{item},{timestamp},7,0,0".encode(),
        "unknown_user": f"no_such_user_{k},{item},{timestamp},1,0,0".encode(),
        "unknown_item": f"{user},no_such_item_{k},{timestamp},1,0,0".encode(),
        "duplicate_event": good_line.encode(),
    }


def write_corrupt_log(directory: str, spec: FeatureSpec, catalog, rng: random.Random,
                      users: int = 20, events_per_user: int = 10) -> Dict[str, object]:
    """A generic log (events, users and items tables) for ``spec``'s fields: good events and
    CORRUPT_ROWS_PER_REASON corrupt rows of each reason. Returns what scoring it must count."""
    os.makedirs(directory)
    user_ids = [f"user_{k}" for k in range(users)]
    items = catalog.items[:50]
    _write_table(os.path.join(directory, "users.csv"), spec.user_fields,
                 [{USER_ID: u, **{f: rng.choice(catalog.values[f]) for f in spec.user_fields[1:]}} for u in user_ids])
    _write_table(os.path.join(directory, "items.csv"), spec.item_fields, items)
    good, start = [], 1_700_000_000
    for u, user in enumerate(user_ids):
        for e in range(events_per_user):
            clicked = int(rng.random() < 0.5)
            liked, disliked = int(clicked and rng.random() < 0.4), int(not clicked and rng.random() < 0.3)
            good.append(f"{user},{rng.choice(items)[ITEM_ID]},{start + u * 86_400 + e * 600},{clicked},{liked},{disliked}")
    corrupt = collections.defaultdict(list)
    for k in range(CORRUPT_ROWS_PER_REASON):
        for reason, line in _corrupt_lines(user_ids[k], items[k][ITEM_ID], start + k, k, good[k]).items():
            corrupt[reason].append(line)
    lines = [line.encode() for line in good] + [line for reason_lines in corrupt.values() for line in reason_lines]
    rng.shuffle(lines)
    with open(os.path.join(directory, "events.csv"), "wb") as f:
        f.write(b"\n".join([EVENT_HEADER.encode(), *lines]) + b"\n")
    return {"rows_in": len(lines), "rows_scored": len(good),
            "errors_by_reason": {reason: len(reason_lines) for reason, reason_lines in sorted(corrupt.items())}}


def _write_table(path: str, fields: Sequence[str], rows: List[Dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(fields) + "\n")
        for row in rows:
            f.write(",".join(row[field].replace(",", " ") for field in fields) + "\n")


def score_config(path: str, log_dir: str, spec: FeatureSpec, work: str) -> None:
    """The pipeline config ``ctr-pipeline score`` reads the log with: the model's fields and history length."""
    config = {
        "pipeline_root": os.path.join(work, "runs"),
        "data": {"format": "generic", "path": log_dir, "events": "events.csv", "users": "users.csv", "items": "items.csv",
                 "columns": {"liked": LIKED, "disliked": DISLIKED},
                 "user_attributes": list(spec.user_fields[1:]), "item_attributes": list(spec.item_fields[1:])},
        "sequences": {"max_length": spec.max_length},
    }
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)


def score_corrupted_log(model_dir: str, spec: FeatureSpec, catalog, work: str, seed: int) -> Dict[str, object]:
    """Part 4: writes the log, runs ``python -m pipeline.cli score`` on it, compares its counts."""
    log_dir, output = os.path.join(work, "log"), os.path.join(work, "scores")
    expected = write_corrupt_log(log_dir, spec, catalog, random.Random(seed))
    config = os.path.join(work, "config.yaml")
    score_config(config, log_dir, spec, work)
    command = [sys.executable, "-m", "pipeline.cli", "score", "--model", model_dir, "--config", config,
               "--input", log_dir, "--output", output]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2"))
    seconds = time.perf_counter() - started
    result = {"command": shlex.join(command), "expected": expected, "exit_code": done.returncode,
              "seconds": round(seconds, 1), "load_1min": round(load, 2)}
    counts_path = os.path.join(output, COUNTS_FILE)
    if done.returncode != 0 or not os.path.exists(counts_path):
        result["stderr_tail"] = done.stderr[-2000:]
        return result
    with open(counts_path) as f:
        counts = json.load(f)
    result["counts"] = {key: counts.get(key) for key in ("rows_in", "rows_scored", "error_rows", "errors_by_reason", "balanced")}
    return result


# ---- the table ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    part: str
    measure: str
    value: str
    target: str = ""
    ok: Optional[bool] = None  # None: for information
    load: Optional[float] = None  # the 1-minute load average while it was timed
    is_target: bool = False  # a performance target: reported, missing it is not a failure

    def markdown(self) -> str:
        verdict = {True: "ok", False: "**FAIL**", None: ""}[self.ok]
        load = "" if self.load is None else f"{self.load:.2f}"
        return f"| {self.part} | {self.measure} | {self.value} | {self.target} | {verdict} | {load} |"


def _codes(counter) -> str:
    return ", ".join(f"{code} x{count:,}" for code, count in counter.most_common())


def corpus_rows(model: str, corpus: Dict[str, object], kinds: List[Kind], counts: Dict[str, int]) -> List[Row]:
    rows = []
    for kind in kinds:
        result = corpus["kinds"][kind.name]
        received = _codes(result.codes)
        if set(result.codes) != {kind.expected.name}:
            received += f" ({'; '.join(f'{c}: {d}' for c, d in result.details.items() if c != kind.expected.name)[:200]})"
        rows.append(Row(f"1 malformed ({model})", f"{kind.name} (n={counts[kind.name]:,})", received,
                        kind.expected.name, set(result.codes) == {kind.expected.name}))
    valid = corpus["valid"]
    failed = sum(count for code, count in valid.codes.items() if code != "OK")
    rows.append(Row(f"1 malformed ({model})", f"valid requests in between (n={sum(valid.codes.values()):,})",
                    f"{failed} failed" + (f" ({_codes(valid.codes)})" if failed else ""), "0 failed", failed == 0))
    sent = sum(counts.values()) + sum(valid.codes.values())
    rows.append(Row(f"1 malformed ({model})", f"requests sent ({CORPUS_CLIENTS} clients)",
                    f"{sent:,} in {corpus['seconds']:.1f} s ({sent / corpus['seconds']:,.0f}/s)", load=corpus["load_1min"]))
    return rows


def corpus_details(corpus: Dict[str, object], kinds: List[Kind], counts: Dict[str, int]) -> Dict[str, object]:
    """The corpus's figures for reliability.json."""
    return {
        "kinds": {kind.name: {"expected": kind.expected.name, "sent": counts[kind.name],
                              "received": dict(corpus["kinds"][kind.name].codes),
                              "details": corpus["kinds"][kind.name].details,
                              "slowest_s": round(corpus["kinds"][kind.name].slowest_s, 3)} for kind in kinds},
        "valid_requests": dict(corpus["valid"].codes),
        "seconds": round(corpus["seconds"], 1),
        "load_1min": corpus["load_1min"],
    }


def memory_rows(rss: Dict[str, int]) -> List[Row]:
    ratio = rss["after_abuse"] / rss["post_load"]
    return [
        Row("1 memory", "server RSS post-load (after load + warmup, before the corpus)", f"{rss['post_load'] / MB:,.0f} MB"),
        Row("1 memory", "server RSS peak during the corpus", f"{rss['peak'] / MB:,.0f} MB"),
        Row("1 memory", f"server RSS after the corpus + {rss['settle_seconds']:g} s", f"{rss['after_abuse'] / MB:,.0f} MB"),
        Row("1 memory", "RSS after abuse / post-load", f"{ratio:.3f}", f"<= {RSS_TARGET:.2f}", ratio <= RSS_TARGET, is_target=True),
    ]


def shed_and_failed(row: Dict[str, object]):
    """(calls shed by --max-pending, failed valid requests) of a measure_throughput row."""
    shed = row["failures_by_code"].get(EXHAUSTED.name, 0)
    return shed, row["failures"] - shed


def throughput_rows(part: str, model: str, rows: List[Dict[str, object]]) -> List[Row]:
    table = []
    for row in rows:
        shed, failed = shed_and_failed(row)
        latency = row["latency_ms"]
        table.append(Row(f"{part} ({model})", f"{row['clients']} clients, {row['seconds']:.0f} s",
                         f"{row['requests_per_s']:,.1f} req/s, p50 {latency.get('p50', float('nan')):.1f} ms, "
                         f"p99 {latency.get('p99', float('nan')):.1f} ms; {failed} failed, {shed} shed",
                         "0 failed", failed == 0, row["load_1min"]))
    return table


def soak_rows(model: str, soak: Dict[str, object]) -> List[Row]:
    part = f"2 soak ({model})"
    rows = throughput_rows("2 soak", model, [soak])
    shed, _ = shed_and_failed(soak)
    swap = soak["swap"]
    rows.append(Row(part, "calls shed by --max-pending (RESOURCE_EXHAUSTED)", f"{shed:,}", "reported"))
    if swap["observed"]:
        phases = swap["phases_s"]
        seconds = phases["on_disk_to_first_answer"]
        steps = (f"poll {_seconds(phases['on_disk_to_loading'])}, "
                 f"load + warmup + swap {_seconds(phases['loading_to_first_answer'])}")
        rows.append(Row(part, f"version {swap['from_version']} -> {swap['to_version']}: saved_model.pb on disk -> first answer",
                        f"{seconds:.1f} s ({steps})", f"<= {SWAP_TARGET_S:g} s", seconds <= SWAP_TARGET_S, soak["load_1min"],
                        is_target=True))
    else:
        rows.append(Row(part, "new version served", "never", "served", False))
    idle = soak["swap_without_traffic"]
    rows.append(Row(part, "the same with one client (every 0.1 s) instead of the soak's", _seconds(idle["seconds"]),
                    f"<= {SWAP_TARGET_S:g} s", idle["seconds"] is not None and idle["seconds"] <= SWAP_TARGET_S,
                    idle["load_1min"], is_target=True))
    return rows


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f} s"


def scoring_rows(model: str, scoring: Dict[str, object]) -> List[Row]:
    part = f"4 batch scoring ({model})"
    expected, counts = scoring["expected"], scoring.get("counts")
    if counts is None:
        failed = f"exit {scoring['exit_code']}: {scoring.get('stderr_tail', '')[-200:]}"
        return [Row(part, "ctr-pipeline score", failed, "exit 0", False)]
    balanced = counts["rows_in"] == counts["rows_scored"] + counts["error_rows"]
    rows = [Row(part, "rows in = scored + errors",
                f"{counts['rows_in']} = {counts['rows_scored']} + {counts['error_rows']}",
                f"{expected['rows_in']} = {expected['rows_scored']} + {sum(expected['errors_by_reason'].values())}",
                balanced and counts["rows_in"] == expected["rows_in"] and counts["rows_scored"] == expected["rows_scored"],
                scoring["load_1min"])]
    reasons = sorted(set(expected["errors_by_reason"]) | set(counts["errors_by_reason"]))
    for reason in reasons:
        got, want = counts["errors_by_reason"].get(reason, 0), expected["errors_by_reason"].get(reason, 0)
        rows.append(Row(part, f"error rows: {reason}", str(got), str(want), got == want))
    rows.append(Row(part, "the job's wall time (Beam DirectRunner, TensorFlow start included)", f"{scoring['seconds']:.1f} s",
                    load=scoring["load_1min"]))
    return rows


def render_markdown(result: Dict[str, object], rows: List[Row]) -> str:
    m = result["machine"]
    lines = [
        "# Reliability benchmark",
        "",
        f"`{result['command']}`",
        "",
        f"- started {result['started_at']}, took {result['wall_seconds']:.0f} s; server: `ctr-pipeline serve` "
        f"subprocess, default limits, up {result['server']['startup_seconds']} s after start"
        + (f"; server environment {result['server']['extra_env']}" if result["server"]["extra_env"] else ""),
        f"- machine: {m['cpu_count']} CPUs, {m['cpu_model']}, {m['memory_gb']} GB; load average at start "
        f"{m['load_average_start']}, at end {result['load_average_end']}: **timings measured on a loaded machine** "
        "(other jobs were running; the load column is /proc/loadavg's 1-minute figure when each was measured)",
        f"- TensorFlow {m['tensorflow']}, grpcio {m['grpcio']}, Python {m['python']}, "
        f"commit {str(m['git_commit'])[:10]}{' (dirty tree)' if m['git_dirty'] else ''}",
        f"- models: {', '.join(f'{n} ({p})' for n, p in result['sources'].items())}; valid requests: "
        f"serving_default with {result['config']['candidates']} candidates, full histories",
        "",
        "| part | measure | value | target | verdict | load |",
        "|---|---|---|---|---|---:|",
        *[row.markdown() for row in rows],
        "",
        f"Result: **{'PASS' if result['ok'] else 'FAIL'}**"
        + (": " + "; ".join(result["failures"]) if result["failures"] else "")
        + f". Targets (reported, not failures): {'met' if result['targets_met'] else 'missed'}.",
        "",
    ]
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base", help="serving root laid out <model>/<version>/ (copied to a temp dir; never modified)")
    source.add_argument("--pipeline-root", help="a pipeline run directory: serves the newest WarmupRequests.<model>/warmed_model")
    parser.add_argument("--models", default="", help="comma-separated models to serve (default: the first one found)")
    parser.add_argument("--small", action="store_true",
                        help=f"the quick check: {SMALL['requests']} malformed requests, {SMALL['heavy']} of each heavy kind, "
                             f"{SMALL['clients']} clients, {SMALL['duration']:g} s soak")
    parser.add_argument("--requests", type=int, help=f"malformed requests in all, at least (default {FULL['requests']:,})")
    parser.add_argument("--clients", type=int,
                        help=f"clients of the soak and the largest throughput level (default {FULL['clients']})")
    parser.add_argument("--duration", type=float, help=f"seconds of the soak (default {FULL['duration']:g})")
    parser.add_argument("--level-seconds", type=float, help=f"seconds per throughput level (default {FULL['level_seconds']:g})")
    parser.add_argument("--settle-seconds", type=float, help=f"pause before reading the RSS (default {FULL['settle_seconds']:g})")
    parser.add_argument("--candidates", type=int, default=10, help="candidates per valid request (default 10, the demo's)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the server only, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="directory for reliability.json and reliability.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, value in (SMALL if args.small else FULL).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.candidates < 2:
        parser.error("--candidates must be at least 2 (ragged kinds drop one)")
    if any("=" not in item for item in args.server_env):
        parser.error(f"--server-env takes NAME=VALUE, got {args.server_env}")
    return args


def chosen_models(args) -> Dict[str, str]:
    """Model name -> the SavedModel directory to serve: --models, else the first one found."""
    found = serving_benchmark.source_models(args)
    return found if args.models else dict([next(iter(found.items()))])


@dataclasses.dataclass
class ModelSetup:
    """What the parts need of one served model."""

    name: str
    contract: client.ModelContract
    catalog: serving_benchmark.Catalog
    valid: ValidRequests
    pool: serving_benchmark.RequestPool  # valid serving_default requests of distinct users


def model_setup(address: str, base: str, name: str, version: int, args) -> ModelSetup:
    with grpc.insecure_channel(address) as channel:
        contract = grpc_client.fetch_contract(prediction_service_pb2_grpc.PredictionServiceStub(channel), name)
    spec = contract.spec
    rng = random.Random(f"{args.seed}-{name}")
    catalog = serving_benchmark.Catalog(os.path.join(base, name, str(version)), spec, rng)
    now = int(time.time())
    users = [serving_benchmark.user_json(catalog, spec, rng, args.candidates, spec.max_length, now) for _ in range(32)]
    pool = serving_benchmark.build_pool(contract, name, SERVING_DEFAULT, args.candidates, users)
    return ModelSetup(name, contract, catalog, valid_requests(contract, name, users[0]), pool)


class Run:
    """The benchmark's state: the server, the rows of the table and the failures."""

    def __init__(self, args, models: Dict[str, str], temp: str):
        self.args, self.temp = args, temp
        self.base = os.path.join(temp, "models")
        os.makedirs(self.base)
        self.versions = serving_benchmark.copy_model_base(models, self.base)
        self.rows: List[Row] = []
        self.failures: List[str] = []
        self.details: Dict[str, object] = {}
        self.server: Optional[serving_benchmark.Server] = None
        self.startup_seconds = 0.0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def start_server(self) -> None:
        started = time.perf_counter()
        extra_env = dict(item.split("=", 1) for item in self.args.server_env)
        self.server = serving_benchmark.Server(self.base, os.path.join(self.temp, "server.log"), False, 1.0, 8,
                                               MAX_BATCH_SIZE, start_timeout=900, extra_env=extra_env)
        self.startup_seconds = time.perf_counter() - started
        print(f"server up on {self.address} after {self.startup_seconds:.1f} s (pid {self.server.pid})", flush=True)

    def check_server_alive(self, after: str) -> bool:
        if self.server.process.poll() is None:
            return True
        self.failures.append(f"the server exited ({self.server.process.returncode}) during {after}")
        self.rows.append(Row("server", f"alive after {after}", f"exited {self.server.process.returncode}", "alive", False))
        print(self.server.log_tail(), file=sys.stderr)
        return False

    def add(self, rows: List[Row]) -> None:
        self.rows += rows
        for row in rows:
            print(row.markdown(), flush=True)
            if row.ok is False and not row.is_target:
                self.failures.append(f"{row.part}: {row.measure}: {row.value}")

    # -- the parts --
    def server_parts(self, models: Dict[str, str]) -> List[ModelSetup]:
        """Parts 1, 3 and 2 against the server, which is stopped after them."""
        try:
            self.start_server()
            setups = [model_setup(self.address, self.base, name, self.versions[name], self.args) for name in models]
            self.malformed_requests(setups)
            for setup in setups:
                for part in (self.throughput_levels, self.soak):
                    if self.server.process.poll() is None:
                        part(setup)
        finally:
            if self.server is not None:
                self.server.stop()
        return setups

    def malformed_requests(self, setups: List[ModelSetup]) -> None:
        args = self.args
        post_load = settled_rss(self.server.pid, args.settle_seconds)
        with RssSampler(self.server.pid) as sampler:
            for setup in setups:
                kinds = malformed_kinds(setup.valid, DEFAULT_MAX_MESSAGE_MB)
                counts = kind_counts(kinds, args.requests, args.heavy)
                print(f"\n== 1. {len(kinds)} kinds of malformed requests to {setup.name}, {sum(counts.values()):,} in all",
                      flush=True)
                corpus = run_corpus(self.address, kinds, counts, setup.pool)
                self.details.setdefault("corpus", {})[setup.name] = corpus_details(corpus, kinds, counts)
                self.add(corpus_rows(setup.name, corpus, kinds, counts))
                if not self.check_server_alive("the malformed requests"):
                    return
        rss = {"post_load": post_load, "peak": max(sampler.peak, post_load),
               "after_abuse": settled_rss(self.server.pid, args.settle_seconds), "settle_seconds": args.settle_seconds}
        self.details["rss_bytes"] = rss
        self.add(memory_rows(rss))

    def throughput_levels(self, setup: ModelSetup) -> None:
        levels = sorted({level for level in LEVELS if level < self.args.clients} | {self.args.clients})
        print(f"\n== 3. throughput of {setup.name} at {levels} clients", flush=True)
        rows = [serving_benchmark.measure_throughput(self.address, setup.pool, clients, self.args.level_seconds, self.server)
                for clients in levels]
        self.details.setdefault("throughput", {})[setup.name] = rows
        self.add(throughput_rows("3 throughput", setup.name, rows))
        self.check_server_alive("the throughput runs")

    def soak(self, setup: ModelSetup) -> None:
        print(f"\n== 2. soak of {setup.name}: {self.args.clients} clients, {self.args.duration:g} s, a version pushed at half time",
              flush=True)
        push = serving_benchmark.pusher(self.base, setup.name, self.versions)
        on_disk_at = []

        def swap():
            pushed = push()
            on_disk_at.append(time.perf_counter())
            return pushed

        with VersionWatcher(self.address, setup.name) as watcher:
            soak = serving_benchmark.measure_throughput(self.address, setup.pool, self.args.clients, self.args.duration,
                                                        self.server, swap)
        soak["swap"]["phases_s"] = swap_phases(on_disk_at[0], watcher.seen, soak["swap"])
        load = os.getloadavg()[0]
        idle_seconds = swap_without_traffic(self.address, setup.pool, push)
        soak["swap_without_traffic"] = {"seconds": None if idle_seconds is None else round(idle_seconds, 2),
                                      "load_1min": round(load, 2)}
        self.details.setdefault("soak", {})[setup.name] = soak
        self.add(soak_rows(setup.name, soak))
        self.check_server_alive("the soak")

    def batch_scoring(self, setup: ModelSetup, model_dir: str) -> None:
        print(f"\n== 4. batch scoring of a corrupted log with {setup.name}", flush=True)
        work = os.path.join(self.temp, f"scoring-{setup.name}")
        scoring = score_corrupted_log(model_dir, setup.contract.spec, setup.catalog, work, self.args.seed)
        self.details.setdefault("batch_scoring", {})[setup.name] = scoring
        self.add(scoring_rows(setup.name, scoring))


def main(argv=None) -> int:
    args = parse_args(argv)
    command = machine.command_line(argv)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    wall_start = time.perf_counter()
    facts = machine.machine_facts({"tensorflow": tf.__version__, "grpcio": grpc.__version__})
    models = chosen_models(args)
    print(f"models: {', '.join(f'{n} ({p})' for n, p in models.items())}; load average {facts['load_average_start']}", flush=True)
    temp = tempfile.mkdtemp(prefix="reliability-")
    try:
        run = Run(args, models, temp)
        served_versions = dict(run.versions)  # the soak pushes newer ones
        for setup in run.server_parts(models):  # then scoring, alone: one heavy process at a time
            run.batch_scoring(setup, os.path.join(run.base, setup.name, str(served_versions[setup.name])))
    finally:
        shutil.rmtree(temp, ignore_errors=True)

    result = {
        "command": command,
        "started_at": started_at,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "machine": facts,
        "load_average_end": machine.load_average(),
        "server": {"command": run.server.command if run.server else None, "startup_seconds": round(run.startup_seconds, 1),
                   "extra_env": args.server_env},
        "config": {key: getattr(args, key) for key in ("requests", "heavy", "clients", "duration", "level_seconds",
                                                       "settle_seconds", "candidates", "seed", "small")},
        "sources": {n: os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else p for n, p in models.items()},
        "table": [dataclasses.asdict(row) for row in run.rows],
        **run.details,
        "failures": run.failures,
        "targets_met": all(row.ok for row in run.rows if row.is_target),
        "ok": not run.failures,
    }
    markdown = render_markdown(result, run.rows)
    machine.save_results(args.output, "reliability", result, markdown)
    print()
    print(markdown)
    print(f"wrote {os.path.join(args.output, 'reliability.json')} and reliability.md")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
