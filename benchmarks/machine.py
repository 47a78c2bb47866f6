"""The machine a benchmark ran on, for its results header (figures from different CPUs do not compare)."""
from __future__ import annotations

import os
import platform
from typing import Optional


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
