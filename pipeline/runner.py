"""Runners: the local one (LocalDagRunner, ML Metadata in SQLite under the pipeline root)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import List, Optional

from tfx import v1 as tfx

from contract.beam_runner import BEAM_WORKERS_LOG, beam_pipeline_args
from contract.config import PipelineConfig
from pipeline.killed_runs import abandon_killed_executions, run_lock
from pipeline.pipeline import create_pipeline


def run_local(config: PipelineConfig, models: Optional[List[str]] = None) -> None:
    """Runs the pipeline with the configured Beam runner (the DirectRunner unless ``beam.runner:
    portable``, whose SDK worker pool runs for the whole run and logs to beam-workers.log in the
    pipeline root); cached steps are reused on a re-run. One run per pipeline root at a time
    (``killed_runs.RunInProgress`` otherwise); what a killed earlier run left RUNNING is marked
    failed and its half-written outputs removed first."""
    with run_lock(config.pipeline_root):
        for line in abandon_killed_executions(config.metadata_path, config.pipeline_root):
            print(f"note: a killed earlier run: {line}")
        workers_log = os.path.join(config.pipeline_root, BEAM_WORKERS_LOG)
        with beam_pipeline_args(config.beam, workers_log) as beam_args:
            tfx.orchestration.LocalDagRunner().run(create_pipeline(config, models, beam_args=beam_args))
