"""The pipeline's YAML configuration, validated on load.

Every section is a pydantic model with ``extra="forbid"``: an unknown key or a value of the wrong
type is rejected with the dotted path of the key at fault (``ConfigError``). Everything a run
would refuse is refused at load (``validate-config`` catches it), without TensorFlow: attribute
names the data format does not have (the generic format's are column names: ``validate-config``
also checks them against the tables' headers, ``check_attribute_columns``), and model
hyper-parameters, validated by the chosen model's own ``Params`` class
(``contract.model_params``), so a typo in ``training.models.din.attention_units`` fails here, not
deep inside Keras. An entry may name a variant of an architecture (``architecture: fadidn``), so
ablations train beside the model.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import pydantic
import yaml

from contract.features import ITEM_ID, LABEL, TIMESTAMP, USER_ID
from contract.model_params import PARAMS


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key(s) at fault."""


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


class ColumnMap(_Strict):
    """Names of the event columns in a generic log (CSV or Parquet)."""

    user_id: str = USER_ID
    item_id: str = ITEM_ID
    timestamp: str = TIMESTAMP
    rating: Optional[str] = None  # when set, feedback comes from a 1..5 rating: click >= 4, like = 5, dislike <= 2
    clicked: Optional[str] = LABEL
    # the optional feedback flags: absent (every event 0) unless mapped, e.g. ``liked: liked``
    liked: Optional[str] = None
    disliked: Optional[str] = None
    click_prob: Optional[str] = None  # synthetic logs: the true click probability


# data.span_pattern's parts (ingest.spans): a date, or a span number
DATE_PARTS = ("{YYYY}", "{MM}", "{DD}")
NUMBER_PART = "{SPAN}"


def span_pattern_problem(pattern: str) -> Optional[str]:
    """Why ``pattern`` cannot name span folders, or None."""
    if "/" in pattern or os.sep in pattern:
        return "a span pattern names one folder level: no path separator"
    has_date = [part in pattern for part in DATE_PARTS]
    if NUMBER_PART in pattern:
        if any(has_date):
            return f"use either {NUMBER_PART} or the date parts {''.join(DATE_PARTS)}, not both"
        return None
    if not all(has_date):
        return f"a span pattern holds {NUMBER_PART}, or all of {', '.join(DATE_PARTS)}"
    return None


class DataConfig(_Strict):
    """Where the interaction logs are and how to read them."""

    format: Literal["generic", "movielens-100k", "movielens-1m", "kuairand"] = "generic"
    path: str  # a directory (all formats) or, for ``generic``, the events file itself
    events: Optional[str] = None  # generic: events file or directory, relative to ``path``
    items: Optional[str] = None  # generic: optional items table, relative to ``path``
    users: Optional[str] = None  # generic: optional users table, relative to ``path``
    file_format: Literal["auto", "csv", "parquet"] = "auto"
    columns: ColumnMap = ColumnMap()
    item_attributes: List[str] = []  # item table columns used as item fields
    user_attributes: List[str] = []  # user table columns used as user fields
    timestamp_format: Literal["auto", "seconds", "milliseconds", "microseconds", "iso8601"] = "auto"  # ingest.timestamps
    max_timestamp: int = 4102444800  # 2100-01-01: later timestamps are quarantined as absurd
    # daily retraining (generic format): the events are dated folders under the events directory
    # whose names match this pattern ({YYYY}, {MM}, {DD}, or {SPAN} for a number), one TFX span
    # each; a run ingests only the spans after the last one ingested (ingest.spans)
    span_pattern: Optional[str] = None

    @pydantic.model_validator(mode="after")
    def _feedback_source(self) -> "DataConfig":
        if self.format == "generic" and self.columns.rating is None and self.columns.clicked is None:
            raise ValueError("columns: set either `rating` or `clicked` so a click label exists")
        return self

    @pydantic.model_validator(mode="after")
    def _span_folders(self) -> "DataConfig":
        if self.span_pattern is not None:
            if self.format != "generic":
                raise ValueError(f"span_pattern: dated span folders are read in the generic format, not {self.format}")
            problem = span_pattern_problem(self.span_pattern)
            if problem:
                raise ValueError(f"span_pattern {self.span_pattern!r}: {problem}")
        return self

    @pydantic.model_validator(mode="after")
    def _known_attributes(self) -> "DataConfig":
        attribute_names(self)  # the run's feature spec needs them: refused here, not in the run
        return self


