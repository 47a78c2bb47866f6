"""Serving benchmark: Predict latency, throughput and a hot swap under load, per pushed model.

    python benchmarks/serving.py --model-base SERVING_ROOT [--models dnn,din] [--duration 10]
                                 [--output benchmarks/results]
    python benchmarks/serving.py --pipeline-root runs/demo ...   # the models the Pusher would push

The models (the newest version of each) are copied to a temporary model base (the given one is
never touched) and served by ``ctr-pipeline serve`` in a subprocess on loopback, so client and
server do not share a GIL (``--in-process`` serves from this process instead). Requests are built
by the project's client (``serving.client``: contract from GetModelMetadata, user JSON ->
``parse_user_request`` -> ``build_predict_request``) from synthetic but realistic user JSON:
user and item attribute values come from the model's vocabulary assets where there are some,
each user has up to ``--max-history`` events per feedback type. Requests are serialized once and
replayed as bytes, so the latencies are round trips; building a request is timed separately.

Per model:
  * latency (one client, back to back): p50 / p99 / p99.9 for 1 and 100 candidates, through
    ``serving_default`` (serialized tf.Examples), ``serving_raw`` (raw tensors) and
    ``serving_candidates`` (the user once, the candidates as a batch);
  * where the time goes: client request building, the signature call alone (inputs decoded
    beforehand), the server's decoding and call (one graph), the server's whole Predict in this
    process, and for ``serving_default`` the ``transform_features`` signature (parse +
    transform, no model);
  * throughput at 1, 8 and 32 concurrent clients (threads with their own channels), requests/s
    and candidates/s, with the server's CPU time per request and the machine's idle CPU (on a
    shared machine: was the server short of CPU or of parallelism?);
  * a hot swap: in the middle of the run at the highest concurrency, version+1 is pushed (a copy
    of the served version, written as TFX's Pusher writes it: saved_model.pb last). The run
    reports when responses switched version and how many requests failed.

Writes ``serving.json`` and ``serving.md`` to ``--output`` and prints the tables. Exits 1 if any
request failed or the swap was not observed, 2 on a setup error. Batch-scoring throughput is
measured by ``benchmarks/batch_scoring.py``.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import collections
import dataclasses
import datetime
import glob
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from contract import serving as contract_serving  # noqa: E402
from serving import client, grpc_client  # noqa: E402
from contract.features import LABEL, TIMESTAMP  # noqa: E402
from contract.feature_spec import FeatureSpec  # noqa: E402

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
TARGETS_MS = {1: 10.0, 100: 30.0}  # p99 targets per candidate count (2-core machine)
# the configurations the targets apply to; serving_raw with 100 candidates (a copy of the user's
# histories per candidate: 440 KB of TensorProtos) is for information
TARGET_CONFIGS = {("serving_default", 1), ("serving_default", 100), ("serving_raw", 1),
                  ("serving_candidates", 1), ("serving_candidates", 100)}
LATENCY_CONFIGS = (("serving_default", 1), ("serving_default", 100), ("serving_raw", 1),
                   ("serving_raw", 100), ("serving_candidates", 1), ("serving_candidates", 100))
State = get_model_status_pb2.ModelVersionStatus.State


# ---- the model base -------------------------------------------------------------------------
def _versions(model_dir: str) -> List[int]:
    return contract_serving.version_dirs(model_dir)


def source_models(args) -> Dict[str, str]:
    """Model name -> the SavedModel directory to serve (the newest version)."""
    found: Dict[str, str] = {}
    if args.model_base:
        base = os.path.abspath(args.model_base)
        for name in sorted(os.listdir(base)):
            path = os.path.join(base, name)
            if name.startswith(".") or not os.path.isdir(path):
                continue
            versions = _versions(path)
            if versions:
                found[name] = os.path.join(path, str(versions[-1]))
    else:  # the newest warmed model of each WarmupRequests.<name> (what Pusher.<name> pushes)
        root = os.path.abspath(args.pipeline_root)
        for component in sorted(glob.glob(os.path.join(root, "WarmupRequests.*"))):
            name = os.path.basename(component).split(".", 1)[1]
            candidates = glob.glob(os.path.join(component, "warmed_model", "*", "Format-Serving",
                                                "saved_model.pb"))
            if candidates:
                newest = max(candidates, key=lambda p: int(p.split(os.sep)[-3]))
                found[name] = os.path.dirname(newest)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        missing = [m for m in wanted if m not in found]
        if missing:
            _setup_error(f"no servable model(s) {missing}; found {sorted(found)}")
        found = {m: found[m] for m in wanted}
    if not found:
        where = args.model_base or args.pipeline_root
        _setup_error(f"no model with a <version>/saved_model.pb found in {where}")
    return found


def _setup_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def copy_model_base(models: Dict[str, str], base: str) -> Dict[str, int]:
    """``<base>/<name>/<version>`` copies; keeps the source version number when there is one."""
    versions = {}
    for name, source in models.items():
        last = os.path.basename(source)
        version = int(last) if last.isdigit() else 1
        shutil.copytree(source, os.path.join(base, name, str(version)))
        versions[name] = version
    return versions


def push_version(base: str, name: str, version: int) -> Tuple[int, float]:
    """Copies ``<name>/<version>`` to ``<name>/<version+1>`` as TFX's Pusher writes a model:
    every file but saved_model.pb first, saved_model.pb last. Returns (new version, seconds)."""
    started = time.perf_counter()
    source = os.path.join(base, name, str(version))
    target = os.path.join(base, name, str(version + 1))
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    shutil.copy2(os.path.join(source, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
    return version + 1, time.perf_counter() - started


def pusher(base: str, name: str, versions: Dict[str, int]) -> Callable[[], Tuple[int, float]]:
    """The ``swap`` of ``measure_throughput``: pushes version+1 of model ``name`` (``push_version``)
    and records it in ``versions``."""
    def swap() -> Tuple[int, float]:
        new_version, copy_seconds = push_version(base, name, versions[name])
        versions[name] = new_version
        return new_version, copy_seconds

    return swap


# ---- the server -----------------------------------------------------------------------------
class Server:
    """``ctr-pipeline serve`` in a subprocess (default) or ``serving.server.serve`` in-process."""

    def __init__(self, base: str, log_path: str, in_process: bool, poll_seconds: float,
                 workers: int, max_batch_size: int, start_timeout: float,
                 extra_env: Optional[Dict[str, str]] = None):
        """``extra_env``: environment variables of the server subprocess only (e.g.
        MALLOC_ARENA_MAX), on top of this process's."""
        self.in_process = in_process
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self.handle = None
        if in_process:
            from serving import server

            self.handle = server.serve(base, 0, poll_seconds=poll_seconds,
                                       max_batch_size=max_batch_size, workers=workers)
            self.port = self.handle.port
            self.command = ["(in-process) serving.server.serve"]
            return
        self.command = [
            sys.executable, "-m", "pipeline.cli", "serve", "--model-base", base, "--port", "0",
            "--poll-seconds", str(poll_seconds), "--workers", str(workers),
            "--max-batch-size", str(max_batch_size),
        ]
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONUNBUFFERED="1", **(extra_env or {}))
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        self.port = self._wait_for_port(start_timeout)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.time() + timeout
        pattern = re.compile(r"serving \[.*\] on \S+:(\d+)")
        while time.time() < deadline:
            with open(self.log_path) as f:
                match = pattern.search(f.read())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> Optional[float]:
        return machine.process_cpu_seconds(self.process.pid) if self.process else None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self._log.close()


