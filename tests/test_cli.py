"""The console script: every subcommand documents itself; bad configs exit 2 naming the key."""
import subprocess
import sys

import pytest

COMMANDS = ["run", "report", "validate-config", "generate-data", "serve", "predict", "score", "compile"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300)


def test_every_subcommand_has_help():
    out = _cli("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in COMMANDS)
    for command in COMMANDS:
        result = _cli(command, "--help")
        assert result.returncode == 0 and "usage: ctr-pipeline " + command in result.stdout, command


def test_invalid_config_exits_2_and_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {path: x}\ntraining: {epochs: -1}\n")
    result = _cli("validate-config", "--config", str(path))
    assert result.returncode == 2 and "training.epochs" in result.stderr


class AtomicFunction:  # stands in for tensorflow's, whose __del__ fails at interpreter exit
    def __del__(self):
        pass


def test_only_tensorflows_teardown_errors_are_silenced(monkeypatch):
    import types

    from pipeline import cli

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    cli._ignore_tensorflow_teardown_errors()
    teardown = types.SimpleNamespace(exc_value=TypeError("'NoneType' object is not subscriptable"), object=AtomicFunction.__del__)
    other_type = types.SimpleNamespace(exc_value=RuntimeError("refcount"), object=AtomicFunction.__del__)
    elsewhere = types.SimpleNamespace(exc_value=TypeError("boom"), object=test_every_subcommand_has_help)
    for unraisable in (teardown, other_type, elsewhere):
        sys.unraisablehook(unraisable)
    assert printed == [other_type, elsewhere]