_MOVIELENS_ATTRIBUTES = (("gender", "age", "occupation", "zip"), ("genre", "year"))
BUILTIN_ATTRIBUTES = {  # format -> (user attributes, item attributes) its reader provides
    "movielens-100k": _MOVIELENS_ATTRIBUTES,
    "movielens-1m": _MOVIELENS_ATTRIBUTES,
    "kuairand": ((), ("duration",)),
}


def _select(available: Sequence[str], requested: Sequence[str], kind: str, where: str) -> List[str]:
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise ValueError(f"data.{kind}_attributes: {unknown} not available in {where} (available: {list(available)})")
    return list(requested or available)


def attribute_names(data: "DataConfig") -> Tuple[List[str], List[str]]:
    """(user attribute fields, item attribute fields), without user_id/item_id."""
    if data.format == "generic":
        for kind in ("user", "item"):
            if getattr(data, f"{kind}_attributes") and getattr(data, f"{kind}s") is None:
                raise ValueError(f"data.{kind}_attributes is set but data.{kind}s names no {kind}s table")
        return list(data.user_attributes), list(data.item_attributes)
    users, items = BUILTIN_ATTRIBUTES[data.format]
    return (
        _select(users, data.user_attributes, "user", f"format {data.format}"),
        _select(items, data.item_attributes, "item", f"format {data.format}"),
    )