# ---- realistic users ------------------------------------------------------------------------
class Catalog:
    """Attribute values of users and items: the model's vocabulary assets, else synthetic."""

    def __init__(self, saved_model_dir: str, spec: FeatureSpec, rng: random.Random,
                 num_items: int = 2000):
        self.sources: Dict[str, str] = {}
        self.values = {
            field: self._vocabulary(saved_model_dir, spec, field)
            for field in spec.user_fields + spec.item_fields
        }
        item_ids = self.values["item_id"][:num_items]
        self.items = [
            {"item_id": item_id, **{f: rng.choice(self.values[f]) for f in spec.item_fields[1:]}}
            for item_id in item_ids
        ]

    def _vocabulary(self, saved_model_dir: str, spec: FeatureSpec, field: str) -> List[str]:
        path = os.path.join(saved_model_dir, "assets", spec.vocabulary_name(field))
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                values = [line.rstrip("\n") for line in f if line.strip()]
            if values:
                self.sources[field] = "vocabulary"
                return values
        self.sources[field] = "synthetic"
        count = 5000 if field in ("user_id", "item_id") else 20
        return [f"{field}_{k}" for k in range(count)]


def user_json(catalog: Catalog, spec: FeatureSpec, rng: random.Random, candidates: int,
              max_history: int, now: int) -> str:
    """One user's request JSON: 2..6 x ``max_history`` past events (so most feedback types
    reach ``max_history`` events, dislikes often fewer) and ``candidates`` candidates."""
    user = {f: rng.choice(catalog.values[f]) for f in spec.user_fields}
    events = []
    for _ in range(rng.randint(2 * max_history, 6 * max_history)):
        item = rng.choice(catalog.items)
        clicked = int(rng.random() < 0.5)
        events.append({
            **item,
            TIMESTAMP: now - rng.randint(60, 60 * 86400),
            "clicked": clicked,
            "liked": int(clicked and rng.random() < 0.4),
            "disliked": int(not clicked and rng.random() < 0.25),
        })
    chosen = rng.sample(catalog.items, candidates) if candidates <= len(catalog.items) else [
        rng.choice(catalog.items) for _ in range(candidates)]
    return json.dumps({"user": user, TIMESTAMP: now, "events": events, "candidates": chosen})


