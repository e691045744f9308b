"""The process tree of a running gateway, read from /proc: for benchmarks
and tests that watch its memory, file descriptors or children."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, parents before their children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size (0 if the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: resident pages, each shared page divided among
    the processes sharing it (0 if the process is gone). Summed over a tree
    of forked processes it is their real memory; summed RSS counts every
    page the workers share with the fork server once per process."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's CPU seconds so far, its own (user + system, every
    thread) and those of the children it has reaped; (0, 0) if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own, reaped = fields[11:13], fields[13:15]
        return (sum(map(int, own)) / CLOCK_TICKS, sum(map(int, reaped)) / CLOCK_TICKS)
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of processes and their live descendants, each with the
    children it has reaped (a worker replaced during the run still counts)."""
    return sum(sum(cpu_seconds(pid)) for pid in {p for root in roots for p in tree(root)})


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return ""


GATEWAY_PARTS = ("supervisor", "milter", "fork_server", "workers")


def gateway_processes(supervisor: int) -> list[tuple[int, str, str]]:
    """``gateway run``'s processes, each with its part and the part of the
    children it reaps: the supervisor (``supervisor``), the milter process
    it starts, the multiprocessing fork server (and its resource tracker)
    that the milter starts, and the workers forked from it."""
    found: list[tuple[int, str, str]] = []
    children_part: dict[int, str] = {}  # pid -> the part its children belong to
    for pid, parent in _family(supervisor):
        command = cmdline(pid)
        if pid == supervisor:
            part, children = "supervisor", "milter"
        elif children_part.get(parent) == "workers":  # forked: the fork server's command
            part = children = "workers"
        elif "forkserver" in command or "resource_tracker" in command:
            part, children = "fork_server", "workers"
        else:
            part = children = "milter"
        children_part[pid] = children
        found.append((pid, part, children))
    return found


def gateway_cpu_parts(supervisor: int) -> dict[str, float]:
    """CPU seconds so far of ``gateway run``'s processes by part
    (:func:`gateway_processes`). A process that ended counts with the part
    of its kind, through its parent's reaped-children time: a worker
    recycled during a run still counts as ``workers``."""
    parts = dict.fromkeys(GATEWAY_PARTS, 0.0)
    for pid, part, children in gateway_processes(supervisor):
        own, reaped = cpu_seconds(pid)
        parts[part] += own
        parts[children] += reaped
    return parts


def _family(pid: int) -> list[tuple[int, int]]:
    """``pid`` and its descendants with their parents, parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, queue = [], [(pid, 0)]
    while queue:
        current, parent = queue.pop(0)
        found.append((current, parent))
        queue.extend((child, current) for child in children.get(current, []))
    return found