def check_attribute_columns(data: "DataConfig", kind: str, path: str, columns: Sequence[str]) -> None:
    """A generic ``kind`` ("item" or "user") table's attributes must be columns of its file
    ``path``, whose header holds ``columns`` (read by ``ingest.preflight``:
    the names themselves are free in the generic format, so only the files can refuse them)."""
    try:
        _select(columns, getattr(data, f"{kind}_attributes"), kind, f"the {kind}s table {path}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class SequenceConfig(_Strict):
    max_length: int = pydantic.Field(50, ge=1, le=1000)
    window_days: float = pydantic.Field(30.0, gt=0)  # per-user processing window (bounded memory)


class SplitConfig(_Strict):
    method: Literal["time", "user"] = "time"
    train: float = pydantic.Field(0.8, gt=0, lt=1)
    eval: float = pydantic.Field(0.1, gt=0, lt=1)
    test: float = pydantic.Field(0.1, gt=0, lt=1)
    seed: int = 0  # user split: salt of the user-id hash; every split: seed of the examples' written order

    @pydantic.model_validator(mode="after")
    def _sum_to_one(self) -> "SplitConfig":
        if abs(self.train + self.eval + self.test - 1.0) > 1e-6:
            raise ValueError("train + eval + test must sum to 1")
        return self


GapBucketing = Literal["quantile", "log"]  # features.gap_bucketing (FeatureSpec checks the same)


class FeatureConfig(_Strict):
    embedding_dim: int = pydantic.Field(16, ge=1)
    gap_buckets: int = pydantic.Field(16, ge=2)
    # how log1p(gap) is cut into gap_buckets: "quantile" (equal shares of the train split's gaps)
    # or "log" (equal widths from 0 to the train split's largest log gap: seconds and days both
    # resolved when the gaps are bimodal, e.g. within-session clicks beside day-old ones)
    gap_bucketing: GapBucketing = "quantile"
    vocab_min_frequency: int = pydantic.Field(1, ge=1)
    oov_buckets: int = pydantic.Field(1, ge=1)


class TrainingConfig(_Strict):
    # model name -> that model's hyper-parameters (validated at load by the model's own Params class)
    models: Dict[str, dict] = {"dnn": {}, "din": {}}
    batch_size: int = pydantic.Field(256, ge=1)
    epochs: int = pydantic.Field(5, ge=1)
    steps_per_epoch: Optional[int] = pydantic.Field(None, ge=1)  # default: one pass over train
    learning_rate: float = pydantic.Field(1e-3, gt=0)
    # v2 defaults (docs/models.md "Training defaults (v2)", FuxiCTR's fit): after each epoch without a
    # validation-AUC gain the learning rate is multiplied by ``reduce_lr_on_plateau`` (None keeps
    # it fixed, the v1 trainer) down to ``min_learning_rate``; training stops after
    # ``early_stopping_patience`` such epochs in a row (a cut does not reset the count) and the
    # best epoch's weights are kept
    early_stopping_patience: int = pydantic.Field(2, ge=0)
    reduce_lr_on_plateau: Optional[float] = pydantic.Field(0.1, gt=0, lt=1)
    min_learning_rate: float = pydantic.Field(1e-6, ge=0)
    # gradients clipped to this global norm (FuxiCTR: 10); None: no clipping (v1)
    gradient_clip_norm: Optional[float] = pydantic.Field(10.0, gt=0)
    # the training split is reshuffled every epoch through a buffer of this many batches
    # (docs/models.md: at least 10% of the split or 100 batches); ``shuffle_buffer_examples`` sets the
    # buffer in examples instead (v1: 10000)
    shuffle_buffer_batches: int = pydantic.Field(100, ge=1)
    shuffle_buffer_examples: Optional[int] = pydantic.Field(None, ge=1)
    seed: int = 0
    mixed_precision: bool = False
    # processes training each model together (MultiWorkerMirroredStrategy, models.multiworker):
    # locally started on loopback ports; on a cluster, the platform's workers (TF_CONFIG)
    workers: int = pydantic.Field(1, ge=1)
    # start each model from the weights of its latest blessed version (models.warm_start: every
    # variable of the same name and shape; embedding rows matched by vocabulary token), when
    # there is one; daily retraining (data.span_pattern) wants it
    warm_start: bool = False


class EvaluationConfig(_Strict):
    auc_lower_bound: float = pydantic.Field(0.5, ge=0, le=1)
    # no-regression gate against the latest blessed model: AUC may drop by at most this much
    auc_max_drop: float = pydantic.Field(0.01, ge=0)
    split: Literal["test", "eval"] = "test"
    # Poisson-bootstrap 95% intervals of the overall metrics (TFMA, 20 resamples) in the report
    # and the model cards; the slices have none (benchmarks/evaluator.py measures the cost)
    confidence_intervals: bool = True


class BeamConfig(_Strict):
    # direct: Beam's DirectRunner in this process (the direct_* settings apply); portable: Beam's
    # PortableRunner with its embedded job server and an SDK worker pool on a loopback port, the
    # Fn API path that Flink, Spark and Dataflow run (contract.beam_runner starts the pool)
    runner: Literal["direct", "portable"] = "direct"
    # the portable runner's worker pool port: 0 = any free one; TFX's cache keys include the
    # pool's address, so a fixed port lets a re-run reuse cached steps
    worker_pool_port: int = pydantic.Field(0, ge=0, le=65535)
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "in_memory"
    direct_num_workers: int = pydantic.Field(1, ge=0)  # 0 = one per core
    extra_args: List[str] = []  # e.g. ["--runner=DataflowRunner", "--project=..."]
    # event files are read in parts of about this size, each a unit of Beam's work (gzip files
    # whole, Parquet by row groups; ingest.file_parts)
    read_part_mb: float = pydantic.Field(64.0, gt=0)

    @pydantic.model_validator(mode="after")
    def _one_runner(self):
        if self.runner == "portable" and any(arg.startswith("--runner") for arg in self.extra_args):
            raise ValueError("beam.runner: portable chooses the runner itself; remove --runner from beam.extra_args "
                             "(or set beam.runner: direct and pass the runner's flags in beam.extra_args)")
        return self

    @property
    def read_part_bytes(self) -> int:
        return max(1, int(self.read_part_mb * 2**20))

    def pipeline_args(self, worker_pool: Optional[str] = None) -> List[str]:
        """Beam pipeline options of these settings; the portable runner's need the address of its
        running SDK worker pool (``contract.beam_runner.beam_pipeline_args`` starts one)."""
        if self.runner == "portable":
            if not worker_pool:
                raise ValueError("beam.runner: portable needs a running SDK worker pool: "
                                 "open contract.beam_runner.beam_pipeline_args(config.beam)")
            args = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                    f"--environment_config={worker_pool}"]
        else:
            args = [f"--direct_running_mode={self.direct_running_mode}",
                    f"--direct_num_workers={self.direct_num_workers}"]
        return args + list(self.extra_args)


