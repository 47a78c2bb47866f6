"""Static checks of the Dockerfile (docker cannot run here): pins, entry point, serving layout."""
import ast
import json
import os
import re
import shlex

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
REQUIREMENTS = "requirements"


def _instructions(path=DOCKERFILE):
    """[(stage, INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    logical, current = [], ""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            stripped = line.strip()
            if not current and (not stripped or stripped.startswith("#")):
                continue
            if stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            logical.append(current + stripped)
            current = ""
    result, stage = [], None
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arguments.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {arguments}"
            stage = match.group(2)
        result.append((stage, keyword, arguments.strip()))
    return result


def _stage(name):
    found = [(k, a) for s, k, a in _instructions() if s == name]
    assert found, f"no stage {name!r} in the Dockerfile"
    return found


def _exec_form(arguments):
    value = json.loads(arguments)
    assert isinstance(value, list), "use the exec (JSON) form"
    return value


def _pip_installs(stage):
    commands = []
    for keyword, arguments in _stage(stage):
        if keyword == "RUN":
            for command in re.split(r"&&|;", arguments):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"]:
                    commands.append(words[words.index("install") + 1:])
    return commands


def _requirement_files(args):
    return [args[i + 1] for i, word in enumerate(args) if word in ("-c", "-r", "--constraint", "--requirement")]


def test_stages():
    stages = {s: a for s, k, a in _instructions() if k == "FROM"}
    assert stages["pipeline"].split()[0] == "python:3.10-slim"
    assert stages["serving"].split()[0] == "tensorflow/serving:2.16.1"


def _constraint_files_in_repo():
    return {f"{REQUIREMENTS}/{name}" for name in os.listdir(os.path.join(ROOT, REQUIREMENTS))
            if name.startswith("constraints-") and name.endswith(".txt")}


def test_pip_installs_use_exactly_the_repository_constraint_files():
    installs = _pip_installs("pipeline")
    assert installs == [
        ["-c", "requirements/constraints-lock.txt", "-r", "requirements/constraints-top.txt"],
        ["--no-deps", "."],
    ]
    referenced = {f for args in installs for f in _requirement_files(args)}
    assert referenced == _constraint_files_in_repo(), "every constraint file of the repository, and only those"
    copied = [a for k, a in _stage("pipeline") if k == "COPY"]
    assert any(a.split()[0].rstrip("/") == REQUIREMENTS for a in copied), "requirements/ is copied before installing"


def test_pip_installs_match_the_makefile():
    """The image installs what `make install` does, minus the test requirements and -e."""
    makefile = os.path.join(ROOT, "Makefile")
    if not os.path.exists(makefile):
        pytest.skip("no Makefile")
    with open(makefile, encoding="utf-8") as handle:
        lines = handle.read().replace("\\\n", " ").splitlines()
    make_installs = []
    for line in lines:
        if "pip install" in line:
            words = shlex.split(line.split("pip install", 1)[1])
            kept = []
            for word in words:
                if word == f"{REQUIREMENTS}/test.txt" and kept and kept[-1] == "-r":
                    kept.pop()  # the test requirements stay out of the image
                elif word not in ("--quiet", "-q", "-e"):
                    kept.append(word)
            make_installs.append(kept)
    assert make_installs == _pip_installs("pipeline")


def test_package_files_read_by_setup_py_are_copied():
    copied = " ".join(a for k, a in _stage("pipeline") if k == "COPY")
    for needed in ("setup.py", "README.md", "pipeline/", "models/", "ingest/", "transforms/", "serving/"):
        assert needed in copied.split(), needed


def _console_scripts():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return dict(item.replace(" ", "").split("=", 1) for item in scripts)
    raise AssertionError("setup.py declares no entry_points")


def test_entry_point_is_the_console_script_of_setup_py():
    entrypoints = [_exec_form(a) for k, a in _stage("pipeline") if k == "ENTRYPOINT"]
    assert len(entrypoints) == 1 and len(entrypoints[0]) == 1
    script = entrypoints[0][0]
    scripts = _console_scripts()
    assert script in scripts, f"{script} is not a console script of setup.py ({scripts})"
    module, function = scripts[script].split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), function))


def test_serving_stage_model_config_matches_write_models_config(tmp_path):
    from serving.model_config import CONFIG_NAME, write_models_config

    os.makedirs(tmp_path / "dnn" / "1")
    written = write_models_config(str(tmp_path), container_root="/models")
    assert os.path.basename(written) == CONFIG_NAME
    with open(written, encoding="utf-8") as handle:
        assert 'base_path: "/models/dnn"' in handle.read()
    container_config = f"/models/{CONFIG_NAME}"  # where the copied root puts the file in the image

    # the config stage writes it for the models copied to /models, with /models paths
    config_stage = _stage("serving-config")
    assert any(k == "COPY" and a.split()[-1].rstrip("/") == "/models" for k, a in config_stage)
    runs = " ".join(a for k, a in config_stage if k == "RUN")
    assert "write_models_config('/models', container_root='/models')" in runs

    serving = _stage("serving")
    assert ("COPY", "--from=serving-config /models/ /models/") in serving
    command = [word for k, a in serving if k in ("ENTRYPOINT", "CMD") for word in _exec_form(a)]
    assert command[0] == "tensorflow_model_server"
    assert f"--model_config_file={container_config}" in command
    assert "--port=8500" in command


def test_dockerignore_keeps_the_context_small_but_not_what_is_copied():
    with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as handle:
        patterns = {line.strip().rstrip("/") for line in handle if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "data"} <= patterns
    copied = {a.split()[0].rstrip("/") for s, k, a in _instructions() if k == "COPY" and not a.startswith("--from")}
    copied.discard("${SERVING_ROOT}")
    assert copied and not copied & patterns
    assert "serving_models" not in patterns  # the serving target copies it
