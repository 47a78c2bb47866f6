"""Kubeflow Pipelines: ``ctr-pipeline compile --runner kubeflow`` writes the KFP v2 pipeline spec.

The spec comes from ``tfx.orchestration.experimental.KubeflowV2DagRunner`` applied to
``pipeline.pipeline.create_pipeline(config, for_kubeflow=True)`` (no ML Metadata connection:
KFP provides it; no local input fingerprint). Compiling is offline: the project's code is baked
into the image (``--image``, built from the Dockerfile's ``pipeline`` target), so components
refer to it by name (``run_fn="models.trainer.run_fn"``, ``preprocessing_fn=...``) and nothing
is uploaded.

Paths in the config (``pipeline_root``, ``data.path``, ``serving_root``) are read and written by
the pipeline's pods: on a cluster they must be shared storage (``gs://...``, ``s3://...``, or a
volume mounted at the same path in every pod). ``--pipeline-root`` overrides the config's.

``--gpus N`` requests N GPUs (``--gpu-type``, default ``nvidia.com/gpu`` as Kubernetes names
NVIDIA GPUs; on Vertex AI Pipelines use e.g. ``NVIDIA_TESLA_T4``) for every Trainer, through
TFX's ``with_platform_config(ResourceSpec)``; the image must then hold the CUDA build of
TensorFlow (``pip install 'tensorflow[and-cuda]==2.16.2'`` with the pins).

``training.workers: N`` (``models.multiworker``): with ``--vertex-project`` every Trainer runs as
a Vertex AI custom job of N replicas (TFX's Vertex AI Trainer; ``--gpus`` then go to each
replica's machine, ``--machine-type``), otherwise the N worker processes share the Trainer's pod.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import sys
from typing import Optional

RUNNERS = ("kubeflow",)
DEFAULT_GPU_TYPE = "nvidia.com/gpu"
DEFAULT_VERTEX_REGION = "us-central1"
DEFAULT_MACHINE_TYPE = "n1-standard-8"
TRAINER_PREFIX = "Trainer."


def _is_local(path: str) -> bool:
    return "://" not in path


def vertex_training(workers: int, image: str, project: str, region: str, machine_type: str, gpus: int, gpu_type: str) -> dict:
    """TFX's Vertex AI Trainer settings (``ai_platform_*`` custom_config keys): a custom job with a
    chief pool of one replica and a pool of ``workers`` - 1 more, each on ``machine_type`` with
    ``gpus`` GPUs, all running ``image``. Vertex AI sets each replica's TF_CONFIG (the chief is
    "chief", the others "worker"), so ``models.trainer.run_fn`` trains as one worker of the cluster."""
    from tfx import v1 as tfx

    machine = {"machine_type": machine_type}
    if gpus:
        machine.update(accelerator_type=gpu_type, accelerator_count=gpus)
    pools = [{"machine_spec": machine, "replica_count": count, "container_spec": {"image_uri": image}}
             for count in (1, workers - 1) if count]
    platform = tfx.extensions.google_cloud_ai_platform
    return {
        platform.ENABLE_VERTEX_KEY: True,
        platform.VERTEX_REGION_KEY: region,
        platform.TRAINING_ARGS_KEY: {"project": project, "job_spec": {"worker_pool_specs": pools}},
    }


def compile_kubeflow(
    config,
    image: str,
    output_file: str,
    models=None,
    gpus: int = 0,
    gpu_type: str = DEFAULT_GPU_TYPE,
    pipeline_root: Optional[str] = None,
    vertex_project: Optional[str] = None,
    vertex_region: str = DEFAULT_VERTEX_REGION,
    machine_type: str = DEFAULT_MACHINE_TYPE,
) -> dict:
    """Writes the KFP v2 pipeline job spec of ``config`` to ``output_file``; returns it as a dict.
    With ``vertex_project`` each Trainer is a Vertex AI custom job of ``training.workers``
    replicas (``vertex_training``); without, a Trainer step is one pod, its ``training.workers``
    processes started in it (``models.multiworker``)."""
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx import v1 as tfx

    from pipeline.pipeline import create_pipeline

    if not image:
        raise ValueError("--image is required: the container image holding this project (Dockerfile target 'pipeline')")
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    if config.beam.runner == "portable":
        raise ValueError("beam.runner: portable starts its SDK worker pool on this machine; on Kubeflow set beam.runner: "
                         "direct and give the cluster's runner in beam.extra_args (e.g. --runner=DataflowRunner ...)")
    if pipeline_root:
        config = config.model_copy(update={"pipeline_root": pipeline_root})
    vertex = None
    if vertex_project:
        vertex = vertex_training(config.training.workers, image, vertex_project, vertex_region, machine_type, gpus, gpu_type)
    pipeline = create_pipeline(config, models, for_kubeflow=True, vertex_training=vertex)
    if gpus and not vertex:
        resources = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            accelerator=pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec.AcceleratorConfig(
                type=gpu_type, count=gpus
            )
        )
        for node in pipeline.components:
            if node.id.startswith(TRAINER_PREFIX):
                node.with_platform_config(resources)
    output_file = os.path.abspath(output_file) if _is_local(output_file) else output_file
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(output_file),
        output_filename=os.path.basename(output_file),
    )
    return runner.run(pipeline, write_out=True)


def local_paths(config) -> dict:
    """The config's paths that only this machine can see (a cluster's pods cannot)."""
    paths = {"pipeline_root": config.pipeline_root, "data.path": config.data.path, "serving_root": config.serving_root}
    return {key: value for key, value in paths.items() if _is_local(value)}


# ---- command line ------------------------------------------------------------------------------
def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ctr-pipeline compile``."""
    parser.add_argument("--runner", required=True, help="orchestrator to compile for; supported: kubeflow (KFP v2 spec)")
    parser.add_argument("--config", required=True, help="pipeline YAML config")
    parser.add_argument("--image", required=True,
                        help="container image with this project installed (Dockerfile target 'pipeline'), used by every step")
    parser.add_argument("--output", required=True, help="pipeline spec file to write (.json, or .yaml/.yml)")
    parser.add_argument("--models", default="", help="comma-separated subset of training.models to include")
    parser.add_argument("--pipeline-root", default=None,
                        help="override the config's pipeline_root (a location every pod can reach, e.g. gs://bucket/root)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs requested by each Trainer step (default 0)")
    parser.add_argument("--gpu-type", default=DEFAULT_GPU_TYPE,
                        help=f"accelerator type of --gpus (default {DEFAULT_GPU_TYPE}; Vertex AI: e.g. NVIDIA_TESLA_T4)")
    parser.add_argument("--vertex-project", default=None,
                        help="run each Trainer as a Vertex AI custom job in this GCP project, with training.workers replicas")
    parser.add_argument("--vertex-region", default=DEFAULT_VERTEX_REGION, help=f"its region (default {DEFAULT_VERTEX_REGION})")
    parser.add_argument("--machine-type", default=DEFAULT_MACHINE_TYPE,
                        help=f"machine of each Vertex AI training replica (default {DEFAULT_MACHINE_TYPE})")


def run_compile(args: argparse.Namespace) -> int:
    from contract.config import load_config

    if args.runner not in RUNNERS:
        raise ValueError(f"--runner {args.runner!r} is not supported; supported: {', '.join(RUNNERS)} "
                         "(run locally with `ctr-pipeline run`)")
    config = load_config(args.config)
    models = [m.strip() for m in args.models.split(",") if m.strip()] or None
    spec = compile_kubeflow(config, args.image, args.output, models, args.gpus, args.gpu_type, args.pipeline_root,
                            args.vertex_project, args.vertex_region, args.machine_type)
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    print(f"wrote {args.output}: KFP v2 pipeline '{spec['pipelineSpec']['pipelineInfo']['name']}', "
          f"{len(tasks)} steps, image {args.image}")
    effective = config.model_copy(update={"pipeline_root": args.pipeline_root}) if args.pipeline_root else config
    for key, value in local_paths(effective).items():
        print(f"note: {key} is a local path ({value}); the pipeline's pods must see it at the same path", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="pipeline.kubeflow", description=__doc__.splitlines()[0])
    add_compile_arguments(parser)
    sys.exit(run_compile(parser.parse_args()))
