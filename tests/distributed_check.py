"""The one MirroredStrategy harness: runs a check on two logical CPU devices, in a fresh process.

The logical devices must be configured before TensorFlow initialises, hence the separate
process. A check is a function ``check(*args) -> JSON-able`` in a test module, named
``"module:function"``; its assertions fail the test, its result comes back:

    result = distributed_check.run("tests.test_distributed:train_two_replicas", "dnn")

Usage: python -m tests.distributed_check module:function [ARG...]  -> the result as JSON on stdout.
"""
import importlib
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ["/cpu:0", "/cpu:1"]


def strategy():
    """The Trainer's MirroredStrategy (models.trainer.distribution_strategy) over the two CPU replicas."""
    from models.trainer import distribution_strategy

    return distribution_strategy(DEVICES)


def run(check: str, *args: str, timeout: int = 1200):
    """Runs ``check`` (``"module:function"``) with ``args`` under two CPU replicas; its result."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "tests.distributed_check", check, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(check: str, *args: str) -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * len(DEVICES))
    module, name = check.split(":")
    result = getattr(importlib.import_module(module), name)(*args)
    print(json.dumps(result))


if __name__ == "__main__":
    _main(*sys.argv[1:])
