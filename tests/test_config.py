"""YAML config: validated on load; errors name the key path."""
import pytest

from contract.config import ConfigError, load_config, parse_config, validate_model_params


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    config = load_config(_write(tmp_path, "data: {path: logs}\npipeline_root: runs/x\n"))
    assert config.data.path == str(tmp_path / "logs") and config.pipeline_root == str(tmp_path / "runs/x")
    assert config.metadata_path.endswith("runs/x/metadata.sqlite")


@pytest.mark.parametrize("text, fragment", [
    ("data: {path: x, colums: {}}\n", "data.colums"),
    ("data: {path: x}\ntraining: {batch_size: many}\n", "training.batch_size"),
    ("data: {path: x}\ntraining: {reduce_lr_on_plateau: 1.5}\n", "training.reduce_lr_on_plateau"),
    ("data: {path: x}\nsplit: {train: 0.5, eval: 0.1, test: 0.1}\n", "split"),
    ("data: {path: x}\nsequences: {max_length: 0}\n", "sequences.max_length"),
    ("pipeline_name: x\n", "data"),
    ("data: {path: x, format: csv}\n", "data.format"),
])
def test_bad_configs_name_the_key(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, text))
    assert fragment in str(error.value)


def test_model_parameters_are_validated_by_the_model_at_load(tmp_path):
    with pytest.raises(ConfigError) as error:
        parse_config({"data": {"path": "x"}, "training": {"models": {"din": {"attention_unit": [8]}, "nope": {}}}})
    assert "training.models.din.attention_unit" in str(error.value)
    assert "training.models.nope: unknown model" in str(error.value)


def test_a_named_variant_is_validated_by_its_architecture():
    models = {
        "fadidn_no_contrastive": {"architecture": "fadidn", "contrastive": False},
        "camn_typo": {"architecture": "camn", "routr": False},
        "x": {"architecture": "nope"},
        "bad-name": {"architecture": "dnn"},
    }
    with pytest.raises(ConfigError) as error:
        parse_config({"data": {"path": "x"}, "training": {"models": models}})
    message = str(error.value)
    assert "training.models.camn_typo.routr" in message
    assert "training.models.x.architecture: unknown model 'nope'" in message
    assert "training.models.bad-name: a model name may hold only" in message
    assert "fadidn_no_contrastive" not in message
    good = parse_config({"data": {"path": "x"}, "training": {"models": {"fadidn_no_contrastive": models["fadidn_no_contrastive"]}}})
    choice = validate_model_params(good)["fadidn_no_contrastive"]
    assert choice.architecture == "fadidn" and choice.params.contrastive is False


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "data: [unclosed\n"))


def _generic_config(tmp_path, item_attributes, items_format="csv"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "events.csv").write_text("user_id,item_id,timestamp,clicked\nu1,i1,1700000000,1\n")
    if items_format == "csv":
        (data / "items.csv").write_text("item_id,genre,brand\ni1,g1,b1\n")
    return _write(tmp_path, (
        f"data: {{path: data, events: events.csv, items: items.{items_format}, file_format: auto,\n"
        f"       columns: {{liked: null, disliked: null}}, item_attributes: {item_attributes}}}\n"
    ))


def test_validate_config_refuses_a_generic_attribute_its_table_lacks(tmp_path, capsys):
    """The generic format's attributes are column names: the config alone cannot refuse a
    misspelt one, validate-config reads the table's header."""
    from pipeline import cli

    path = _generic_config(tmp_path, "[genere]")
    assert cli.main(["validate-config", "--config", path]) == 2
    error = capsys.readouterr().err
    items = tmp_path / "data" / "items.csv"
    assert f"data.item_attributes: ['genere'] not available in the items table {items}" in error
    assert "(available: ['item_id', 'genre', 'brand'])" in error

    path = _generic_config(tmp_path, "[genre, brand]")
    assert cli.main(["validate-config", "--config", path]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_config_reads_a_parquet_tables_schema_and_refuses_a_missing_table(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import cli

    path = _generic_config(tmp_path, "[genere]", items_format="parquet")
    assert cli.main(["validate-config", "--config", path]) == 2
    assert f"data.items: {tmp_path / 'data' / 'items.parquet'} does not exist" in capsys.readouterr().err
    pq.write_table(pa.table({"item_id": ["i1"], "genre": ["g1"]}), str(tmp_path / "data" / "items.parquet"))
    assert cli.main(["validate-config", "--config", path]) == 2
    assert "data.item_attributes: ['genere'] not available in the items table" in capsys.readouterr().err
