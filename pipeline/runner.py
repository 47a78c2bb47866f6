"""Runners: the local one (LocalDagRunner, ML Metadata in SQLite under the pipeline root)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import List, Optional

from tfx import v1 as tfx

from contract.config import PipelineConfig
from pipeline.killed_runs import abandon_killed_executions, run_lock
from pipeline.pipeline import create_pipeline


def run_local(config: PipelineConfig, models: Optional[List[str]] = None) -> None:
    """Runs the pipeline with the Beam DirectRunner; cached steps are reused on a re-run. One run
    per pipeline root at a time (``killed_runs.RunInProgress`` otherwise); what a killed earlier
    run left RUNNING is marked failed and its half-written outputs removed first."""
    with run_lock(config.pipeline_root):
        for line in abandon_killed_executions(config.metadata_path, config.pipeline_root):
            print(f"note: a killed earlier run: {line}")
        tfx.orchestration.LocalDagRunner().run(create_pipeline(config, models))
