"""What the CPU is doing now: how many other jobs want a core, and so how many threads to use.

Used by training (``mnv2.engine.loop``), ``mnv2 eval``/``predict`` and the ONNX Runtime engine (thread spinning
only on an idle machine); it imports nothing else of mnv2.
"""

from __future__ import annotations

import os
import time


def runnable_others(samples: int = 5, interval: float = 0.05) -> float | None:
    """How many other threads want a CPU right now: the median of ``procs_running`` in /proc/stat over a few
    samples, minus this process's own. ``None`` where /proc/stat is absent.

    The 1-minute load average is not this: it still counts a job that ended a minute ago (a run started right
    after another one saw "busy" and took 1 thread, 0.6x the speed of 2 on this project's idle 2-core machine).
    """
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                counts += [int(line.split()[1]) for line in f if line.startswith("procs_running")]
        except (OSError, ValueError, IndexError):
            return None
        if i + 1 < samples:
            time.sleep(interval)
    if not counts:
        return None
    counts.sort()
    return max(0, counts[len(counts) // 2] - 1)


def auto_threads() -> int:
    """All cores on an idle machine; fewer when other jobs run now (cores minus the runnable others, at least 1).
    OpenMP's threads run in lock-step, so one descheduled thread stalls every op: on this project's shared 2-core
    machine a training step took 5x longer with 2 threads than with 1 while other jobs ran."""
    cores = os.cpu_count() or 1
    others = runnable_others()
    if others is None:  # no /proc/stat: fall back to the load average
        return 1 if os.getloadavg()[0] >= cores else cores
    return max(1, cores - round(others))
