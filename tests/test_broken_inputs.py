"""A new user's broken configs and logs: each is refused up front by ``validate-config`` (and by
``run`` before TensorFlow loads) with the exact message below, every problem at once; a few bad
rows are a note, not a refusal. The messages are the user interface: a change to one is a change
to this table."""
import copy
import os
import subprocess
import sys

import pytest
import yaml

from pipeline import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "user_id,item_id,timestamp,clicked,liked,disliked"
GOOD_CONFIG = {
    "pipeline_root": "runs",
    "data": {
        "format": "generic", "path": "data", "events": "events.csv", "items": "items.csv",
        "columns": {"liked": "liked", "disliked": "disliked"}, "item_attributes": ["category"],
    },
    "training": {"models": {"dnn": {}}},
}


def _rows(count=20, start=1700000000, step=60, row="u{u},i{i},{ts},{c},0,0"):
    return [row.format(u=n % 3, i=n % 5, ts=start + n * step, c=n % 2) for n in range(count)]


def _write_logs(directory, rows, header=HEADER, items="item_id,category\n" + "".join(f"i{i},c{i % 2}\n" for i in range(5))):
    directory.mkdir(exist_ok=True)
    (directory / "events.csv").write_text("\n".join([header, *rows]) + "\n")
    if items is not None:
        (directory / "items.csv").write_text(items)


