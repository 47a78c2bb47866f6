"""The SavedModel carries its own feature spec: export writes it, the client, warmup and the server
read it, so a model trained at history length 20 is queried at 20 without a flag."""
import dataclasses
import json
import os
import shutil

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import grpc
import pytest
import tensorflow_transform as tft
from tensorflow_serving.apis import prediction_service_pb2_grpc

from contract.serving import FEATURE_SPEC_FILE, SERVING_RAW, WARMUP_FILE, read_feature_spec
from models import registry
from models.export import export_serving_model
from models.trainer import vocabulary_sizes
from serving import client, grpc_client, server, warmup
from serving.servable import Servable
from tests import model_harness as h
from tests import raw_data
from contract.features import ITEM_ID, LABEL, TIMESTAMP, USER_ID
from contract.feature_spec import FeatureSpec

TRAINED_LENGTH = 20  # configs/demo.yaml's sequences.max_length; the client used to guess 50
SPEC = dataclasses.replace(h.SPEC, max_length=TRAINED_LENGTH)
MODEL = "dnn"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tft_output = tft.TFTransformOutput(h.transform_dir(SPEC))
    model = registry.build(MODEL, SPEC, vocabulary_sizes(tft_output, SPEC))
    return export_serving_model(model, tft_output, SPEC, str(tmp_path_factory.mktemp("serving") / MODEL / "1"))


@pytest.fixture(scope="module")
def stub(model_dir):
    handle = server.serve(os.path.dirname(os.path.dirname(model_dir)), 0, poll_seconds=3600)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    handle.stop()


def test_export_writes_the_trained_feature_spec(model_dir):
    with open(os.path.join(model_dir, FEATURE_SPEC_FILE)) as handle:
        document = json.load(handle)
    assert document["spec"]["max_length"] == TRAINED_LENGTH
    assert document["spec"]["gap_buckets"] == SPEC.gap_buckets
    assert FeatureSpec.from_model(model_dir) == SPEC
    assert document["raw_features"][SPEC.history("click", ITEM_ID)] == {"dtype": "string", "sequence": True}
    assert read_feature_spec(model_dir) == document


def _request(clicks: int) -> dict:
    """One user with ``clicks`` clicks before the request (more than the trained length)."""
    events = [{ITEM_ID: f"i{k}", "category": "c", "brand": "b", TIMESTAMP: 1_000 + k, LABEL: 1} for k in range(clicks)]
    return {"user": {USER_ID: "u1", "gender": "F", "age": "30"}, TIMESTAMP: 10_000, "events": events,
            "candidates": [{ITEM_ID: "i1", "category": "c", "brand": "b"}, {ITEM_ID: "i2", "category": "c", "brand": "b"}]}


def test_the_client_queries_at_the_trained_length_without_a_flag(stub):
    contract = grpc_client.fetch_contract(stub, MODEL)  # no max_history
    assert contract.spec.max_length == TRAINED_LENGTH
    request = client.parse_user_request(_request(clicks=TRAINED_LENGTH + 15), contract.spec)
    predict = client.build_predict_request(contract, MODEL, SERVING_RAW, request)
    width = [d.size for d in predict.inputs[SPEC.history("click", ITEM_ID)].tensor_shape.dim]
    assert width == [2, TRAINED_LENGTH]
    scores, version = grpc_client.score_candidates(stub, contract, MODEL, SERVING_RAW, request)
    assert len(scores) == 2 and version == 1
    assert grpc_client.fetch_contract(stub, MODEL, max_history=5).spec.max_length == 5  # an explicit flag still wins


def test_warmup_requests_are_built_from_the_carried_spec(model_dir, tmp_path):
    examples = raw_data.raw_examples(SPEC, users=2, seed=3)[:2]
    serialized = [raw_data.to_tf_example({k: v for k, v in e.items() if k != LABEL}, SPEC) for e in examples]
    target = str(tmp_path / "warmed")
    shutil.copytree(model_dir, target)
    path = warmup.write_warmup_requests(target, MODEL, serialized)
    assert path == os.path.join(target, WARMUP_FILE) and os.path.getsize(path) > 0
    servable = Servable(MODEL, 1, target)
    servable.warm_up(max_batch_size=100)
    assert servable.warmup_count == 2 * 3  # serving_default, serving_raw, serving_candidates per example
