"""Scores one user's candidate items through TF Serving's gRPC API (``ctr-pipeline predict``).

Works against real TF Serving and against ``serving.server`` alike: it only uses the standard
``PredictionService`` calls: ``GetModelMetadata`` and the model's ``feature_spec`` signature for
the model's input contract (``fetch_contract``), then one ``Predict`` scoring all candidates of
the user. The request JSON and the PredictRequest built from it are ``serving.client``'s; the
command's options are in ``serving.cli_options``.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import datetime
import json
import sys
from typing import Dict, List, Mapping, Optional, Tuple, Union

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from contract.features import ITEM_ID, TIMESTAMP, USER_ID
from contract.serving import FEATURE_SPEC_OUTPUT, FEATURE_SPEC_SIGNATURE, OUTPUT_KEY, parse_feature_spec
from serving.cli_options import MB
from serving.client import (
    ContractError,
    ModelContract,
    RequestError,
    UserRequest,
    build_predict_request,
    contract_from_signatures,
    decode_json,
    parse_user_request,
)


# ---- the model's input contract -------------------------------------------------------------
def fetch_contract(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    model: str,
    max_history: Optional[int] = None,
    version: Optional[int] = None,
    timeout: float = 10.0,
) -> ModelContract:
    """Reads the model's signatures (GetModelMetadata) and the feature spec it carries (its
    ``feature_spec`` signature); ``max_history`` None keeps the model's trained history length."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    response = stub.GetModelMetadata(request, timeout=timeout)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    feature_spec = None
    if FEATURE_SPEC_SIGNATURE in signature_map.signature_def:
        spec_request = predict_pb2.PredictRequest()
        spec_request.model_spec.name = model
        spec_request.model_spec.signature_name = FEATURE_SPEC_SIGNATURE
        if response.model_spec.HasField("version"):  # the version whose signatures were just read
            spec_request.model_spec.version.value = response.model_spec.version.value
        answer = stub.Predict(spec_request, timeout=timeout)
        text = tf.make_ndarray(answer.outputs[FEATURE_SPEC_OUTPUT]).reshape(-1)[0]
        feature_spec = parse_feature_spec(text, f"model '{model}' signature '{FEATURE_SPEC_SIGNATURE}'")
    return contract_from_signatures(model, signature_map.signature_def, feature_spec, max_history)

# ---- scoring ----------------------------------------------------------------------------------
def score_candidates(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    contract: ModelContract,
    model: str,
    signature: str,
    request: UserRequest,
    version: Optional[int] = None,
    timeout: float = 10.0,
) -> Tuple[List[float], int]:
    """The candidates' scores (in candidate order) and the model version that answered."""
    response = stub.Predict(
        build_predict_request(contract, model, signature, request, version), timeout=timeout
    )
    scores = tf.make_ndarray(response.outputs[OUTPUT_KEY]).reshape(-1)
    if len(scores) != len(request.candidates):
        raise ContractError(
            f"model '{model}' returned {len(scores)} scores "
            f"for {len(request.candidates)} candidates"
        )
    return [float(s) for s in scores], response.model_spec.version.value


def predict_scores(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    model: str,
    signature: str,
    request_json: Union[str, Mapping],
    contract: Optional[ModelContract] = None,
    max_history: Optional[int] = None,
    timeout: float = 10.0,
) -> List[float]:
    """Scores of a user's candidates, in candidate order (fetches the contract unless given)."""
    if contract is None:
        contract = fetch_contract(stub, model, max_history, timeout=timeout)
    request = parse_user_request(request_json, contract.spec)
    return score_candidates(stub, contract, model, signature, request, timeout=timeout)[0]


def ranked(request: UserRequest, scores: List[float]) -> List[Tuple[Dict[str, str], float]]:
    """(candidate, score) pairs, best first; ties keep the request's order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [(request.candidates[i], scores[i]) for i in order]


# ---- command line -----------------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    """Prints the user's candidates ranked by score.

    Returns the exit code: 0, 1 (server or model error) or 2 (bad request file).
    """
    try:
        raw = decode_json(sys.stdin.read() if args.input == "-" else _read(args.input))
        limit = args.max_message_mb * MB  # the server's default limit unless told otherwise
        options = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        with grpc.insecure_channel(args.server, options=options) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            contract = fetch_contract(
                stub, args.model, args.max_history, args.model_version, args.timeout
            )
            request = parse_user_request(raw, contract.spec)
            scores, version = score_candidates(
                stub, contract, args.model, args.signature, request, args.model_version,
                args.timeout,
            )
    except RequestError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 2
    except ContractError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"error: {args.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "Concurrent RPC limit" in e.details():
            print("the server is busy: it has as many calls in flight as `ctr-pipeline serve --max-pending` "
                  "allows and refused this one at once; retry in a moment", file=sys.stderr)
        elif e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in e.details():
            print(f"the request is over a gRPC message size limit ('size vs. limit' above, in bytes): the "
                  f"server's is set by `ctr-pipeline serve --max-message-mb`, this client's is "
                  f"{args.max_message_mb} MB (--max-message-mb); or send fewer candidates", file=sys.stderr)
        return 1
    ranking = ranked(request, scores)
    if args.json:
        print(json.dumps({
            "model": args.model, "version": version, "signature": args.signature,
            USER_ID: request.user[USER_ID], TIMESTAMP: request.timestamp,
            "ranking": [{ITEM_ID: c[ITEM_ID], "score": s} for c, s in ranking],
        }, indent=2))
    else:
        when = datetime.datetime.fromtimestamp(request.timestamp, datetime.timezone.utc)
        print(f"model {args.model} version {version} ({args.signature}), "
              f"user {request.user[USER_ID]} at {when:%Y-%m-%d %H:%M:%S} UTC")
        print(f"{'rank':>4}  {'score':>8}  {ITEM_ID}")
        for rank, (candidate, score) in enumerate(ranking, start=1):
            print(f"{rank:>4}  {score:8.6f}  {candidate[ITEM_ID]}")
    return 0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise RequestError(f"cannot read: {e.strerror}") from e
