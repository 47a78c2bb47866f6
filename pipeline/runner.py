"""Runners: the local one (LocalDagRunner, ML Metadata in SQLite under the pipeline root)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import List, Optional

from tfx import v1 as tfx

from contract.config import PipelineConfig
from pipeline.pipeline import create_pipeline


def run_local(config: PipelineConfig, models: Optional[List[str]] = None) -> None:
    """Runs the pipeline with the Beam DirectRunner; cached steps are reused on a re-run."""
    os.makedirs(config.pipeline_root, exist_ok=True)
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config, models))