@dataclasses.dataclass
class RequestPool:
    signature: str
    candidates: int
    requests: List[bytes]
    build_ms: List[float]  # JSON -> parse_user_request -> build_predict_request -> bytes
    history_lengths: Dict[str, float]

    @property
    def mean_bytes(self) -> float:
        return float(np.mean([len(r) for r in self.requests]))


def build_pool(contract: client.ModelContract, model: str, signature: str, candidates: int,
               users: List[str]) -> RequestPool:
    requests, build_ms = [], []
    lengths: Dict[str, List[int]] = {fb: [] for fb in contract.spec.feedback_types}
    for text in users:
        started = time.perf_counter()
        request = client.parse_user_request(text, contract.spec)
        predict = client.build_predict_request(contract, model, signature, request)
        data = predict.SerializeToString()
        build_ms.append((time.perf_counter() - started) * 1000)
        requests.append(data)
        shared = client.user_features(contract.spec, request)
        for fb in lengths:
            lengths[fb].append(len(shared[contract.spec.history_timestamp(fb)]))
    return RequestPool(signature, candidates, requests, build_ms,
                       {fb: float(np.mean(v)) for fb, v in lengths.items()})


# ---- measuring ------------------------------------------------------------------------------
def percentiles(ms: List[float]) -> Dict[str, float]:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {
        "n": int(a.size),
        "mean": round(float(a.mean()), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "p99.9": round(float(np.percentile(a, 99.9)), 3),
        "max": round(float(a.max()), 3),
    }


def predict_call(channel: grpc.Channel) -> Callable:
    """Predict taking an already serialized PredictRequest (bytes)."""
    return channel.unary_unary(PREDICT_METHOD, request_serializer=None,
                               response_deserializer=predict_pb2.PredictResponse.FromString)


def check_response(response: predict_pb2.PredictResponse, candidates: int) -> int:
    scores = response.outputs[contract_serving.OUTPUT_KEY].float_val
    if len(scores) != candidates:
        raise AssertionError(f"{len(scores)} scores for {candidates} candidates")
    return response.model_spec.version.value


def measure_latency(address: str, pool: RequestPool, duration: float, warmup: int = 20,
                    min_requests: int = 50) -> Dict[str, object]:
    """One client, back-to-back Predicts for ``duration`` seconds (after ``warmup`` calls)."""
    with grpc.insecure_channel(address) as channel:
        call = predict_call(channel)
        for i in range(warmup):
            check_response(call(pool.requests[i % len(pool.requests)], timeout=30), pool.candidates)
        ms, failures, errors = [], 0, []
        load = os.getloadavg()[0]
        deadline = time.perf_counter() + duration
        i = 0
        while time.perf_counter() < deadline or len(ms) < min_requests:
            data = pool.requests[i % len(pool.requests)]
            i += 1
            started = time.perf_counter()
            try:
                response = call(data, timeout=30)
            except grpc.RpcError as e:
                failures += 1
                errors.append(f"{e.code().name}: {e.details()}"[:300])
                if failures > 20:
                    break
                continue
            ms.append((time.perf_counter() - started) * 1000)
            check_response(response, pool.candidates)
    return {**percentiles(ms), "failures": failures, "errors": errors[:5],
            "load_1min": round(load, 2)}


@dataclasses.dataclass
class Outcome:
    end: float  # perf_counter at the response
    ms: float
    version: Optional[int]  # None: failed
    error: str = ""
    code: str = ""  # a failure's gRPC status name, WRONG_ANSWER for an answer of the wrong size


def measure_throughput(address: str, pool: RequestPool, clients: int, duration: float,
                       server: Server, swap: Optional[Callable[[], Tuple[int, float]]] = None,
                       swap_timeout: float = 180.0) -> Dict[str, object]:
    """``clients`` threads with their own channels, back to back, for ``duration`` seconds.

    With ``swap``, it is called at half time (it pushes the new version and returns
    (version, copy seconds)); the run goes on until responses come from the new version
    (at most ``swap_timeout`` s) and one more second.
    """
    channels = [grpc.insecure_channel(address) for _ in range(clients)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    calls = [predict_call(c) for c in channels]
    for call in calls:  # one warm call each: connections up, server threads started
        check_response(call(pool.requests[0], timeout=30), pool.candidates)
    outcomes: List[List[Outcome]] = [[] for _ in range(clients)]
    stop = threading.Event()
    start_barrier = threading.Barrier(clients + 1)

    def run(k: int) -> None:
        call, mine = calls[k], outcomes[k]
        i = k * 7
        start_barrier.wait()
        while not stop.is_set():
            data = pool.requests[i % len(pool.requests)]
            i += 1
            started = time.perf_counter()
            try:
                response = call(data, timeout=60)
                version = check_response(response, pool.candidates)
                now = time.perf_counter()
                mine.append(Outcome(now, (now - started) * 1000, version))
            except (grpc.RpcError, AssertionError) as e:
                now = time.perf_counter()
                code = e.code().name if isinstance(e, grpc.RpcError) else "WRONG_ANSWER"
                text = f"{code}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
                mine.append(Outcome(now, (now - started) * 1000, None, text[:300], code))

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    load = os.getloadavg()[0]
    cpu_before, own_before, machine_before = (server.cpu_seconds(), time.process_time(),
                                              machine.cpu_times())
    start_barrier.wait()
    t0 = time.perf_counter()
    swap_info: Dict[str, object] = {}
    if swap is None:
        time.sleep(duration)
    else:
        time.sleep(duration / 2)
        old_version = _latest_version(outcomes)
        pushed_at = time.perf_counter()
        new_version, copy_seconds = swap()
        swap_info = {"from_version": old_version, "to_version": new_version,
                     "pushed_at_s": round(pushed_at - t0, 3),
                     "copy_seconds": round(copy_seconds, 3)}
        deadline = pushed_at + swap_timeout
        seen = None
        while time.perf_counter() < deadline:
            seen = _first_response_of(outcomes, new_version)
            if seen is not None:
                break
            time.sleep(0.05)
        if seen is not None:
            remaining = max(t0 + duration, seen + 1.0) - time.perf_counter()
            time.sleep(max(0.0, remaining))
        swap_info.update({
            "observed": seen is not None,
            "first_new_response_s": round(seen - t0, 3) if seen is not None else None,
            "push_to_new_version_s": round(seen - pushed_at, 3) if seen is not None else None,
        })
    stop.set()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - t0
    cpu_after, own_after, machine_after = server.cpu_seconds(), time.process_time(), machine.cpu_times()
    for channel in channels:
        channel.close()

    flat = [o for mine in outcomes for o in mine]
    ok = [o for o in flat if o.version is not None]
    failed = [o for o in flat if o.version is None]
    result: Dict[str, object] = {
        "clients": clients,
        "candidates_per_request": pool.candidates,
        "signature": pool.signature,
        "seconds": round(elapsed, 2),
        "requests": len(ok),
        "failures": len(failed),
        "failures_by_code": dict(sorted(collections.Counter(o.code for o in failed).items())),
        "errors": sorted({o.error for o in failed})[:5],
        "requests_per_s": round(len(ok) / elapsed, 1),
        "candidates_per_s": round(len(ok) * pool.candidates / elapsed, 1),
        "latency_ms": percentiles([o.ms for o in ok]),
        "load_1min": round(load, 2),
    }
    if cpu_before is not None and cpu_after is not None and ok:
        result["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) * 1000 / len(ok), 2)
        result["server_cpu_cores_busy"] = round((cpu_after - cpu_before) / elapsed, 2)
    if machine_before is not None and machine_after is not None:
        total = machine_after[1] - machine_before[1]
        if total > 0:  # idle CPU of the machine: is the server short of CPU or of parallelism?
            result["machine_idle_percent"] = round(
                100 * (machine_after[0] - machine_before[0]) / total, 1)
    if ok:
        result["client_cpu_ms_per_request"] = round((own_after - own_before) * 1000 / len(ok), 2)
    if swap is not None:
        versions: Dict[int, int] = {}
        for o in ok:
            versions[o.version] = versions.get(o.version, 0) + 1
        swap_info["responses_per_version"] = {str(v): n for v, n in sorted(versions.items())}
        seen_abs = (t0 + swap_info["first_new_response_s"]) if swap_info["observed"] else None
        if seen_abs is not None:
            # once a response came from the new version, did any come from the old one after it?
            # (allowed: requests that started before the swap finish on the old version)
            pushed_abs = t0 + swap_info["pushed_at_s"]
            window = [o.ms for o in ok if pushed_abs <= o.end <= seen_abs + 1.0]
            swap_info["latency_ms_during_swap"] = percentiles(window)
            swap_info["old_version_responses_after_switch"] = sum(
                1 for o in ok if o.version == swap_info["from_version"] and o.end > seen_abs + 1.0
            )
        swap_info["failures"] = len(failed)
        result["swap"] = swap_info
    return result


def _latest_version(outcomes: List[List[Outcome]]) -> Optional[int]:
    versions = [o.version for mine in outcomes for o in mine[-3:] if o.version is not None]
    return max(versions) if versions else None


def _first_response_of(outcomes: List[List[Outcome]], version: int) -> Optional[float]:
    ends = [o.end for mine in outcomes for o in list(mine) if o.version == version]
    return min(ends) if ends else None


def model_status(address: str, model: str) -> Dict[str, str]:
    with grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        response = stub.GetModelStatus(request, timeout=10)
    return {str(s.version): State.Name(s.state) for s in response.model_version_status}


# ---- where the time goes --------------------------------------------------------------------
def breakdown(saved_model_dir: str, model: str, version: int, contract: client.ModelContract,
              pools: List[RequestPool], users: Dict[int, List[str]],
              rtt_p50: Dict[Tuple[str, int], float], seconds: float) -> Dict[str, object]:
    """Medians of the client's and the server's steps, run in this process on the same
    SavedModel while the server is idle. The steps of one configuration are interleaved
    (round robin) so that load from other jobs on the machine spreads over all of them."""
    from serving.request_tensors import serialized_inputs
    from serving.servable import Servable, predict

    started = time.perf_counter()
    servable = Servable(model, version, saved_model_dir)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    servable.warm_up(10**6)
    warmup_seconds = time.perf_counter() - started
    transform = servable.signatures.get("transform_features")
    transform_input = next(iter(transform.structured_input_signature[1])) if transform else None
    rows = []
    for pool in pools:
        text = users[pool.candidates][0]
        data = pool.requests[0]
        function = servable.signatures[pool.signature]
        specs = function.structured_input_signature[1]
        inputs = _decode(data, specs)
        steps: Dict[str, Callable[[], object]] = {
            "client_build": lambda: client.build_predict_request(
                contract, model, pool.signature, client.parse_user_request(text, contract.spec)
            ).SerializeToString(),
            "decode_and_call": lambda: servable.call_from_protos(
                pool.signature, serialized_inputs(predict_pb2.PredictRequest.FromString(data), specs))["probability"].numpy(),
            "signature_call": lambda: function(**inputs)["probability"].numpy(),
            "server_predict_in_process": lambda: predict(
                servable, predict_pb2.PredictRequest.FromString(data), 10**6),
        }
        if pool.signature == "serving_default" and transform is not None:
            # transform_features parses the label too: append a "clicked" feature to every
            # example (concatenated serialized protos merge)
            label = tf.train.Example()
            label.features.feature[LABEL].int64_list.value.append(0)
            labelled = tf.constant([e + label.SerializeToString()
                                    for e in inputs[next(iter(specs))].numpy()])
            steps["parse_and_transform_only"] = lambda: [
                v.numpy() for v in transform(**{transform_input: labelled}).values()]
        times: Dict[str, List[float]] = {name: [] for name in steps}
        for step in steps.values():
            for _ in range(3):
                step()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times["signature_call"]) < 15:
            for name, step in steps.items():
                t = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - t) * 1000)
        row: Dict[str, object] = {"signature": pool.signature, "candidates": pool.candidates,
                                  "request_kb": round(len(data) / 1024, 1),
                                  "rounds": len(times["signature_call"])}
        for name, values in times.items():
            row[f"{name}_ms"] = round(float(np.median(values)), 3)
            row[f"{name}_min_ms"] = round(float(np.min(values)), 3)
        rtt = rtt_p50.get((pool.signature, pool.candidates))
        if rtt is not None:
            row["grpc_rtt_p50_ms"] = rtt
            row["rtt_minus_signature_call_ms"] = round(rtt - row["signature_call_ms"], 3)
        if "parse_and_transform_only_ms" in row:
            row["model_only_ms_estimate"] = round(
                row["signature_call_ms"] - row["parse_and_transform_only_ms"], 3)
        rows.append(row)
    servable.unload()
    return {"load_seconds": round(load_seconds, 2), "warmup_seconds": round(warmup_seconds, 2),
            "warmup_requests": servable.warmup_count, "rows": rows}


