"""How busy the machine's cores are, from /proc/stat.

Two decisions depend on it: the worker pool grows for messages that wait
on the network only while cores are idle (gateway.workers), and a worker
runs its network checks in threads only then (gateway.pipeline). On a
machine whose cores are all busy, long waits are waits for a core (clamd
and the resolver queue behind the checks too), and more threads or
processes would only add CPU.
"""

from __future__ import annotations

import time

# Cores count as spare while they are idle at least this share of the time.
SPARE_CORES = 0.25


def cpu_times() -> tuple[int, int]:
    """The machine's idle (and I/O wait) time and its total CPU time so far,
    in clock ticks ((0, 0) where /proc/stat cannot be read)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


class IdleShare:
    """The share of CPU time the machine's cores spent idle between two
    readings at least ``window`` seconds apart (1.0 where unknown, so that
    a machine without /proc/stat decides on the other signs alone)."""

    def __init__(self, window: float = 0.5):
        self.window = window
        self._at = float("-inf")
        self._last = cpu_times()
        self._share = 1.0

    def share(self) -> float:
        now = time.monotonic()
        if now - self._at >= self.window:
            idle, total = cpu_times()
            last_idle, last_total = self._last
            if total > last_total:
                self._share = (idle - last_idle) / (total - last_total)
            self._at, self._last = now, (idle, total)
        return self._share
