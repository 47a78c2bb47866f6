"""Where ``ctr-pipeline`` writes what its libraries say.

TensorFlow, absl, Beam and TFX log warnings by the dozen, and their dependencies raise Python
warnings; what a user reads is the command's own output (its prints, the server's request log,
``error: ...``). ``routed`` sends the libraries' log records and every Python warning to a log
file only, or to the log file and stderr with ``--verbose``; every other record goes to both.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Iterator, Optional

LOG_NAME = "ctr-pipeline.log"
LOG_ENV = "CTR_PIPELINE_LOG"
DEFAULT_LOG = os.path.join("~", ".cache", "ctr-pipeline", LOG_NAME)
WHERE = (f"${LOG_ENV} if set, else {LOG_NAME} in the config's pipeline_root, "
         f"else {DEFAULT_LOG}")
# logger names (and their children) of the libraries; py.warnings carries the Python warnings
LIBRARIES = ("tensorflow", "absl", "apache_beam", "tfx", "ml_metadata", "py.warnings")
CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(message)s"  # the server's request log, as before


def log_file(pipeline_root: Optional[str]) -> str:
    """The log file (``WHERE``; a remote pipeline_root, ``gs://...``, is not used), its
    directory made."""
    if os.environ.get(LOG_ENV):
        path = os.environ[LOG_ENV]
    elif pipeline_root and "://" not in pipeline_root:
        path = os.path.join(pipeline_root, LOG_NAME)
    else:
        path = os.path.expanduser(DEFAULT_LOG)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


@contextlib.contextmanager
def routed(path: str, verbose: bool) -> Iterator[None]:
    """Within it, the libraries' records and Python warnings go to ``path`` (appended; created
    when the first one comes) and, if ``verbose``, to stderr; the other records go to both.
    TensorFlow's C++ log (read when TensorFlow is imported) is off unless ``verbose`` or
    TF_CPP_MIN_LOG_LEVEL says otherwise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    to_file = logging.FileHandler(path, delay=True, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    if not verbose:
        to_console.addFilter(lambda record: not record.name.startswith(LIBRARIES))
    root = logging.getLogger()
    root.addHandler(to_file)  # TensorFlow adds a stderr handler of its own only when root has none
    root.addHandler(to_console)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for handler in (to_file, to_console):
            root.removeHandler(handler)
            handler.close()


def record_traceback(path: str, verbose: bool) -> None:
    """Appends the traceback of the exception being handled to ``path`` (and prints it on stderr
    if ``verbose``)."""
    with open(path, "a", encoding="utf-8") as log:
        traceback.print_exc(file=log)
    if verbose:
        traceback.print_exc()
