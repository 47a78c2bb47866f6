"""The TFX pipeline: logs -> sequences -> statistics/schema/validation -> Transform ->
per model (Trainer, WarmupRequests, Evaluator, SliceEvaluator, ThresholdCheck, Pusher, ModelsConfig).

One shared Transform feeds one Trainer/Evaluator/Pusher per model in ``training.models``;
component ids carry the model name (``Trainer.din``), and each model is gated against its own
latest blessed version and pushed under its own name.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json
import sys
from typing import List, Optional

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx
from tfx.proto import transform_pb2

from contract.config import ModelChoice, PipelineConfig, validate_model_params
from contract.serving import OUTPUT_KEY, SERVING_DEFAULT, TRANSFORM_FEATURES
from contract.trainer_args import TrainerArgs
from pipeline import components
from contract.features import LABEL, USER_ID
from contract.slices import SLICE_FEATURES
from contract.feature_spec import FeatureSpec
from transforms.preprocessing import SPEC_KEY

PREPROCESSING_FN = "transforms.preprocessing.preprocessing_fn"
RUN_FN = "models.trainer.run_fn"


def _overall(threshold: tfma.MetricThreshold) -> list:
    return [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)]


# TFMA blesses when lower <= value <= upper for every threshold, which nan and +-inf fail: with
# these bounds logloss and gAUC must be finite, as AUC must be to pass its lower bound.
FINITE = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
    lower_bound={"value": -sys.float_info.max}, upper_bound={"value": sys.float_info.max}
))


CALIBRATION_BUCKETS = 10


def _metrics(auc_threshold: Optional[tfma.MetricThreshold] = None) -> List[tfma.MetricsSpec]:
    """AUC, logloss, gAUC, example count and click rate; with ``auc_threshold``, the blessing
    thresholds on the overall slice: that one on AUC, and logloss and gAUC finite."""
    def thresholds(threshold):
        return _overall(threshold) if auc_threshold else []

    return [
        tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="MeanLabel"),  # a slice's click rate
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=thresholds(auc_threshold)),
            tfma.MetricConfig(class_name="BinaryCrossEntropy", module="tensorflow_model_analysis.metrics",
                              per_slice_thresholds=thresholds(FINITE)),
        ]),
        tfma.MetricsSpec(
            metrics=[tfma.MetricConfig(class_name="GAUC", module="pipeline.metrics", per_slice_thresholds=thresholds(FINITE))],
            query_key=USER_ID,
        ),
    ]


def _model_specs() -> List[tfma.ModelSpec]:
    return [tfma.ModelSpec(signature_name=SERVING_DEFAULT, label_key=LABEL, prediction_key=OUTPUT_KEY,
                           preprocessing_function_names=[TRANSFORM_FEATURES])]


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """The gate (``Evaluator.<model>``): the overall slice's metrics with Poisson-bootstrap 95%
    intervals (``evaluation.confidence_intervals``), a calibration plot, and the blessing
    thresholds: AUC's bounds, and logloss and gAUC finite.

    With intervals, the slices are a second evaluation (``slice_eval_config``, node
    ``SliceEvaluator.<model>``): TFMA bootstraps every slice it computes, and each slicing
    feature adds a pass over the examples per resample (benchmarks/evaluator.py measures it).
    Without intervals, this one evaluation computes the slices too."""
    bound = config.evaluation
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": bound.auc_lower_bound}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -bound.auc_max_drop}
        ),
    )
    specs = _metrics(auc_threshold)
    specs[0].metrics.append(
        tfma.MetricConfig(class_name="CalibrationPlot", config=json.dumps({"num_buckets": CALIBRATION_BUCKETS}))
    )
    return tfma.EvalConfig(
        model_specs=_model_specs(),
        slicing_specs=[tfma.SlicingSpec()] + ([] if bound.confidence_intervals else _slices()),
        options=tfma.Options(
            compute_confidence_intervals={"value": bound.confidence_intervals},
            confidence_intervals=tfma.ConfidenceIntervalOptions(method=tfma.ConfidenceIntervalOptions.POISSON_BOOTSTRAP),
        ),
        metrics_specs=specs,
    )


def _slices() -> List[tfma.SlicingSpec]:
    return [tfma.SlicingSpec(feature_keys=[name]) for name in SLICE_FEATURES]


def slice_eval_config() -> tfma.EvalConfig:
    """The slices (``SliceEvaluator.<model>``): the same metrics on each slice of
    ``contract.slices``, without intervals or thresholds."""
    return tfma.EvalConfig(
        model_specs=_model_specs(),
        slicing_specs=_slices(),
        options=tfma.Options(compute_confidence_intervals={"value": False}),
        metrics_specs=_metrics(),
    )


def _data_files(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    return [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]


EXAMPLE_SECTIONS = {"data", "sequences", "split", "features"}
# the code behind each cached step (see components.code_fingerprint)
EXAMPLE_CODE = (
    "ingest.sequences", "ingest.splits", "ingest.history", "ingest.sources", "ingest.log_files", "ingest.file_parts", "ingest.log_values",
    "ingest.timestamps", "ingest.log_tables", "ingest.windows", "ingest.spans", "contract",
)
TRANSFORM_CODE = ("transforms.preprocessing", "contract")
TRAINER_CODE = ("models", "contract")
CODE_FINGERPRINT = "code_fingerprint"
EXAMPLE_GEN = "SequenceExampleGen"


def create_pipeline(
    config: PipelineConfig, models: Optional[List[str]] = None, for_kubeflow: bool = False, vertex_training: Optional[dict] = None,
    beam_args: Optional[List[str]] = None,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline for ``config`` (``models`` narrows ``training.models``). With
    ``vertex_training`` (``pipeline.kubeflow.vertex_training``: TFX's ``ai_platform_*`` settings)
    every Trainer runs as a Vertex AI custom job with those worker pools. ``beam_args``: the Beam
    options of every Beam step (``contract.beam_runner.beam_pipeline_args``; default the config's,
    which the portable runner has only while its worker pool runs)."""
    choices = validate_model_params(config)
    names = models or list(choices)
    unknown = set(names) - set(choices)
    if unknown:
        raise ValueError(f"models {sorted(unknown)} are not in training.models ({sorted(choices)})")
    spec = FeatureSpec.from_config(config)

    span_nodes, previous_state = [], {}
    if config.data.span_pattern:  # daily retraining: start from the history state the last run left
        latest_state = tfx.dsl.Resolver(
            # KFP compiles only TFX's own strategies; locally, TFX's would mark the node failed on day 1
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy if for_kubeflow else components.LatestSequenceState,
            state=tfx.dsl.Channel(type=components.SequenceState, producer_component_id=EXAMPLE_GEN),
        ).with_id("LatestSequenceState")
        span_nodes, previous_state = [latest_state], {"previous_state": latest_state.outputs["state"]}
    example_gen = components.SequenceExampleGen(
        # only what shapes the examples: a training or evaluation change keeps the cached examples
        config_json=config.model_dump_json(include=EXAMPLE_SECTIONS),
        input_fingerprint="" if for_kubeflow else components.input_fingerprint(_data_files(config.data.path)),
        code_fingerprint=components.code_fingerprint(*EXAMPLE_CODE),
        **previous_state,
    ).with_id(EXAMPLE_GEN)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = components.FeatureSpecSchemaGen(
        feature_spec_json=json.dumps(spec.to_dict()), with_click_prob=int(config.data.columns.click_prob is not None)
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    anomaly_gate = components.AnomalyGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        splits_config=transform_pb2.SplitsConfig(analyze=["train"], transform=["train", "eval", "test"]),
        custom_config={SPEC_KEY: spec.to_dict(), CODE_FINGERPRINT: components.code_fingerprint(*TRANSFORM_CODE)},
    )
    transform.add_upstream_node(anomaly_gate)
    nodes = span_nodes + [example_gen, statistics_gen, schema_gen, example_validator, anomaly_gate, transform]
    for name in names:
        nodes += _model_nodes(config, spec, name, choices[name], example_gen, transform, vertex_training)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=nodes,
        enable_cache=config.enable_cache,
        metadata_connection_config=None if for_kubeflow else tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path),
        beam_pipeline_args=config.beam_pipeline_args() if beam_args is None else beam_args,
    )