def _check(tmp_path, capsys, config=None, rows=None, header=HEADER, items=..., raw_config=None):
    """Writes a config (a mapping, or the raw text) and logs, runs validate-config: (exit code, output)."""
    kwargs = {} if items is ... else {"items": items}
    _write_logs(tmp_path / "data", _rows() if rows is None else rows, header, **kwargs)
    path = tmp_path / "config.yaml"
    path.write_text(raw_config if raw_config is not None else yaml.safe_dump(config or GOOD_CONFIG))
    code = cli.main(["validate-config", "--config", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _config(**data_changes):
    config = copy.deepcopy(GOOD_CONFIG)
    for key, value in data_changes.items():
        if value is None:
            config["data"].pop(key)
        else:
            config["data"][key] = value
    return config


def _columns(**changes):
    return _config(columns={**GOOD_CONFIG["data"]["columns"], **changes})


def test_a_good_config_and_its_data_pass(tmp_path, capsys):
    code, output = _check(tmp_path, capsys)
    assert code == 0
    assert output == (f"{tmp_path}/config.yaml: valid (1 models: dnn); the data's files, headers and first rows match it\n")


# (kind, arguments of _check, the lines of the error after "error: <config>: ")
CONFIG_MISTAKES = [
    ("unknown key", {"raw_config": "data: {path: data}\ntrainig: {epochs: 3}\n"},
     ["1 problem(s):", "  trainig: Extra inputs are not permitted"]),
    ("not YAML", {"raw_config": "data: [path\n"}, None),
    ("several schema and model mistakes at once",
     {"raw_config": "data: {path: data, format: csv}\ntraining: {epochs: ten, models: {din: {attention_unit: [8]}, nope: {}}}\n"
                    "split: {train: 0.9, eval: 0.1, test: 0.1}\n"},
     ["5 problem(s):",
      "  data.format: Input should be 'generic', 'movielens-100k', 'movielens-1m' or 'kuairand'",
      "  split: Value error, train + eval + test must sum to 1",
      "  training.epochs: Input should be a valid integer, unable to parse string as an integer",
      "  training.models.din.attention_unit: Extra inputs are not permitted",
      "  training.models.nope: unknown model 'nope' (known: dnn, din, fadidn, camn, dumn, tf4ctr)"]),
    ("no click label", {"config": _columns(clicked=None)},
     ["1 problem(s):", "  data: Value error, columns: set either `rating` or `clicked` so a click label exists"]),
]


@pytest.mark.parametrize("kind,arguments,lines", CONFIG_MISTAKES, ids=[c[0] for c in CONFIG_MISTAKES])
def test_config_mistakes_are_all_named_at_once(tmp_path, capsys, kind, arguments, lines):
    code, output = _check(tmp_path, capsys, **arguments)
    assert code == 2
    if lines is None:
        assert output.startswith(f"error: {tmp_path}/config.yaml: not valid YAML: ")
    else:
        assert output == f"error: {tmp_path}/config.yaml: " + "\n".join(lines) + "\n"


def _data_mistakes(tmp):
    data = f"{tmp}/data"
    columns = "user_id, item_id, timestamp, clicked, liked, disliked"
    return [
        ("data path missing", {"config": _config(path="nowhere")}, [f"  data.path: {tmp}/nowhere does not exist"]),
        ("events file missing", {"config": _config(events="clicks.csv")}, [f"  data.events: {data}/clicks.csv does not exist"]),
        ("misspelt column", {"config": _columns(timestamp="timestmp")},
         [f"  data.columns.timestamp: column 'timestmp' is not in {data}/events.csv (its columns: {columns}); "
          "did you mean 'timestamp'?"]),
        ("abbreviated column", {"config": _columns(timestamp="time")},
         [f"  data.columns.timestamp: column 'time' is not in {data}/events.csv (its columns: {columns}); "
          "did you mean 'timestamp'?"]),
        ("flag column the log lacks", {"header": "user_id,item_id,timestamp,clicked,x,disliked"},
         [f"  data.columns.liked: column 'liked' is not in {data}/events.csv (its columns: user_id, item_id, timestamp, "
          "clicked, x, disliked) (null if the log has none)"]),
        ("semicolon separated", {"header": HEADER.replace(",", ";"), "rows": [r.replace(",", ";") for r in _rows()]},
         [f"  {data}/events.csv: the header is one column ('{HEADER.replace(',', ';')}'): the generic format reads "
          "comma-separated CSV or Parquet; convert the file"]),
        ("attribute not in the items table", {"config": _config(item_attributes=["categry"])},
         [f"  data.item_attributes: ['categry'] not available in the items table {data}/items.csv "
          "(available: ['item_id', 'category'])"]),
        ("items table missing", {"items": None}, [f"  data.items: {data}/items.csv does not exist"]),
        ("items table without the item id", {"items": "id,category\ni1,c1\n"},
         [f"  data.items: {data}/items.csv has no 'item_id' column (the events' item id, data.columns.item_id)"]),
        ("milliseconds read as seconds", {"config": _config(timestamp_format="seconds"), "rows": _rows(start=1700000000000)},
         [f"  20 of the first 20 rows would be quarantined as absurd_timestamp (first: {data}/events.csv:2: timestamp "
          "'1700000000000' (read as seconds) is after data.max_timestamp=4102444800): timestamps past data.max_timestamp: "
          "milliseconds or microseconds read as seconds? set data.timestamp_format (auto tells them apart by magnitude)"]),
        ("seconds read as milliseconds", {"config": _config(timestamp_format="milliseconds")},
         [f"  the timestamps read as dates before 1980 (first: {data}/events.csv:2 is 1970-01-20): seconds read as "
          "milliseconds or microseconds? set data.timestamp_format"]),
        ("dates in an unknown form", {"rows": _rows(row="u{u},i{i},05/12/2026 10:{c}0,{c},0,0")},
         [f"  20 of the first 20 rows would be quarantined as unparsable_timestamp (first: {data}/events.csv:2: timestamp "
          "'05/12/2026 10:00' is neither a decimal number nor an ISO-8601 / RFC 3339 date or time; accepted: unix epoch "
          "seconds, milliseconds or microseconds as a decimal number (e.g. 1391904000, 1391904000.5, 1391904000500; the "
          "unit by magnitude: below 1e11 seconds, below 1e14 milliseconds, else microseconds) or an ISO-8601 / RFC 3339 "
          "date or date and time (e.g. 2014-02-09, 2014-02-09T00:00:00.5Z, 2014-02-09 02:00+02:00, 20140209T020000+0200; "
          "no offset = UTC)): is data.columns.timestamp the time column? if so, convert it to one of the accepted forms"]),
        ("yes/no flags", {"rows": _rows(row="u{u},i{i},{ts},yes,0,0")},
         [f"  20 of the first 20 rows would be quarantined as invalid_flag (first: {data}/events.csv:2: clicked 'yes' is "
          "not 0, 1, true or false): flag columns hold 0, 1, true or false: are data.columns.clicked/liked/disliked the "
          "flag columns? (a 1..5 rating goes in data.columns.rating)"]),
        ("click flags mapped as a rating", {"config": _columns(rating="clicked", clicked=None), "rows": _rows(row="u{u},i{i},{ts},0,0,0")},
         [f"  20 of the first 20 rows would be quarantined as rating_out_of_range (first: {data}/events.csv:2: rating '0' "
          "is outside 1..5): data.columns.rating must hold ratings 1..5; a 0/1 click flag goes in data.columns.clicked"]),
        ("CSV read as Parquet", {"config": _config(file_format="parquet", items=None, item_attributes=[])},
         [f"  {data}/events.csv: not a readable Parquet file (Parquet magic bytes not found in footer. Either the file "
          "is corrupted or this is not a parquet file.); is data.file_format right?"]),
        ("header only", {"rows": []}, [f"  the event files ({data}/events.csv) hold no rows"]),
    ]


DATA_KINDS = [case[0] for case in _data_mistakes("")]


@pytest.mark.parametrize("kind", DATA_KINDS)
def test_data_mistakes_are_named_with_their_fix(tmp_path, capsys, kind):
    _, arguments, lines = next(case for case in _data_mistakes(tmp_path) if case[0] == kind)
    code, output = _check(tmp_path, capsys, **arguments)
    assert code == 2
    error = output[output.index("error: "):]
    assert error == (f"error: {tmp_path}/config.yaml: the data does not match the config ({len(lines)} problem(s)):\n"
                     + "\n".join(lines) + "\n")


def test_a_few_bad_rows_and_unmapped_flags_are_notes_not_refusals(tmp_path, capsys):
    config = _columns(liked=None, disliked=None)
    rows = _rows()
    rows[3] = "u1,i1,,1,0,0"
    code, output = _check(tmp_path, capsys, config=config, rows=rows)
    assert code == 0
    assert output.splitlines()[:3] == [
        "note: data.columns.liked is not mapped: no event is liked, its sequence stays empty "
        "(the events have a 'liked' column: map it with `liked: liked`)",
        "note: data.columns.disliked is not mapped: no event is disliked, its sequence stays empty "
        "(the events have a 'disliked' column: map it with `disliked: disliked`)",
        f"note: 1 of the first 20 rows would be quarantined as missing_field (first: {tmp_path}/data/events.csv:5: "
        "empty: timestamp); the run counts and quarantines such rows",
    ]


def test_run_refuses_the_same_mistakes_before_loading_tensorflow(tmp_path):
    """``run`` starts with the same check: a misspelt column or model fails at once, without TensorFlow."""
    _write_logs(tmp_path / "data", _rows())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_columns(timestamp="timestmp")))
    probe = ("import sys; from pipeline import cli; code = cli.main(sys.argv[1:]); "
             "print('tensorflow loaded' if 'tensorflow' in sys.modules else 'tensorflow not loaded'); sys.exit(code)")
    for extra, expected in (([], "data.columns.timestamp: column 'timestmp' is not in"),
                            (["--models", "dnn,dinn"], None)):
        if extra:
            (tmp_path / "config.yaml").write_text(yaml.safe_dump(GOOD_CONFIG))
            expected = f"error: --models: ['dinn'] are not in training.models of {tmp_path}/config.yaml (dnn)"
        result = subprocess.run([sys.executable, "-c", probe, "run", "--config", str(tmp_path / "config.yaml"), *extra],
                                cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert result.stdout.strip().endswith("tensorflow not loaded")
