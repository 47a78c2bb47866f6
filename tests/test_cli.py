"""The console script: every subcommand documents itself; bad configs exit 2 naming the key.

The parser is tested in-process; one subprocess proves that the help loads neither TensorFlow nor Beam.
"""
import argparse
import os
import subprocess
import sys

import pytest

from pipeline import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["run", "report", "validate-config", "generate-data", "serve", "predict", "score", "compile"]


def _exit_code_and_output(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def _subparser(command):
    parser = argparse.ArgumentParser()
    cli._function(cli.COMMANDS[command].add_arguments)(parser)
    return parser


def _options(command):
    return [s for action in _subparser(command)._actions for s in action.option_strings if s.startswith("--") and s != "--help"]


def test_top_level_help_lists_every_subcommand_with_its_help_line(capsys):
    code, out, _ = _exit_code_and_output(["--help"], capsys)
    assert code == 0 and out.startswith("usage: ctr-pipeline")
    assert list(cli.COMMANDS) == COMMANDS
    for name, command in cli.COMMANDS.items():
        assert name in out and command.help[:40] in " ".join(out.split()), name


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_documents_all_its_options(command, capsys):
    code, out, _ = _exit_code_and_output([command, "--help"], capsys)
    assert code == 0 and out.startswith("usage: ctr-pipeline " + command)
    options = _options(command)
    assert options and all(option in out for option in options), (command, options)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_subcommand_runs_its_own_function_and_requires_its_options(command, capsys):
    required = [a for a in _subparser(command)._actions if a.required]
    argv = [command] + [x for a in required for x in (a.option_strings[0], "x")]
    args = cli.build_parser(command).parse_args(argv)
    assert args.command == command and cli._function(args.func) is cli._function(cli.COMMANDS[command].run)
    if required:
        code, _, err = _exit_code_and_output([command], capsys)
        assert code == 2 and "the following arguments are required" in err


def test_options_keep_their_types_and_defaults():
    args = cli.build_parser("generate-data").parse_args(
        ["generate-data", "--output", "d", "--preset", "known-answer", "--users", "7", "--events-per-user", "3"])
    assert (args.output, args.preset, args.users, args.events_per_user, args.items, args.seed) == ("d", "known-answer", 7, 3, None, None)
    args = cli.build_parser("run").parse_args(["run", "--config", "c.yaml"])
    assert (args.config, args.models) == ("c.yaml", "")
    assert cli._models_arg("dnn, din,") == ["dnn", "din"] and cli._models_arg("") is None


def test_unknown_or_missing_subcommand_exits_2(capsys):
    code, _, err = _exit_code_and_output(["bogus"], capsys)
    assert code == 2 and "invalid choice: 'bogus'" in err
    code, _, err = _exit_code_and_output([], capsys)
    assert code == 2 and "COMMAND" in err


def test_invalid_config_exits_2_and_names_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {path: x}\ntraining: {epochs: -1}\n")
    assert cli.main(["validate-config", "--config", str(path)]) == 2
    assert "training.epochs" in capsys.readouterr().err


_HELP_WITHOUT_TENSORFLOW = """
import contextlib, io, sys
import pipeline.cli as c
for argv in [["--help"]] + [[command, "--help"] for command in {commands}]:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            c.main(argv)
        except SystemExit as exited:
            assert exited.code == 0, (argv, exited.code)
    assert out.getvalue().startswith("usage: ctr-pipeline"), argv
heavy = sorted(m for m in ("tensorflow", "apache_beam", "tfx", "grpc", "serving.server", "serving.client",
                          "serving.grpc_client", "serving.batch_score")
               if m in sys.modules)
assert not heavy, heavy
print("LIGHT_OK")
"""


def test_help_imports_neither_tensorflow_nor_beam():
    """Every subcommand's help, serve, predict and score included, in a fresh interpreter (this
    one has TensorFlow loaded by other tests)."""
    done = subprocess.run([sys.executable, "-c", _HELP_WITHOUT_TENSORFLOW.format(commands=COMMANDS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "LIGHT_OK" in done.stdout, done.stderr[-4000:]


class AtomicFunction:  # stands in for tensorflow's, whose __del__ fails at interpreter exit
    def __del__(self):
        pass


def test_only_tensorflows_teardown_errors_are_silenced(monkeypatch):
    import types

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    cli._ignore_tensorflow_teardown_errors()
    teardown = types.SimpleNamespace(exc_value=TypeError("'NoneType' object is not subscriptable"), object=AtomicFunction.__del__)
    other_type = types.SimpleNamespace(exc_value=RuntimeError("refcount"), object=AtomicFunction.__del__)
    elsewhere = types.SimpleNamespace(exc_value=TypeError("boom"), object=test_invalid_config_exits_2_and_names_the_key)
    for unraisable in (teardown, other_type, elsewhere):
        sys.unraisablehook(unraisable)
    assert printed == [other_type, elsewhere]