def grpc_floor(address: str, model: str, duration: float) -> Dict[str, object]:
    """Round trips of ModelService/GetModelStatus (no TensorFlow work): the gRPC + scheduling
    floor of this machine under its current load."""
    with grpc.insecure_channel(address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = model
        for _ in range(20):
            stub.GetModelStatus(request, timeout=10)
        ms = []
        load = os.getloadavg()[0]
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline or len(ms) < 100:
            t = time.perf_counter()
            stub.GetModelStatus(request, timeout=10)
            ms.append((time.perf_counter() - t) * 1000)
    return {**percentiles(ms), "load_1min": round(load, 2)}


def _decode(data: bytes, specs) -> Dict[str, tf.Tensor]:
    """PredictRequest bytes -> input tensors, to time the signature call alone."""
    request = predict_pb2.PredictRequest.FromString(data)
    return {n: tf.constant(tf.make_ndarray(request.inputs[n]), dtype=specs[n].dtype)
            for n in specs}



# ---- reporting ------------------------------------------------------------------------------
def render_markdown(result: Dict[str, object]) -> str:
    m = result["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"`{result['command']}`",
        "",
        f"- started {result['started_at']}, took {result['wall_seconds']:.0f} s; "
        f"server: {result['server']['mode']} ({result['server']['workers']} gRPC workers), "
        f"up {result['server']['startup_seconds']} s after start",
        f"- machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, "
        f"{m['memory_gb']} GB; load average at start {m['load_average_start']}, "
        f"at end {result['load_average_end']} (shared machine: other jobs were running)",
        f"- TensorFlow {m['tensorflow']}, grpcio {m['grpcio']}, Python {m['python']}, "
        f"commit {str(m['git_commit'])[:10]}{' (dirty tree)' if m['git_dirty'] else ''}",
        f"- requests: {result['config']['distinct_users']} users per configuration, up to "
        f"{result['config']['max_history']} events per feedback type; built by serving.client, "
        "replayed pre-serialized (latency = gRPC round trip; building a request from the "
        "user JSON is timed separately: 'client build', median of the breakdown below)",
        f"- targets: p99 <= {TARGETS_MS[1]:g} ms (1 candidate), <= {TARGETS_MS[100]:g} ms "
        "(100 candidates), for serving_default and serving_candidates, and for serving_raw with 1 candidate",
    ]
    for name, r in result["models"].items():
        history = ", ".join(f"{fb} {n:.0f}" for fb, n in r["mean_history_lengths"].items())
        vocab = sorted(f for f, src in r["value_sources"].items() if src == "vocabulary")
        lines.append(f"- {name}: {result['config']['sources'][name]}; mean history lengths "
                     f"{history}; values from the vocabularies of {', '.join(vocab) or 'none'}")
    lines += [
        "",
        "## Latency (one client, back to back)",
        "",
        "| model | signature | candidates | request KB | n | p50 ms | p99 ms | p99.9 ms | "
        "target p99 | client build ms | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    f = result["grpc_floor_ms"]
    if f:
        lines.append(f"| (floor: GetModelStatus, no TF) | - | - | - | {f['n']} | {f['p50']:.2f} | "
                     f"{f['p99']:.2f} | {f['p99.9']:.2f} | | | {f['load_1min']} |")
    for name, r in result["models"].items():
        built = {(b["signature"], b["candidates"]): b["client_build_ms"]
                 for b in r["breakdown"]["rows"]}
        for row in r["latency"]:
            build_ms = built.get((row["signature"], row["candidates"]), row["client_build_ms_p50"])
            target = TARGETS_MS.get(row["candidates"])
            verdict = "(info)"
            if (row["signature"], row["candidates"]) in TARGET_CONFIGS:
                verdict = f"{'ok' if row['p99'] <= target else 'MISS'} (<= {target:g})"
            lines.append(
                f"| {name} | {row['signature']} | {row['candidates']} | {row['request_kb']} | "
                f"{row['n']} | {row['p50']:.2f} | {row['p99']:.2f} | {row['p99.9']:.2f} | "
                f"{verdict} | {build_ms:.2f} | {row['load_1min']} |")
    lines += [
        "",
        "## Throughput (N clients, each its own channel, back to back)",
        "",
        "| model | clients | candidates/request | requests/s | candidates/s | p50 ms | p99 ms | "
        "server CPU ms/request | server cores busy | machine idle % | failures | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["models"].items():
        for row in r["throughput"]:
            lat = row["latency_ms"]
            swap = " (swap)" if "swap" in row else ""
            lines.append(
                f"| {name} | {row['clients']}{swap} | {row['candidates_per_request']} | "
                f"{row['requests_per_s']} | {row['candidates_per_s']} | {lat.get('p50', 0):.2f} | "
                f"{lat.get('p99', 0):.2f} | {row.get('server_cpu_ms_per_request', '-')} | "
                f"{row.get('server_cpu_cores_busy', '-')} | "
                f"{row.get('machine_idle_percent', '-')} | "
                f"{row['failures']} | {row['load_1min']} |")
    lines += ["", "## Hot swap under load", ""]
    for name, r in result["models"].items():
        s = r["swap"]
        during = s.get("latency_ms_during_swap", {})
        lines.append(
            f"- {name}: pushed version {s['to_version']} at {s['pushed_at_s']} s into the "
            f"{s['clients']}-client run; "
            + (f"responses switched {s['from_version']} -> {s['to_version']} "
               f"{s['push_to_new_version_s']} s after the push" if s["observed"]
               else "**the new version was never served**")
            + f"; responses per version {s['responses_per_version']}; "
            f"**failed requests: {s['failures']}**; p99 during the swap "
            f"{during.get('p99', float('nan')):.1f} ms (n={during.get('n', 0)}); "
            f"status after: {s.get('status_after')}; first serving_raw calls on the new "
            f"version: {s.get('serving_raw_first_calls_after_swap_ms')} ms")
    lines += [
        "",
        "## Where the time goes (ms, median (min), in this process on the same SavedModel, "
        "server idle)",
        "",
        "| model | signature | candidates | client build | signature call | decode + call (server) | "
        "parse+transform only | model only (est.) | server Predict in-process | gRPC RTT p50 | "
        "RTT - signature call |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["models"].items():
        for row in r["breakdown"]["rows"]:
            def cell(key):
                value = row.get(key)
                if not isinstance(value, (int, float)):
                    return "-"
                least = row.get(key.replace("_ms", "_min_ms"))
                return f"{value:.2f}" + (f" ({least:.2f})" if least is not None else "")

            lines.append(
                f"| {name} | {row['signature']} | {row['candidates']} | "
                f"{cell('client_build_ms')} | {cell('signature_call_ms')} | "
                f"{cell('decode_and_call_ms')} | {cell('parse_and_transform_only_ms')} | "
                f"{cell('model_only_ms_estimate')} | {cell('server_predict_in_process_ms')} | "
                f"{cell('grpc_rtt_p50_ms')} | {cell('rtt_minus_signature_call_ms')} |")
    lines.append("")
    for name, r in result["models"].items():
        b = r["breakdown"]
        lines.append(f"- {name}: loading the SavedModel takes {b['load_seconds']} s and its "
                     f"{b['warmup_requests']} warmup requests {b['warmup_seconds']} s "
                     "(in this process, server idle)")
    lines += ["", f"Result: **{'PASS' if result['ok'] else 'FAIL'}** "
              f"(failed requests: {result['failed_requests']}, swaps observed: "
              f"{result['swaps_observed']}/{len(result['models'])}); latency targets met: "
              f"{result['targets_met']}", ""]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-base", help="serving root laid out <model>/<version>/ "
                        "(copied to a temp dir; never modified)")
    source.add_argument("--pipeline-root", help="a pipeline run directory (e.g. runs/demo): "
                        "serves the newest WarmupRequests.<model>/warmed_model of each model")
    parser.add_argument("--models", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per measurement (each latency config and each "
                             "concurrency level; default 10)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"),
                        help="directory for serving.json and serving.md")
    parser.add_argument("--concurrency", default="1,8,32", help="client counts (default 1,8,32)")
    parser.add_argument("--throughput-candidates", type=int, default=100,
                        help="candidates per request in the throughput runs (default 100)")
    parser.add_argument("--max-history", type=int, default=50,
                        help="events per feedback type at most (the client's default: 50)")
    parser.add_argument("--distinct-users", type=int, default=32,
                        help="distinct user requests per configuration (default 32)")
    parser.add_argument("--breakdown-seconds", type=float, default=None,
                        help="seconds per step of the time breakdown (default duration/5)")
    parser.add_argument("--in-process", action="store_true",
                        help="serve from this process (shares the GIL with the clients)")
    parser.add_argument("--server-workers", type=int, default=8,
                        help="gRPC worker threads of the server (default 8, its default)")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="the server's version poll interval (default 1, its default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp model base")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = machine.command_line(argv)
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    wall_start = time.perf_counter()
    facts = machine.machine_facts({"tensorflow": tf.__version__, "grpcio": grpc.__version__})
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    models = source_models(args)
    print(f"models: {', '.join(f'{n} ({p})' for n, p in models.items())}", flush=True)
    print(f"load average at start: {facts['load_average_start']} on {facts['cpu_count']} CPUs",
          flush=True)

    temp = tempfile.mkdtemp(prefix="serving-bench-")
    base = os.path.join(temp, "models")
    os.makedirs(base)
    versions = copy_model_base(models, base)
    server = None
    floor: Dict[str, object] = {}
    startup_seconds = 0.0
    results: Dict[str, Dict[str, object]] = {}
    try:
        print(f"starting the server on {base} ...", flush=True)
        t = time.perf_counter()
        server = Server(base, os.path.join(temp, "server.log"), args.in_process,
                        args.poll_seconds, args.server_workers, 1000, start_timeout=600)
        startup_seconds = time.perf_counter() - t
        address = f"127.0.0.1:{server.port}"
        print(f"server up on {address} after {startup_seconds:.1f} s", flush=True)
        floor = grpc_floor(address, next(iter(models)), min(args.duration, 5.0))
        print(f"gRPC floor (GetModelStatus): p50 {floor['p50']:.2f} p99 {floor['p99']:.2f} "
              f"p99.9 {floor['p99.9']:.2f} ms", flush=True)
        for name in models:
            results[name] = benchmark_model(args, address, base, name, versions, levels, server)
    finally:
        if server is not None:
            server.stop()
        if not args.keep_temp:
            shutil.rmtree(temp, ignore_errors=True)

    failed = sum(t["failures"] for r in results.values() for t in r["throughput"]) + sum(
        row["failures"] for r in results.values() for row in r["latency"])
    swaps = sum(1 for r in results.values() if r["swap"]["observed"])
    targets_met = all(row["p99"] <= TARGETS_MS[row["candidates"]]
                      for r in results.values() for row in r["latency"]
                      if (row["signature"], row["candidates"]) in TARGET_CONFIGS)
    result = {
        "command": command,
        "started_at": started_at,
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "machine": facts,
        "load_average_end": machine.load_average(),
        "server": {"mode": "in-process" if args.in_process else "subprocess (ctr-pipeline serve)",
                   "command": server.command if server else None, "workers": args.server_workers,
                   "poll_seconds": args.poll_seconds,
                   "startup_seconds": round(startup_seconds, 1)},
        "config": {"duration": args.duration, "concurrency": levels,
                   "throughput_candidates": args.throughput_candidates,
                   "max_history": args.max_history, "distinct_users": args.distinct_users,
                   "seed": args.seed,
                   "sources": {n: os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else p
                               for n, p in models.items()}},
        "targets_p99_ms": {f"{sig}/{c}": TARGETS_MS[c] for sig, c in sorted(TARGET_CONFIGS)},
        "grpc_floor_ms": floor,
        "models": results,
        "failed_requests": failed,
        "swaps_observed": swaps,
        "targets_met": targets_met,
        "ok": failed == 0 and swaps == len(results),
    }
    markdown = render_markdown(result)
    machine.save_results(args.output, "serving", result, markdown)
    print()
    print(markdown)
    print(f"wrote {os.path.join(args.output, 'serving.json')} and serving.md")
    return 0 if result["ok"] else 1


def benchmark_model(args, address: str, base: str, name: str, versions: Dict[str, int],
                    levels: List[int], server: Server) -> Dict[str, object]:
    print(f"\n== {name} (version {versions[name]})", flush=True)
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        contract = grpc_client.fetch_contract(stub, name, args.max_history)
    spec = contract.spec
    saved_model_dir = os.path.join(base, name, str(versions[name]))
    rng = random.Random(f"{args.seed}-{name}")
    catalog = Catalog(saved_model_dir, spec, rng)
    now = int(time.time())
    candidate_counts = sorted({c for _, c in LATENCY_CONFIGS} | {args.throughput_candidates})
    users = {c: [user_json(catalog, spec, rng, c, args.max_history, now)
                 for _ in range(args.distinct_users)] for c in candidate_counts}
    pools = {(sig, c): build_pool(contract, name, sig, c, users[c])
             for sig in contract_serving.PREDICTION_SIGNATURES for c in candidate_counts}
    history = pools[("serving_default", candidate_counts[0])].history_lengths
    print(f"contract: user fields {spec.user_fields}, item fields {spec.item_fields}, feedback "
          f"{spec.feedback_types}; mean history lengths {history}", flush=True)

    latency, rtt_p50 = [], {}
    for signature, candidates in LATENCY_CONFIGS:
        pool = pools[(signature, candidates)]
        row = measure_latency(address, pool, args.duration)
        row.update({"signature": signature, "candidates": candidates,
                    "request_kb": round(pool.mean_bytes / 1024, 1),
                    "client_build_ms_p50": round(float(np.median(pool.build_ms)), 3),
                    "client_build_ms_max": round(float(np.max(pool.build_ms)), 3)})
        latency.append(row)
        rtt_p50[(signature, candidates)] = row.get("p50")
        print(f"latency {signature:15s} {candidates:3d} cand: p50 {row['p50']:.2f} "
              f"p99 {row['p99']:.2f} p99.9 {row['p99.9']:.2f} ms (n={row['n']}, "
              f"build {row['client_build_ms_p50']:.2f} ms, load {row['load_1min']})", flush=True)

    seconds = args.breakdown_seconds if args.breakdown_seconds is not None else args.duration / 2
    times = breakdown(saved_model_dir, name, versions[name], contract,
                      [pools[c] for c in LATENCY_CONFIGS], users, rtt_p50, seconds)
    print(f"in-process load {times['load_seconds']} s + warmup {times['warmup_seconds']} s",
          flush=True)
    for row in times["rows"]:
        print("breakdown", json.dumps(row), flush=True)

    throughput = []
    pool = pools[("serving_default", args.throughput_candidates)]
    for clients in levels:
        swap = pusher(base, name, versions) if clients == levels[-1] else None
        row = measure_throughput(address, pool, clients, args.duration, server, swap)
        throughput.append(row)
        print(f"throughput {clients:2d} clients: {row['requests_per_s']} req/s, "
              f"{row['candidates_per_s']} cand/s, p99 {row['latency_ms'].get('p99')} ms, "
              f"failures {row['failures']}, server CPU "
              f"{row.get('server_cpu_ms_per_request')} ms/req", flush=True)
    swap_row = throughput[-1]["swap"]
    swap_row["clients"] = levels[-1]
    deadline = time.time() + 30
    status = model_status(address, name)
    while time.time() < deadline and status.get(str(swap_row["from_version"])) not in ("END", None):
        time.sleep(0.2)
        status = model_status(address, name)
    swap_row["status_after"] = status
    # the warmup records cover every prediction signature: the first serving_raw calls of the
    # new version show whether that held
    with grpc.insecure_channel(address) as channel:
        call = predict_call(channel)
        raw = pools[("serving_raw", 1)].requests[0]
        firsts = []
        for _ in range(3):
            t = time.perf_counter()
            check_response(call(raw, timeout=120), 1)
            firsts.append(round((time.perf_counter() - t) * 1000, 1))
    swap_row["serving_raw_first_calls_after_swap_ms"] = firsts
    print(f"swap: {json.dumps(swap_row)}", flush=True)
    return {
        "version": swap_row["from_version"],
        "contract": {"user_fields": spec.user_fields, "item_fields": spec.item_fields,
                     "feedback_types": spec.feedback_types,
                     "examples_input": contract.examples_input},
        "value_sources": catalog.sources,
        "mean_history_lengths": history,
        "latency": latency,
        "breakdown": times,
        "throughput": throughput,
        "swap": swap_row,
    }


if __name__ == "__main__":
    sys.exit(main())