def _model_nodes(
    config: PipelineConfig, spec: FeatureSpec, name: str, choice: ModelChoice, example_gen, transform, vertex_training: Optional[dict],
) -> list:
    """Trainer, WarmupRequests, resolver, Evaluator, SliceEvaluator (with intervals), ThresholdCheck,
    Pusher, ModelsConfig of one model."""
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model, producer_component_id=f"WarmupRequests.{name}"),
        model_blessing=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.ModelBlessing, producer_component_id=f"Evaluator.{name}"
        ),
    ).with_id(f"LatestBlessedModel.{name}")
    # training.warm_start: the Trainer starts from the latest blessed version (models.warm_start)
    base_model = {"base_model": baseline.outputs["model"]} if config.training.warm_start else {}
    trainer_component = tfx.extensions.google_cloud_ai_platform.Trainer if vertex_training else tfx.components.Trainer
    trainer = trainer_component(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=TrainerArgs(
            model_name=name,
            architecture=choice.architecture,
            model_params=choice.params.model_dump(mode="json"),
            feature_spec=spec.to_dict(),
            training=config.training,
            code_fingerprint=components.code_fingerprint(*TRAINER_CODE),
        ).to_custom_config() | (vertex_training or {}),
        **base_model,
    ).with_id(f"Trainer.{name}")
    warmed = components.WarmupRequests(
        model=trainer.outputs["model"], examples=example_gen.outputs["examples"], model_name=name
    ).with_id(f"WarmupRequests.{name}")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=warmed.outputs["warmed_model"],
        baseline_model=baseline.outputs["model"],
        eval_config=eval_config(config),
        example_splits=[config.evaluation.split],
    ).with_id(f"Evaluator.{name}")
    nodes = [baseline, trainer, warmed, evaluator]
    if config.evaluation.confidence_intervals:  # else the Evaluator computes the slices (eval_config)
        nodes.append(tfx.components.Evaluator(
            examples=example_gen.outputs["examples"],
            model=warmed.outputs["warmed_model"],
            eval_config=slice_eval_config(),
            example_splits=[config.evaluation.split],
        ).with_id(f"SliceEvaluator.{name}"))
    threshold_check = components.ThresholdCheck(evaluation=evaluator.outputs["evaluation"]).with_id(f"ThresholdCheck.{name}")
    pusher = tfx.components.Pusher(
        model=warmed.outputs["warmed_model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=os.path.join(config.serving_root, name))
        ),
    ).with_id(f"Pusher.{name}")
    models_config = components.ModelsConfig(
        pushed_model=pusher.outputs["pushed_model"], serving_root=config.serving_root
    ).with_id(f"ModelsConfig.{name}")
    return nodes + [threshold_check, pusher, models_config]


