"""Batch scoring: the input files (a file, a glob or a directory) and whether they are logs or
TFRecords (``--input-format auto``)."""
from __future__ import annotations

import os
from typing import List

# compressed files that are logs, not TFRecords (--input-format auto)
_LOG_GZ_SUFFIXES = (".csv.gz", ".tsv.gz", ".dat.gz", ".json.gz", ".txt.gz")


def list_input_files(path: str) -> List[str]:
    """A file, a glob, or every non-hidden file below a directory."""
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        files = [
            os.path.join(root, name)
            for root, _, names in tf.io.gfile.walk(path)
            for name in names
            if not name.startswith((".", "_"))
            and not any(part.startswith((".", "_")) for part in os.path.relpath(root, path).split(os.sep) if part != ".")
        ]
    elif any(c in path for c in "*?["):
        files = tf.io.gfile.glob(path)
    else:
        files = [path] if tf.io.gfile.exists(path) else []
    if not files:
        raise FileNotFoundError(f"no input files at {path}")
    return sorted(files)


def is_tfrecord_name(path: str) -> bool:
    name = os.path.basename(path).lower()
    if "tfrecord" in name:
        return True
    return name.endswith(".gz") and not name.endswith(_LOG_GZ_SUFFIXES)


def detect_input_format(path: str) -> str:
    """"tfrecord" when every input file looks like a TFRecord file, "logs" when none does."""
    files = list_input_files(path)
    flags = {is_tfrecord_name(f) for f in files}
    if flags == {True}:
        return "tfrecord"
    if flags == {False}:
        return "logs"
    raise ValueError(f"{path} mixes TFRecord files and other files; choose with --input-format tfrecord|logs")
