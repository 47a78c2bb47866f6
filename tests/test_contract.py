"""The contract package: TensorFlow-free, validates at load what a run would refuse, finds model
versions, reads the feature spec a model carries, types the Trainer's arguments."""
import json
import os
import subprocess
import sys

import pytest

from contract import serving
from contract.config import ConfigError, load_config, parse_config
from contract.model_params import PARAMS, ModelParams
from contract.trainer_args import TrainerArgs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_contract_imports_no_tensorflow_and_nothing_of_the_project():
    code = (
        "import sys\n"
        "import contract.auc, contract.config, contract.feature_spec, contract.features, contract.model_params, "
        "contract.serving, contract.trainer_args\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'apache_beam', 'tfx', 'keras', 'tf_keras', 'models', 'ingest', 'transforms', 'serving', 'pipeline'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_a_misspelled_attribute_is_refused_at_load_naming_it_and_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, "data: {path: x, format: movielens-1m, item_attributes: [genere]}\n"))
    message = str(error.value)
    assert "data.item_attributes" in message and "'genere'" in message and "['genre', 'year']" in message
    with pytest.raises(ConfigError, match="data.user_attributes is set but data.users names no users table"):
        load_config(_write(tmp_path, "data: {path: x, user_attributes: [region]}\n"))


def test_a_misspelled_model_parameter_is_refused_at_load_naming_the_model_and_key(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, "data: {path: x}\ntraining: {models: {din: {attention_unit: [8]}, dnn: {}}}\n"))
    assert "training.models.din.attention_unit" in str(error.value)
    assert "training.models.dnn" not in str(error.value)  # only the entry at fault is named


def test_validate_config_command_reports_both(tmp_path, capsys):
    from pipeline import cli

    path = _write(tmp_path, "data: {path: x, format: kuairand, item_attributes: [duraton]}\n")
    assert cli.main(["validate-config", "--config", path]) == 2
    assert "['duraton'] not available in format kuairand" in capsys.readouterr().err
    path = _write(tmp_path, "data: {path: x}\ntraining: {models: {camn: {routr: false}}}\n")
    assert cli.main(["validate-config", "--config", path]) == 2
    assert "training.models.camn.routr" in capsys.readouterr().err


def test_every_registered_model_has_its_params():
    from models import registry  # the registry imports model modules only when asked

    assert set(PARAMS) == set(registry.names())
    assert all(issubclass(cls, ModelParams) for cls in PARAMS.values())


def _version(root, name, with_model=True):
    path = root / name
    path.mkdir(parents=True)
    if with_model:
        (path / serving.SAVED_MODEL_FILE).write_bytes(b"")
    return path


def test_latest_version_is_the_highest_numeric_folder(tmp_path):
    for name in ("1", "2", "10", "9"):
        _version(tmp_path, name)
    _version(tmp_path, "11", with_model=False)  # still being written: no saved_model.pb
    _version(tmp_path, "99abc")
    _version(tmp_path, "latest")
    (tmp_path / "12").write_text("a file, not a folder")
    assert serving.version_dirs(str(tmp_path)) == [1, 2, 9, 10]
    assert serving.latest_version(str(tmp_path)) == 10
    assert serving.latest_version(str(tmp_path / "absent")) is None
    assert serving.latest_version(str(_version(tmp_path, "empty", with_model=False))) is None


def test_read_feature_spec_says_what_is_missing_and_how_to_reexport(tmp_path):
    with pytest.raises(serving.FeatureSpecMissing) as error:
        serving.read_feature_spec(str(tmp_path))
    message = str(error.value)
    assert serving.FEATURE_SPEC_FILE in message and "re-export" in message and "ctr-pipeline run" in message
    (tmp_path / serving.ASSETS_EXTRA).mkdir()
    (tmp_path / serving.FEATURE_SPEC_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        serving.read_feature_spec(str(tmp_path))
    document = serving.feature_spec_document({"max_length": 20}, {"user_id": ("string", False)})
    (tmp_path / serving.FEATURE_SPEC_FILE).write_text(document)
    read = serving.read_feature_spec(str(tmp_path))
    assert read["spec"] == {"max_length": 20}
    assert read["raw_features"] == {"user_id": {"dtype": "string", "sequence": False}}


def test_trainer_args_round_trip_through_the_custom_config():
    config = parse_config({"data": {"path": "x"}, "training": {"epochs": 3, "models": {"din": {}}}})
    args = TrainerArgs(model_name="din", architecture="din", model_params={}, feature_spec={"max_length": 20},
                       training=config.training, code_fingerprint="abc")
    custom = args.to_custom_config()
    assert "models" not in custom["training"] and custom["training"]["epochs"] == 3
    json.dumps(custom)  # TFX stores it as JSON
    back = TrainerArgs.from_custom_config(custom)
    assert back.training.epochs == 3 and back.model_name == "din" and back.code_fingerprint == "abc"
    with pytest.raises(ValueError, match="modle_name"):
        TrainerArgs.from_custom_config({**custom, "modle_name": "x"})
