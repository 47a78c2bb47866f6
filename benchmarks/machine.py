"""The machine a benchmark ran on, for its results header (figures from different CPUs do not compare),
the machine-level measures a benchmark takes while it runs (load average, CPU times), and where
its figures are saved (``save_results``).

TensorFlow-free: a benchmark passes the versions of its own heavy libraries to ``machine_facts``.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def describe() -> str:
    """E.g. ``2 CPUs, Intel(R) Xeon(R) Processor``."""
    return f"{os.cpu_count()} CPUs, {cpu_model() or platform.machine()}"


def load_average() -> List[float]:
    """The 1, 5 and 15 minute load averages, to two decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def memory_gb() -> Optional[float]:
    """Total memory in GiB, to one decimal (Linux /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        return round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def git(*args: str) -> Optional[str]:
    """``git ARGS`` in the project's checkout: its stripped output, None when it fails."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_facts(versions: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """Host, CPUs, memory, load at the start, Python and ``versions`` (library -> version, from
    the caller: e.g. tensorflow, grpcio), platform and the git commit the benchmark ran at."""
    return {
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "load_average_start": load_average(),
        "memory_gb": memory_gb(),
        "python": platform.python_version(),
        **(versions or {}),
        "platform": platform.platform(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain")),
    }


def process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU time of a process (Linux /proc), all threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def command_line(argv: Optional[List[str]] = None) -> str:
    """How the running benchmark script was called, as a shell line (``argv``: the arguments given
    to its ``main``, default the process's own), its path relative to the working directory."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), os.getcwd())
    return shlex.join(["python", script] + (sys.argv[1:] if argv is None else list(argv)))


def process_rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of a process (Linux /proc/<pid>/status VmRSS), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class BackgroundPoll:
    """Calls ``poll()`` every ``interval`` seconds in a daemon thread while the ``with`` block runs."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cpu_times() -> Optional[Tuple[float, float]]:
    """(idle, total) jiffies of the whole machine (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return float(values[3] + values[4]), float(sum(values[:8]))  # idle + iowait
    except (OSError, ValueError, IndexError):
        return None


def save_results(directory: str, name: str, figures: object, markdown: str) -> None:
    """Writes a benchmark's ``<name>.json`` (its figures) and ``<name>.md`` (their table) to ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.json"), "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=2)
    with open(os.path.join(directory, f"{name}.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown)