class PipelineConfig(_Strict):
    pipeline_name: str = "ctr-pipeline"
    pipeline_root: str = "runs/ctr-pipeline"
    serving_root: str = "serving_models"
    enable_cache: bool = True
    data: DataConfig
    sequences: SequenceConfig = SequenceConfig()
    split: SplitConfig = SplitConfig()
    features: FeatureConfig = FeatureConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    beam: BeamConfig = BeamConfig()

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.pipeline_root, "metadata.sqlite")

    def beam_pipeline_args(self) -> List[str]:
        return self.beam.pipeline_args()


def _format_errors(error: pydantic.ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<top level>"
        lines.append(f"  {path}: {item['msg']}")
    return "\n".join(lines)


ARCHITECTURE_KEY = "architecture"


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """One entry of ``training.models``: the architecture to build and its validated parameters."""

    architecture: str
    params: pydantic.BaseModel


def _model_choices(models: Dict[str, dict]) -> Tuple[Dict[str, ModelChoice], List[str]]:
    """Each ``training.models`` entry validated by its architecture's ``Params``, and every problem."""
    choices, problems = {}, []
    for name, raw in models.items():
        raw = dict(raw or {})
        architecture = raw.pop(ARCHITECTURE_KEY, name)
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            problems.append(f"  training.models.{name}: a model name may hold only letters, digits and _")
            continue
        try:
            choices[name] = ModelChoice(architecture, PARAMS[architecture].model_validate(raw))
        except KeyError:
            where = f"training.models.{name}" + (f".{ARCHITECTURE_KEY}" if architecture != name else "")
            problems.append(f"  {where}: unknown model {architecture!r} (known: {', '.join(PARAMS)})")
        except pydantic.ValidationError as exc:
            for item in exc.errors():
                path = ".".join(str(p) for p in item["loc"])
                problems.append(f"  training.models.{name}.{path}: {item['msg']}")
    return choices, problems


def validate_model_params(config: PipelineConfig) -> Dict[str, ModelChoice]:
    """Validates ``training.models`` against each model's ``Params``; returns them by name.

    An entry's name is its architecture (``fadidn: {...}``) unless it says otherwise with
    ``architecture``: ``fadidn_no_contrastive: {architecture: fadidn, contrastive: false}`` trains
    a variant (an ablation) beside the model, under its own name.
    """
    choices, problems = _model_choices(config.training.models)
    if problems:
        raise ConfigError("invalid model parameters:\n" + "\n".join(problems))
    return choices


def _raw_models(raw: dict) -> Dict[str, dict]:
    """``training.models`` of a raw config when it is a mapping of mappings, else {} (the schema
    reports it)."""
    models = raw.get("training", {}).get("models", {}) if isinstance(raw.get("training"), dict) else {}
    if not isinstance(models, dict) or not all(isinstance(v, (dict, type(None))) for v in models.values()):
        return {}
    return {str(name): value for name, value in models.items()}


def parse_config(raw: dict, base_dir: str = ".") -> PipelineConfig:
    """Validates a config mapping, reporting every problem of the schema and of the model
    parameters at once; relative paths are resolved against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping at the top level")
    problems = _model_choices(_raw_models(raw))[1]
    try:
        config = PipelineConfig.model_validate(raw)
    except pydantic.ValidationError as exc:
        problems = _format_errors(exc).splitlines() + problems
    if problems:
        raise ConfigError(f"{len(problems)} problem(s):\n" + "\n".join(problems))

    def resolve(path: str) -> str:
        return path if "://" in path or os.path.isabs(path) else os.path.abspath(os.path.join(base_dir, path))

    data = config.data.model_copy(update={"path": resolve(config.data.path)})
    return config.model_copy(
        update={
            "data": data,
            "pipeline_root": resolve(config.pipeline_root),
            "serving_root": resolve(config.serving_root),
        }
    )


def load_config(path: str) -> PipelineConfig:
    """Reads and validates a YAML config; paths in it are relative to the file's directory."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
