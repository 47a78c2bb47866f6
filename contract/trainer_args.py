"""The Trainer's arguments, typed: built by the pipeline (the Trainer's ``custom_config``) and
read by the trainer module (``models.trainer.run_fn``), one definition for both sides."""
from __future__ import annotations

from typing import Any, Dict

import pydantic

from contract.config import TrainingConfig

PLATFORM_KEY_PREFIX = "ai_platform_"  # tfx.extensions.google_cloud_ai_platform's custom_config keys


class TrainerArgs(pydantic.BaseModel):
    """What one Trainer trains: the model, its validated parameters, the feature spec and the
    training settings (``training.models`` left out: the model's own entry is ``model_params``)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    model_name: str  # the entry of training.models (the pushed model's name)
    architecture: str  # the model class (contract.model_params.PARAMS key)
    model_params: Dict[str, Any]  # validated by PARAMS[architecture], as JSON
    feature_spec: Dict[str, Any]  # contract.feature_spec.FeatureSpec.to_dict()
    training: TrainingConfig
    code_fingerprint: str = ""  # the trainer code's hash: a code change reruns the Trainer

    def to_custom_config(self) -> Dict[str, Any]:
        """The JSON mapping TFX stores as the Trainer's ``custom_config``."""
        return self.model_dump(mode="json", exclude={"training": {"models"}})

    @classmethod
    def from_custom_config(cls, custom_config: Dict[str, Any]) -> "TrainerArgs":
        """Reads ``custom_config`` without the keys TFX's Vertex AI Trainer reads itself
        (``ai_platform_*``: the job's worker pools, region; ``pipeline.kubeflow``)."""
        return cls.model_validate({k: v for k, v in custom_config.items() if not k.startswith(PLATFORM_KEY_PREFIX)})
