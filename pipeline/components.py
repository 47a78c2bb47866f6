"""The project's own TFX components (Python-function components, tracked in ML Metadata).

- ``SequenceExampleGen``: logs -> raw tf.Examples with behaviour histories, split
  train/eval/test, plus the quarantine and the row accounting (Beam, ``ingest.sequences``).
- ``FeatureSpecSchemaGen``: the raw schema derived from the feature spec (``transforms.schema``).
- ``AnomalyGate``: stops the run before Transform/Trainer when ExampleValidator found anomalies.
- ``WarmupRequests``: the trained model plus TF Serving warmup requests from real examples.
- ``ModelsConfig``: after a push, TF Serving's ``models.config`` listing every pushed model.
- ``ThresholdCheck``: fails loudly when a blessing threshold names a metric that was never
  computed, or when there is no threshold (TFMA would only decline to bless); says which metric
  is nan or infinite when that refused the blessing.
"""
import hashlib
import json
import math
import os
from typing import TypedDict

import apache_beam as beam
import tensorflow as tf
from tfx.dsl.component.experimental.annotations import (
    BeamComponentParameter,
    InputArtifact,
    OutputArtifact,
    Parameter,
)
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.common import resolver
from tfx.types import artifact, standard_artifacts
from tfx.types.standard_artifact_utils import encode_split_names

from pipeline.metrics import NON_FINITE_WHY, metric_label

COUNTS_FILE = "counts.json"


class Quarantine(artifact.Artifact):
    """Log rows that could not be used, as JSON lines with their reason, plus counts.json."""

    TYPE_NAME = "pipeline.Quarantine"  # KFP v2 wants "<module>.<Class>" and imports it by that path


class SequenceState(artifact.Artifact):
    """Daily retraining: each user's history state after the spans a SequenceExampleGen ingested
    (``state-*.jsonl``). Custom properties: ``first_span`` and ``last_span`` of that run, and
    ``carried_from``, the uri of the state that run started from ("" for none)."""

    TYPE_NAME = "pipeline.SequenceState"


class LatestSequenceState(resolver.ResolverStrategy):
    """The latest ``SequenceState`` in ML Metadata, or none on the first run (TFX's
    ``LatestArtifactStrategy`` would mark its resolver node failed when there is none)."""

    def resolve_artifacts(self, store, input_dict):
        del store
        return {key: sorted(found, key=lambda a: (a.mlmd_artifact.create_time_since_epoch, a.id))[-1:]
                for key, found in input_dict.items()}


@component(use_beam=True)
def SequenceExampleGen(
    config_json: Parameter[str],
    input_fingerprint: Parameter[str],
    code_fingerprint: Parameter[str],
    examples: OutputArtifact[standard_artifacts.Examples],
    quarantine: OutputArtifact[Quarantine],
    state: OutputArtifact[SequenceState],
    previous_state: InputArtifact[SequenceState] = None,
    beam_pipeline: BeamComponentParameter[beam.Pipeline] = None,
) -> TypedDict("RowCounts", {"log_rows_in": int, "examples_total": int, "log_rows_quarantined": int}):
    """``input_fingerprint`` (paths, sizes, mtimes of the logs) and ``code_fingerprint`` (the
    sequence builder's source) make the cache see new data and new code.

    With ``data.span_pattern`` it ingests the spans after ``previous_state``'s (the latest state
    of an earlier run), their histories starting from that state, and writes ``state`` for the
    next run; the examples' ``span`` is the last span ingested. When no span is newer, it
    rebuilds the previous run's spans from the state that run started from (a retry gives the
    same examples)."""
    del input_fingerprint, code_fingerprint  # only part of the cache key
    from contract.config import parse_config
    from ingest import sequences
    from contract.feature_spec import FeatureSpec

    config = parse_config(json.loads(config_json))
    spec = FeatureSpec.from_config(config)
    counts_path = os.path.join(quarantine.uri, COUNTS_FILE)
    chosen, carried_from = _spans_and_prior_state(config.data, previous_state) if config.data.span_pattern else (None, "")
    with beam_pipeline as pipeline:
        outputs = pipeline | "BuildExamples" >> sequences.BuildExamples(
            config, spec, spans=chosen, prior_state=os.path.join(carried_from, "*") if carried_from else None
        )
        sequences.write_outputs(outputs, examples.uri, quarantine.uri, counts_path, state.uri if chosen else None)
    examples.split_names = encode_split_names(list(sequences.SPLITS))
    examples.span = chosen[-1].number if chosen else 0
    examples.version = 0
    if chosen:
        examples.set_int_custom_property("first_span", chosen[0].number)
        state.set_int_custom_property("first_span", chosen[0].number)
        state.set_int_custom_property("last_span", chosen[-1].number)
        state.set_string_custom_property("carried_from", carried_from)
    with tf.io.gfile.GFile(counts_path) as handle:
        counts = json.load(handle)
    report_counts(counts, quarantine.uri)
    return {
        "log_rows_in": counts["log_rows_in"],
        "examples_total": counts["examples_total"],
        "log_rows_quarantined": counts["log_rows_quarantined"],
    }


