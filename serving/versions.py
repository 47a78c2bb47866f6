"""The gRPC stand-in server (``serving.server``): the version manager. Which versions of each
model are loaded, served and known; the poller's loading (newest stable version, warmup, atomic
swap, unload once the requests in flight finish) and the statuses GetModelStatus answers."""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from contract import serving as contract
from serving.request_tensors import ServingError
from serving.servable import Servable

log = logging.getLogger("serving.server")  # one logger for the whole server, as before its split

State = get_model_status_pb2.ModelVersionStatus.State
UNKNOWN_ERROR = 2  # tensorflow.error.Code.UNKNOWN
# While a version loads and warms up, this many requests run at a time (the others wait, holding
# neither the GIL nor a core), each followed by a rest as long as it took: under 50 clients the
# load otherwise shares the GIL and the cores with them, and took 24 s instead of about 8 s
# (benchmarks/reliability.py's soak; benchmarks/results/reliability_load_turns).
REQUESTS_DURING_LOAD = 1


@dataclasses.dataclass
class VersionStatus:
    state: int
    error_code: int = 0  # tensorflow.error.Code; 0 = OK
    error_message: str = ""


class ModelManager:
    """Which versions are loaded, served and known, with the poller's loading logic.

    ``serving[name]`` is the version answering requests; a version leaves it atomically (under
    ``_lock``) when a newer one is ready, and is unloaded when its last request finishes. While the
    poller loads a version, requests take turns (``REQUESTS_DURING_LOAD`` at a time, each turn
    followed by a rest as long): the version serving keeps answering, and the load gets at least
    half of the time.
    """

    def __init__(self, model_base: str, max_batch_size: int = 1000):
        if not os.path.isdir(model_base):
            raise FileNotFoundError(f"model base directory {model_base!r} does not exist")
        self.model_base = model_base
        self.max_batch_size = max_batch_size
        self.serving: Dict[str, Servable] = {}
        self.status: Dict[str, Dict[int, VersionStatus]] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._fingerprints: Dict[Tuple[str, int], tuple] = {}  # as seen at the previous poll
        self._failed: Dict[Tuple[str, int], tuple] = {}  # fingerprint of a version that failed
        self._loading = threading.Event()
        self._turns_during_load = threading.Semaphore(REQUESTS_DURING_LOAD)

    # -- requests --
    @contextlib.contextmanager
    def acquire(self, name: str, version: Optional[int] = None) -> Iterator[Servable]:
        """The servable answering a request; it stays loaded until the block exits."""
        with self._turn():
            with self._lock:
                servable = self._reserve(name, version)
            try:
                yield servable
            finally:
                with self._lock:
                    servable.in_flight -= 1
                    if servable.retired and servable.in_flight == 0:
                        self._unload(servable)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """A request's turn: at once, or while a version loads, one of ``REQUESTS_DURING_LOAD``
        followed by a rest as long as the request took."""
        if not self._loading.is_set():
            yield
            return
        with self._turns_during_load:
            started = time.perf_counter()
            yield
            time.sleep(time.perf_counter() - started)  # and rests as long: half the time is the load's

    def _reserve(self, name: str, version: Optional[int]) -> Servable:
        """The servable for a request, its ``in_flight`` counted (called under ``_lock``)."""
        servable = self.serving.get(name)
        if servable is None or (version is not None and servable.version != version):
            wanted = f"version {version}" if version is not None else "latest version"
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"servable not found: model '{name}', {wanted}")
        servable.in_flight += 1
        return servable

    def version_statuses(
        self, name: str, version: Optional[int] = None
    ) -> List[get_model_status_pb2.ModelVersionStatus]:
        with self._lock:
            known = dict(self.status.get(name, {}))
        if version is not None:
            known = {v: s for v, s in known.items() if v == version}
        if not known:
            wanted = f"version {version}" if version is not None else "any version"
            raise ServingError(
                grpc.StatusCode.NOT_FOUND, f"no status known for model '{name}', {wanted}"
            )
        statuses = []
        for v, s in sorted(known.items()):
            proto = get_model_status_pb2.ModelVersionStatus(version=v, state=s.state)
            proto.status.error_code = s.error_code
            proto.status.error_message = s.error_message
            statuses.append(proto)
        return statuses

    # -- loading --
    def poll_once(self, wait_until_stable: bool = True) -> None:
        """Loads the newest loadable version of every model newer than the one served.

        With ``wait_until_stable`` a version directory is only loaded once its files are
        unchanged since the previous poll.
        """
        with self._poll_lock:
            for name in sorted(os.listdir(self.model_base)):
                model_dir = os.path.join(self.model_base, name)
                if not name.startswith(".") and os.path.isdir(model_dir):
                    self._poll_model(name, model_dir, wait_until_stable)

    def _poll_model(self, name: str, model_dir: str, wait_until_stable: bool) -> None:
        served = self.serving.get(name)
        newer = [v for v in contract.version_dirs(model_dir) if served is None or v > served.version]
        for version in sorted(newer, reverse=True):
            path = os.path.join(model_dir, str(version))
            key = (name, version)
            fingerprint = _fingerprint(path)
            changed = self._fingerprints.get(key) != fingerprint
            self._fingerprints[key] = fingerprint
            if (wait_until_stable and changed) or self._failed.get(key) == fingerprint:
                continue
            if self._load(name, version, path, fingerprint):
                return

    def _load(self, name: str, version: int, path: str, fingerprint: tuple) -> bool:
        key = (name, version)
        self._set_status(name, version, VersionStatus(State.LOADING))
        self._loading.set()
        try:
            servable = Servable(name, version, path)
            servable.warm_up(self.max_batch_size)
        except Exception as e:  # a load must never take the server down
            log.error("model '%s' version %d failed to load from %s: %s", name, version, path, e)
            code = e.error_code if isinstance(e, tf.errors.OpError) else UNKNOWN_ERROR
            self._set_status(name, version, VersionStatus(State.END, code, str(e)))
            self._failed[key] = fingerprint
            return False
        finally:
            self._loading.clear()
        self._failed.pop(key, None)
        self._swap_in(servable)
        log.info("serving %s (%d warmup requests replayed)", servable, servable.warmup_count)
        return True

    def _swap_in(self, servable: Servable) -> None:
        with self._lock:
            old = self.serving.get(servable.name)
            self.serving[servable.name] = servable
            self.status.setdefault(servable.name, {})[servable.version] = VersionStatus(
                State.AVAILABLE
            )
            if old is not None:
                old.retired = True
                self.status[old.name][old.version] = VersionStatus(State.UNLOADING)
                if old.in_flight == 0:
                    self._unload(old)

    def _unload(self, servable: Servable) -> None:
        """Drops the last reference to a retired version (called under ``_lock``)."""
        servable.unload()
        self.status[servable.name][servable.version] = VersionStatus(State.END)
        log.info("unloaded %s", servable)

    def _set_status(self, name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self.status.setdefault(name, {})[version] = status


def _fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file below ``path``: changes while it is written."""
    files = []
    for root, _, names in os.walk(path):
        for file_name in names:
            full = os.path.join(root, file_name)
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(full)
                files.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))
