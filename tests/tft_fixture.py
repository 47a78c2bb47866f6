"""Runs the real preprocessing_fn with tf.Transform's Beam implementation, in-process."""
from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Dict, List, Tuple

import apache_beam as beam
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils

from transforms import preprocessing
from contract.feature_spec import FeatureSpec
from transforms.schema import raw_schema
from tests.raw_data import to_tf_example


def _feature_spec(spec: FeatureSpec):
    return schema_utils.schema_as_feature_spec(raw_schema(spec, with_click_prob=True)).feature_spec


def as_instance(example: dict, names) -> dict:
    """A raw feature dict in the instance-dict format tf.Transform's Beam API takes."""
    return {name: example[name] if isinstance(example[name], list) else [example[name]] for name in names}


def analyze(spec: FeatureSpec, train: list, output_dir: str = None) -> str:
    """Analyzes ``train`` raw examples; returns the transform output directory."""
    output_dir = output_dir or tempfile.mkdtemp(prefix="tft-")
    metadata = dataset_metadata.DatasetMetadata(raw_schema(spec, with_click_prob=True))
    config = {preprocessing.SPEC_KEY: spec.to_dict()}
    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(output_dir, "tmp"), force_tf_compat_v1=False):
        names = list(_feature_spec(spec))
        rows = pipeline | beam.Create([as_instance(e, names) for e in train])
        transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(lambda inputs: preprocessing.preprocessing_fn(inputs, config))
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    # the raw schema beside the graph, as TFX's Transform writes it (read by raw_feature_spec())
    metadata_io.write_metadata(metadata, os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return output_dir


_ANALYZED: Dict[str, Tuple[str, List[dict]]] = {}


def analyzed(spec: FeatureSpec, **raw_example_args) -> Tuple[str, List[dict]]:
    """(transform output directory, train examples) for ``raw_data.raw_examples(spec, **raw_example_args)``,
    analyzed once per test session: every test module asking for the same ones shares the graph."""
    from tests.raw_data import raw_examples

    key = json.dumps([spec.to_dict(), raw_example_args], sort_keys=True)
    if key not in _ANALYZED:
        train = raw_examples(spec, **raw_example_args)
        _ANALYZED[key] = analyze(spec, train), train
    return _ANALYZED[key]


def parse(examples: list, spec: FeatureSpec, with_label: bool = True) -> dict:
    """Raw feature dicts -> the parsed raw tensors (what serving_default parses)."""
    feature_spec = dict(_feature_spec(spec))
    feature_spec.pop("click_prob")
    if not with_label:
        feature_spec.pop("clicked")
    serialized = tf.constant([to_tf_example(e, spec) for e in examples])
    return tf.io.parse_example(serialized, feature_spec)


@functools.lru_cache(maxsize=None)
def _transform_layer(tft_dir: str):
    return tft.TFTransformOutput(tft_dir).transform_features_layer()  # loading it takes seconds: once per graph


def transform(tft_dir: str, examples: list, spec: FeatureSpec) -> dict:
    """Transformed features of raw examples through the saved transform graph."""
    return {k: v.numpy() for k, v in _transform_layer(tft_dir)(parse(examples, spec)).items()}