def _spans_and_prior_state(data, previous_state):
    """(the spans to ingest, the uri of the history state they start from or "")."""
    from ingest import spans
    from ingest.log_files import generic_events_dir

    found = spans.list_spans(generic_events_dir(data), data.span_pattern)
    if previous_state is None:
        chosen, carried_from = found, ""
    else:
        last = previous_state.get_int_custom_property("last_span")
        chosen, carried_from = spans.spans_to_ingest(found, last), previous_state.uri
        if not chosen:  # nothing new: the previous run's spans again, from the state it started from
            first = previous_state.get_int_custom_property("first_span")
            chosen = [s for s in found if first <= s.number <= last]
            carried_from = previous_state.get_string_custom_property("carried_from")
            print(f"[SequenceExampleGen] no span after {last}: rebuilding spans {first}..{last} as the run that ingested them did", flush=True)
    names = ", ".join(f"{s.name} ({s.number})" for s in chosen)
    print(f"[SequenceExampleGen] spans {names}; histories carried from {carried_from or 'nothing (first span)'}", flush=True)
    return chosen, carried_from


def report_counts(counts: dict, quarantine_dir: str) -> None:
    """Prints the row accounting; raises when rows in != examples out + rows quarantined."""
    splits = ", ".join(f"{k} {v:,}" for k, v in counts["examples"].items())
    print(f"[SequenceExampleGen] log rows in {counts['log_rows_in']:,} = examples {counts['examples_total']:,} ({splits})"
          f" + quarantined {counts['log_rows_quarantined']:,}", flush=True)
    if counts["quarantined_by_reason"]:
        reasons = ", ".join(f"{k} {v:,}" for k, v in counts["quarantined_by_reason"].items())
        print(f"[SequenceExampleGen] quarantined by reason: {reasons} (rows in {quarantine_dir})", flush=True)
    if not counts["balanced"]:
        raise RuntimeError(f"row accounting does not balance: {json.dumps(counts)}")
    if counts["examples_total"] == 0:
        raise RuntimeError(f"no examples were built; see the quarantine in {quarantine_dir}")


@component
def FeatureSpecSchemaGen(feature_spec_json: Parameter[str], with_click_prob: Parameter[int], schema: OutputArtifact[standard_artifacts.Schema]):
    from tfx.utils import io_utils

    from contract.feature_spec import FeatureSpec
    from transforms.schema import raw_schema

    spec = FeatureSpec.from_dict(json.loads(feature_spec_json))
    io_utils.write_pbtxt_file(os.path.join(schema.uri, "schema.pbtxt"), raw_schema(spec, bool(with_click_prob)))


def anomaly_messages(anomalies_artifact_uri: str, split_names) -> list:
    """One line per anomalous feature: split, feature, description."""
    from tensorflow_data_validation.utils import anomalies_util

    lines = []
    for split in split_names:
        path = os.path.join(anomalies_artifact_uri, f"Split-{split}", "SchemaDiff.pb")
        anomalies = anomalies_util.load_anomalies_binary(path)
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"split {split}, feature {feature!r}: {info.short_description} ({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            lines.append(f"split {split}, dataset: {anomalies.dataset_anomaly_info.description}")
    return lines


@component
def AnomalyGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> TypedDict("AnomalyGateResult", {"anomaly_free": int}):
    from tfx.types.standard_artifact_utils import decode_split_names

    lines = anomaly_messages(anomalies.uri, decode_split_names(anomalies.split_names))
    if lines:
        raise RuntimeError("data anomalies found, stopping before training:\n  " + "\n  ".join(lines))
    return {"anomaly_free": 1}


