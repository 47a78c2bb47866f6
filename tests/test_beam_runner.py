"""``beam.runner``: the options of each runner, and the portable runner's SDK worker pool, which
really runs a Beam job's steps in processes other than this one and is gone afterwards."""
import glob
import os
import socket

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from contract.beam_runner import beam_pipeline_args
from contract.config import BeamConfig, ConfigError, parse_config
from ingest import synthetic
from pipeline.kubeflow import compile_kubeflow


def test_direct_runner_options_are_the_direct_settings_then_the_extra_args():
    beam_config = BeamConfig(direct_num_workers=2, extra_args=["--max_num_workers=4"])
    assert beam_config.pipeline_args() == [
        "--direct_running_mode=in_memory", "--direct_num_workers=2", "--max_num_workers=4"]


def test_portable_runner_options_point_at_the_worker_pool():
    beam_config = BeamConfig(runner="portable", extra_args=["--experiments=x"])
    assert beam_config.pipeline_args(worker_pool="localhost:5000") == [
        "--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
        "--environment_config=localhost:5000", "--experiments=x"]
    with pytest.raises(ValueError, match="needs a running SDK worker pool"):
        beam_config.pipeline_args()


def test_portable_runner_refuses_a_second_runner_in_extra_args(tmp_path):
    raw = {"data": synthetic.data_config(str(tmp_path)), "beam": {"runner": "portable", "extra_args": ["--runner=FlinkRunner"]}}
    with pytest.raises(ConfigError, match=r"beam.*remove --runner from beam.extra_args"):
        parse_config(raw)
    with pytest.raises(ConfigError, match=r"beam\.runner"):
        parse_config({**raw, "beam": {"runner": "spark"}})


def test_kubeflow_compile_refuses_the_local_portable_runner(tmp_path):
    config = parse_config({"data": synthetic.data_config(str(tmp_path)), "beam": {"runner": "portable"}})
    with pytest.raises(ValueError, match="on Kubeflow set beam.runner: direct"):
        compile_kubeflow(config, image="img", output_file=str(tmp_path / "spec.json"))


def _listening(address):
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def test_portable_runner_runs_the_steps_in_the_pools_worker_processes(tmp_path):
    log = tmp_path / "workers.log"
    with beam_pipeline_args(BeamConfig(runner="portable"), str(log)) as args:
        address = args[3].split("=", 1)[1]
        assert _listening(address)
        with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
            (pipeline | beam.Create(range(50)) | beam.Reshuffle()
             | beam.Map(lambda number: f"{number} {os.getpid()}") | beam.io.WriteToText(str(tmp_path / "out")))
    lines = [line.split() for path in glob.glob(str(tmp_path / "out*")) for line in open(path, encoding="utf-8")]
    assert sorted(int(number) for number, _ in lines) == list(range(50))
    assert str(os.getpid()) not in {pid for _, pid in lines}, "a step ran in the launching process"
    assert not _listening(address), "the worker pool outlived the block"
    assert "Starting worker" in log.read_text(encoding="utf-8")


def test_a_fixed_pool_port_already_in_use_is_refused_before_anything_runs(tmp_path):
    with socket.socket() as holder:
        holder.bind(("localhost", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"beam.worker_pool_port {port} is in use"):
            with beam_pipeline_args(BeamConfig(runner="portable", worker_pool_port=port), str(tmp_path / "log")):
                pass
