"""The CPUs this process may run on: what the proxy sets torch's threads to and the API admits trials by.

No torch here, so the API and the commands that train nothing can ask without importing it.
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs in this process's affinity mask (narrowed by taskset, cpusets and most schedulers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
