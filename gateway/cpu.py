"""How busy the machine's cores are, from /proc/stat.

Two decisions depend on it: the worker pool grows for messages that wait
on the network only while cores are idle (gateway.workers), and a worker
runs its network checks in threads only then (gateway.pipeline). On a
machine whose cores are all busy, long waits are waits for a core (clamd
and the resolver queue behind the checks too), and more threads or
processes would only add CPU.
"""

from __future__ import annotations

import ctypes
import os
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


class _Sysinfo(ctypes.Structure):
    _fields_ = [("uptime", ctypes.c_long), ("loads", ctypes.c_ulong * 3),
                ("ram", ctypes.c_ulong * 6), ("procs", ctypes.c_ushort),
                ("pad", ctypes.c_ushort), ("high", ctypes.c_ulong * 2),
                ("mem_unit", ctypes.c_uint), ("_f", ctypes.c_char * 8)]


def load_idle_share() -> float | None:
    """The idle share the 1-minute load average implies (1 - load/cores),
    from sysinfo(2): readable where /proc/stat is not (systemd's
    ProcSubset=pid hides it), but a minute late. None where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        info = _Sysinfo()
        if libc.sysinfo(ctypes.byref(info)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    load = info.loads[0] / 65536.0  # SI_LOAD_SHIFT
    return max(0.0, 1.0 - load / (os.cpu_count() or 1))


class IdleShare:
    """The share of CPU time the machine's cores spent idle between two
    readings at least ``window`` seconds apart: from /proc/stat, or where
    it cannot be read from the load average; 1.0 where neither can be had,
    so that such a machine decides on the other signs alone. ``source``
    says which."""

    def __init__(self, window: float = 0.5):
        self.window = window
        self._at = float("-inf")
        self._last = cpu_times()
        self._share = 1.0
        self.source = "/proc/stat" if self._last != (0, 0) else "load average"

    def share(self) -> float:
        now = time.monotonic()
        if now - self._at >= self.window:
            if self.source == "/proc/stat":
                idle, total = cpu_times()
                last_idle, last_total = self._last
                if total > last_total:
                    self._share = (idle - last_idle) / (total - last_total)
                self._last = (idle, total)
            else:
                implied = load_idle_share()
                self._share = 1.0 if implied is None else implied
            self._at = now
        return self._share