@component
def WarmupRequests(
    model: InputArtifact[standard_artifacts.Model],
    examples: InputArtifact[standard_artifacts.Examples],
    warmed_model: OutputArtifact[standard_artifacts.Model],
    model_name: Parameter[str],
    warmup_count: Parameter[int] = 10,
):
    """The trained model plus TF Serving warmup requests made of real test examples.

    Written before evaluation and push, so the pushed version already holds
    ``assets.extra/tf_serving_warmup_requests`` when a model server first sees it.
    """
    from tfx.utils import io_utils, path_utils

    from serving.warmup import write_warmup_requests

    io_utils.copy_dir(model.uri, warmed_model.uri)  # the SavedModel and the Trainer's warm-start files
    target = path_utils.serving_model_dir(warmed_model.uri)
    files = tf.io.gfile.glob(os.path.join(examples.uri, "Split-test", "*"))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(warmup_count)
    path = write_warmup_requests(target, model_name, [r.numpy() for r in records])
    print(f"[WarmupRequests] {model_name}: {path}", flush=True)


@component
def ModelsConfig(pushed_model: InputArtifact[standard_artifacts.PushedModel], serving_root: Parameter[str]) -> TypedDict("ModelsConfigResult", {"models_config": str}):
    """(Re)writes TF Serving's models.config listing every model under the serving root."""
    from serving.model_config import write_models_config

    del pushed_model  # runs after each push
    path = write_models_config(serving_root)
    print(f"[ModelsConfig] {path}", flush=True)
    return {"models_config": path}


@component
def ThresholdCheck(evaluation: InputArtifact[standard_artifacts.ModelEvaluation]) -> TypedDict("ThresholdCheckResult", {"blessed": int}):
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(evaluation.uri)
    check_thresholds_were_evaluated(result, evaluation.uri)
    for line in non_finite_refusals(result):
        print(f"[ThresholdCheck] {line} ({evaluation.uri})", flush=True)
    return {"blessed": int(result.validation_ok)}


# TFMA's message for a threshold whose metric the evaluation never emitted (metrics_validator.py)
METRIC_NOT_FOUND = "Metric not found."


def check_thresholds_were_evaluated(result, where: str) -> None:
    """Raises when TFMA could not evaluate the blessing thresholds: when the evaluation config
    sets none (``missing_thresholds``), or when a threshold names a metric the evaluation never
    computed. TFMA reports the latter as a validation failure ("Metric not found.") and would
    only decline to bless, as if the model were worse than the bound. A threshold the model
    misses is no error: ThresholdCheck reports ``blessed`` 0."""
    if result.missing_thresholds:
        raise RuntimeError(f"the evaluation config sets no blessing threshold ({where}): no model can be blessed")
    never_computed = sorted({
        metric_label(failure.metric_key)
        for per_slice in result.metric_validations_per_slice
        for failure in per_slice.failures
        if failure.message == METRIC_NOT_FOUND
    })
    if never_computed:
        raise RuntimeError(
            f"blessing thresholds name metrics the evaluation never computed: {', '.join(never_computed)} ({where}); "
            "a threshold must use the name TFMA emits for a configured metric (e.g. binary_crossentropy for BinaryCrossEntropy)"
        )


def non_finite_refusals(result) -> list:
    """One line per metric whose value is nan or infinite: it failed the thresholds that keep it
    finite (``pipeline.FINITE``, AUC's lower bound), so TFMA did not bless the model. The line
    names the metric and its value and says why."""
    found = sorted({
        (metric_label(failure.metric_key), failure.metric_value.double_value.value)
        for per_slice in result.metric_validations_per_slice
        for failure in per_slice.failures
        if failure.HasField("metric_value") and not math.isfinite(failure.metric_value.double_value.value)
    }, key=str)
    return [f"not blessed: {label} is {value}, not a finite number: {NON_FINITE_WHY}" for label, value in found]


def code_fingerprint(*modules: str) -> str:
    """A cache key for code the pipeline refers to by name (``preprocessing_fn``, ``run_fn``, the
    sequence builder): a digest of the modules' source (a package: all its ``.py`` files).

    TFX's cache sees a component's parameters, not the code behind a module name; with this key
    among the parameters, editing that code re-runs the component instead of reusing a stale output.
    """
    import importlib.util

    files = []
    for name in modules:
        found = importlib.util.find_spec(name)
        if found is None or found.origin is None:
            raise ValueError(f"module {name!r} not found")
        if found.submodule_search_locations:
            files += [os.path.join(root, f) for d in found.submodule_search_locations
                      for root, _, names in os.walk(d) for f in names if f.endswith(".py")]
        else:
            files.append(found.origin)
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        with open(path, "rb") as handle:
            digest.update(os.path.basename(path).encode("utf-8") + b"\0" + handle.read())
    return digest.hexdigest()[:16]


def input_fingerprint(paths) -> str:
    """A cache key for the raw logs: a digest of each file's path, size and modification time."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = os.stat(path)
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode("utf-8"))
    return f"{len(paths)} files, sha256 {digest.hexdigest()}"

