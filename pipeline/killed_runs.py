"""Cleaning up after a killed local run, before the next one starts.

A local run that is killed (Ctrl-C twice, OOM, a closed terminal) leaves its executions RUNNING in
ML Metadata, their output artifacts PENDING, and the folders those outputs were being written to
on disk. ``run_lock`` makes one local run per pipeline root at a time, so once it is held every
RUNNING execution belongs to a run that has died: ``abandon_killed_executions`` marks each FAILED
and removes the folders it was writing (marking any unpublished output ABANDONED), so that neither
a reader of ML Metadata nor a look at the pipeline root takes a half-written model for an output.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
from typing import Iterator, List

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

LOCK_FILE = ".ctr-pipeline-run.lock"
KILLED_NOTE = "ctr_pipeline_note"  # custom property on the executions marked FAILED here
NODE_CONTEXT = "node"  # TFX's context type of a pipeline node


class RunInProgress(Exception):
    """Another run holds the pipeline root's lock."""


_State = metadata_store_pb2.Execution.State
_ArtifactState = metadata_store_pb2.Artifact.State


@contextlib.contextmanager
def run_lock(pipeline_root: str) -> Iterator[None]:
    """Holds ``<pipeline_root>/.ctr-pipeline-run.lock`` for the duration of a run; a second run on the
    same root meanwhile is refused (the lock goes with the process, so a killed run frees it)."""
    os.makedirs(pipeline_root, exist_ok=True)
    path = os.path.join(pipeline_root, LOCK_FILE)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunInProgress(
                f"another run is using the pipeline root {pipeline_root} ({holder}); "
                f"wait for it to finish, or give this run its own pipeline_root"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def abandon_killed_executions(metadata_path: str, pipeline_root: str) -> List[str]:
    """Marks every RUNNING execution in ``metadata_path`` FAILED, removes the output folders it was
    writing (TFX's layout: ``<pipeline_root>/<node id>/<output key>/<execution id>``) and marks any
    output artifact it had registered, not yet published, ABANDONED; returns one line per execution.
    Call it with ``run_lock`` held: then no RUNNING execution can still be alive."""
    if not os.path.exists(metadata_path):
        return []
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE
    store = metadata_store.MetadataStore(config)
    killed = [e for e in store.get_executions() if e.last_known_state in (_State.RUNNING, _State.NEW)]
    lines = []
    for execution in killed:
        folders = set()
        for context in store.get_contexts_by_execution(execution.id):
            if context.type == NODE_CONTEXT:  # named "<pipeline name>.<node id>"
                node_id = context.name.split(".", 1)[-1]
                folders.update(glob.glob(os.path.join(pipeline_root, glob.escape(node_id), "*", str(execution.id))))
        output_ids = [
            event.artifact_id
            for event in store.get_events_by_execution_ids([execution.id])
            if event.type in (metadata_store_pb2.Event.PENDING_OUTPUT, metadata_store_pb2.Event.OUTPUT)
        ]
        unpublished = [a for a in store.get_artifacts_by_id(output_ids) if a.state != _ArtifactState.LIVE]
        for artifact in unpublished:
            artifact.state = _ArtifactState.ABANDONED
            folders.add(artifact.uri)
        if unpublished:
            store.put_artifacts(unpublished)
        removed = sorted(folder for folder in folders if os.path.isdir(folder))
        for folder in removed:
            shutil.rmtree(folder)
        execution.last_known_state = _State.FAILED
        execution.custom_properties[KILLED_NOTE].string_value = (
            "found RUNNING when the next run started: its run was killed"
        )
        store.put_executions([execution])
        lines.append(f"execution {execution.id} ({execution.type or execution.type_id}) marked failed; "
                     f"removed {', '.join(removed) or 'no output folder'}")
    return lines
