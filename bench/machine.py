"""The machine a benchmark ran on, in the words every results page uses."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_text() -> str:
    """``<CPU model>, <N> cores``."""
    return f"{cpu_model()}, {os.cpu_count()} cores"
