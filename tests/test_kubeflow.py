"""``ctr-pipeline compile --runner kubeflow``: the KFP v2 spec of the demo config, compiled offline."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import json
import re

import pytest
import yaml

from pipeline import kubeflow
from ingest import synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, os.pardir, "configs", "demo.yaml")
IMAGE = "registry.example.com/ctr-pipeline:1.2.3"
GPUS = 2
# KFP v2's rule for custom artifact type titles (tfx.orchestration.kubeflow.v2.compiler_utils)
TITLE = re.compile(r"^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$")


def _compile_args(**overrides):
    parser = argparse.ArgumentParser()
    kubeflow.add_compile_arguments(parser)
    argv = []
    for key, value in {"runner": "kubeflow", "image": IMAGE, **overrides}.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def demo_config_file(tmp_path_factory):
    """configs/demo.yaml with its data pointed at a small synthetic dataset."""
    root = tmp_path_factory.mktemp("kubeflow")
    synthetic.generate(str(root / "data"), num_users=20, num_items=30, events_per_user=5, days=3)
    with open(DEMO, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw["data"]["path"] = str(root / "data")
    raw["pipeline_root"] = "gs://bucket/ctr/root"
    raw["serving_root"] = "gs://bucket/ctr/serving"
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path), raw


@pytest.fixture(scope="module")
def spec(demo_config_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("spec") / "pipeline.json"
    assert kubeflow.run_compile(_compile_args(config=demo_config_file[0], output=output, gpus=GPUS)) == 0
    with open(output, encoding="utf-8") as handle:
        return json.load(handle)


def _tasks(spec):
    return spec["pipelineSpec"]["root"]["dag"]["tasks"]


def _upstream(spec):
    """Task -> every task it (transitively) depends on."""
    direct = {name: set(task.get("dependentTasks", [])) for name, task in _tasks(spec).items()}
    closed = {}

    def visit(name):
        if name not in closed:
            closed[name] = set()
            for parent in direct[name]:
                closed[name] |= {parent} | visit(parent)
        return closed[name]

    for name in direct:
        visit(name)
    return closed


def _parameter(spec, task, name):
    return _tasks(spec)[task]["inputs"]["parameters"][name]["runtimeValue"]["constantValue"]


def test_components_and_their_order(spec, demo_config_file):
    tasks = _tasks(spec)
    models = list(demo_config_file[1]["training"]["models"])
    assert spec["pipelineSpec"]["pipelineInfo"]["name"] == demo_config_file[1]["pipeline_name"]
    shared = ["SequenceExampleGen", "StatisticsGen", "ExampleValidator", "AnomalyGate", "Transform"]
    per_model = ["Trainer", "WarmupRequests", "Evaluator", "SliceEvaluator", "ThresholdCheck", "Pusher", "ModelsConfig"]
    expected = set(shared) | {"FeatureSpecSchemaGen"} | {f"{c}.{m}" for c in per_model for m in models}
    assert expected <= set(tasks)
    upstream = _upstream(spec)
    assert not upstream["SequenceExampleGen"]
    for model in models:
        chain = shared + [f"Trainer.{model}", f"WarmupRequests.{model}", f"Evaluator.{model}", f"Pusher.{model}", f"ModelsConfig.{model}"]
        for before, after in zip(chain, chain[1:]):
            assert before in upstream[after], f"{before} must run before {after}"
        assert f"Evaluator.{model}" in upstream[f"ThresholdCheck.{model}"]
        assert f"WarmupRequests.{model}" in upstream[f"SliceEvaluator.{model}"]
        other = [m for m in models if m != model]
        assert not any(f"Trainer.{o}" in upstream[f"Pusher.{model}"] for o in other), "models are independent"
    assert "FeatureSpecSchemaGen" in upstream["Transform"]


def test_every_executor_runs_the_image(spec):
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    containers = {name: e["container"] for name, e in executors.items() if "container" in e}
    resolvers = set(executors) - set(containers)
    assert all(e.get("resolver") is not None for n, e in executors.items() if n in resolvers)
    assert all(name.startswith("LatestBlessedModel.") for name in resolvers)  # resolvers run in the KFP backend
    assert len(containers) >= 14
    for name, container in containers.items():
        assert container["image"] == IMAGE, name
        assert container["command"][-1] == "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"


def test_parameters_name_code_baked_into_the_image(spec):
    assert _parameter(spec, "Trainer.dnn", "run_fn") == {"stringValue": "models.trainer.run_fn"}
    assert _parameter(spec, "Trainer.din", "run_fn") == {"stringValue": "models.trainer.run_fn"}
    assert _parameter(spec, "Transform", "preprocessing_fn") == {"stringValue": "transforms.preprocessing.preprocessing_fn"}
    custom = json.loads(_parameter(spec, "Trainer.din", "custom_config")["stringValue"])
    assert custom["model_name"] == "din" and custom["feature_spec"]["max_length"] == 20
    config = json.loads(_parameter(spec, "SequenceExampleGen", "config_json")["stringValue"])
    assert config["sequences"]["max_length"] == 20 and set(config) == {"data", "sequences", "split", "features"}
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == "gs://bucket/ctr/root"
    assert "module_file" not in json.dumps(spec)


def test_custom_artifact_types_are_importable_by_their_title(spec):
    """KFP v2 imports a custom artifact class by its schema title at run time."""
    from tfx.utils import import_utils

    titles = set(re.findall(r"title: ([\w.\-]+)", json.dumps(spec)))
    custom = {t for t in titles if not t.startswith("tfx.")}
    assert custom, "the quarantine artifact is a custom type"
    for title in custom:
        assert TITLE.fullmatch(title), title
        assert import_utils.import_class_by_path(title).TYPE_NAME == title


def test_gpus_are_requested_for_the_trainers_only(spec):
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        resources = executor.get("container", {}).get("resources")
        if name.startswith("Trainer."):
            assert resources == {"accelerator": {"count": str(GPUS), "type": kubeflow.DEFAULT_GPU_TYPE}}, name
        else:
            assert not resources, name


def test_training_workers_become_a_vertex_custom_job_of_that_many_replicas(demo_config_file, tmp_path):
    """Issue 22 §4: ``training.workers: 3`` with ``--vertex-project``: every Trainer is TFX's Vertex AI
    Trainer, its job a chief pool of 1 and a worker pool of 2 on the image, the GPUs on each replica's
    machine (not the pod); the run_fn still reads its own arguments from the same custom_config."""
    from contract.trainer_args import TrainerArgs

    raw = dict(demo_config_file[1], training={**demo_config_file[1]["training"], "workers": 3})
    config_path = tmp_path / "workers.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "vertex.json"
    args = _compile_args(config=config_path, output=output, gpus=1, gpu_type="NVIDIA_TESLA_T4",
                         vertex_project="my-project", vertex_region="europe-west4", machine_type="n1-highmem-8")
    assert kubeflow.run_compile(args) == 0
    spec = json.loads(output.read_text())
    executors = spec["pipelineSpec"]["deploymentSpec"]["executors"]
    trainers = [name for name in _tasks(spec) if name.startswith("Trainer.")]
    assert len(trainers) == 6
    for name in trainers:
        custom = json.loads(_parameter(spec, name, "custom_config")["stringValue"])
        assert custom["ai_platform_enable_vertex"] is True and custom["ai_platform_vertex_region"] == "europe-west4"
        job = custom["ai_platform_training_args"]
        assert job["project"] == "my-project"
        machine = {"machine_type": "n1-highmem-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 1}
        assert job["job_spec"]["worker_pool_specs"] == [
            {"machine_spec": machine, "replica_count": 1, "container_spec": {"image_uri": IMAGE}},
            {"machine_spec": machine, "replica_count": 2, "container_spec": {"image_uri": IMAGE}},
        ]
        assert TrainerArgs.from_custom_config(custom).training.workers == 3
        executor = next(e for n, e in executors.items() if n.startswith(name))
        assert "google_cloud_ai_platform" in json.dumps(executor) and not executor["container"].get("resources")


def test_only_kubeflow_is_supported(demo_config_file, tmp_path):
    with pytest.raises(ValueError, match="supported: kubeflow"):
        kubeflow.run_compile(_compile_args(runner="airflow", config=demo_config_file[0], output=tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()


def test_example_generation_does_not_depend_on_the_training_settings(demo_config_file):
    from contract.config import load_config
    from pipeline.pipeline import create_pipeline

    config = load_config(demo_config_file[0])
    other = config.model_copy(update={"training": config.training.model_copy(update={"epochs": 9, "seed": 3})})

    def example_gen_parameters(cfg):
        (node,) = [n for n in create_pipeline(cfg, ["dnn"], for_kubeflow=True).components if n.id == "SequenceExampleGen"]
        return node.exec_properties

    assert example_gen_parameters(config) == example_gen_parameters(other)
    changed = config.model_copy(update={"sequences": config.sequences.model_copy(update={"max_length": 7})})
    assert example_gen_parameters(config) != example_gen_parameters(changed)


def test_editing_the_code_behind_a_step_changes_its_cache_key(demo_config_file, tmp_path, monkeypatch):
    """TFX caches by parameters; the code a step names (preprocessing_fn, run_fn, the sequence
    builder) must be among them, or an edit would reuse a stale output."""
    from pipeline import components, pipeline
    from contract.config import load_config

    package = tmp_path / "edited"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "step.py").write_text("def fn():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = components.code_fingerprint("edited")
    assert components.code_fingerprint("edited.step") != before
    (package / "step.py").write_text("def fn():\n    return 2\n")
    assert components.code_fingerprint("edited") != before
    with pytest.raises(ValueError, match="not found"):
        components.code_fingerprint("no_such_module_here")

    nodes = {n.id: n for n in pipeline.create_pipeline(load_config(demo_config_file[0]), ["dnn"], for_kubeflow=True).components}
    expected = {
        "SequenceExampleGen": components.code_fingerprint(*pipeline.EXAMPLE_CODE),
        "Transform": components.code_fingerprint(*pipeline.TRANSFORM_CODE),
        "Trainer.dnn": components.code_fingerprint(*pipeline.TRAINER_CODE),
    }
    assert nodes["SequenceExampleGen"].exec_properties["code_fingerprint"] == expected["SequenceExampleGen"]
    for node in ("Transform", "Trainer.dnn"):
        custom = json.loads(nodes[node].exec_properties["custom_config"])
        assert custom["code_fingerprint"] == expected[node], node
    assert len(set(expected.values())) == 3


def test_daily_retraining_compiles_with_the_state_and_the_warm_start_base(tmp_path):
    """configs/daily.yaml: SequenceExampleGen reads the latest history state and every Trainer
    gets its latest blessed version as the warm-start base."""
    with open(os.path.join(HERE, os.pardir, "configs", "daily.yaml"), encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw.update(pipeline_root="gs://bucket/daily/root", serving_root="gs://bucket/daily/serving")
    raw["data"]["path"] = "gs://bucket/daily/data"
    config_file = tmp_path / "daily.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    output = tmp_path / "daily.json"
    assert kubeflow.run_compile(_compile_args(config=str(config_file), output=output)) == 0
    tasks = _tasks(json.loads(output.read_text()))
    state = tasks["SequenceExampleGen"]["inputs"]["artifacts"]["previous_state"]["taskOutputArtifact"]
    assert state == {"outputArtifactKey": "state", "producerTask": "LatestSequenceState"}
    for name in raw["training"]["models"]:
        base = tasks[f"Trainer.{name}"]["inputs"]["artifacts"]["base_model"]["taskOutputArtifact"]
        assert base["producerTask"].startswith(f"LatestBlessedModel.{name}")
