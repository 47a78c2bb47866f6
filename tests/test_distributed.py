"""Every model trains under MirroredStrategy with two replicas, in float32 and mixed precision."""
import json
import math
import os
import subprocess
import sys

import pytest

from models import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    result = subprocess.run(
        [sys.executable, "-m", "tests.distributed_check", *args], cwd=ROOT, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mixed_precision", [False, True], ids=["float32", "mixed_float16"])
def test_all_models_train_on_two_replicas(mixed_precision):
    names = list(registry.names())
    results = _run(*(["--mixed-precision"] if mixed_precision else []), *names)
    for name in names:
        r = results[name]
        assert r["replicas"] == 2, name
        assert math.isfinite(r["loss"]) and r["finite"], (name, r)
        assert r["logit_dtype"] == "float32", (name, r)
