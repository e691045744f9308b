"""Where the gateway's CPU goes: py-spy's samples of a running ``gateway
run``, by process part (milter, workers, ...), as shares of each part's CPU
and as CPU ms per message (the share times what the part used by process
time, /proc/PID/stat, over the messages of the run).

py-spy samples only threads that are running (not those waiting on a
socket, a lock or the disk), so a share is a share of CPU, whatever else
the machine is doing: it holds on a busy machine, where wall-clock times do
not. soak.py runs it (``--profile FILE``); by itself it reads a raw file:

    .venv/bin/python tests/bench/cpuprofile.py FILE.raw --pids FILE.pids

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

# py-spy starts a subprocess's stacks with its ancestors' and its own
# "process 1234:"COMMAND LINE"" (the command line may hold ';').
_PROCESS = re.compile(r'process (\d+):"(?:[^"\\]|\\.)*";?')
# "function (file.py:123)" or "function (file.py)"
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


class Sampler:
    """py-spy record on ``pid`` and its subprocesses, into ``path`` (raw
    collapsed stacks), while the block runs."""

    def __init__(self, pid: int, path: Path, rate: int = 200):
        self.pid, self.path, self.rate = pid, path, rate
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sampler:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.process = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--subprocesses", "--gil",
             "--format", "raw", "--rate", str(self.rate), "--output", str(self.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)  # py-spy writes the file on SIGINT
        try:
            _, errors = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        if not self.path.exists():
            print(f"profile: py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}",
                  file=sys.stderr)


def read_samples(path: Path) -> list[tuple[int | None, list[str], int]]:
    """(pid, frames outermost first as "function (file)", count) per line."""
    samples = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        pid, at = None, 0
        while match := _PROCESS.match(stack, at):
            pid, at = int(match.group(1)), match.end()
        frames = [_short(frame) for frame in stack[at:].split(";")
                  if frame and not frame.startswith("thread (")]
        if not frames or frames[-1].partition(" (")[0] in WAITING:
            continue  # C threads (libmilter's), and threads on their way to or from a wait
        samples.append((pid, frames, int(count)))
    return samples


# Functions that only wait (for a socket, a pipe, a lock, a timer): py-spy
# counts a thread in them as running while it enters or leaves the wait.
WAITING = frozenset({
    "_PollLikeSelector.select", "EpollSelector.select", "select", "Condition.wait",
    "Event.wait", "wait", "Thread._wait_for_tstate_lock", "_wait_for_tstate_lock",
    "Connection._recv", "Connection._poll", "Future.result", "sleep", "accept",
    "BaseSelector.select", "SimpleQueue.get", "Queue.get", "_worker", "_recv_into",
    "SocketIO.readinto", "recv", "recv_into", "serve_forever",
})


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match.group("file")
    for marker in ("/gateway/", "/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match.group('function')} ({file})"


def report(samples: list[tuple[int | None, list[str], int]], parts: dict[int, str],
           cpu_ms: dict[str, float], top: int = 20) -> list[str]:
    """Per part: its CPU ms per message, then the functions with the most
    samples, by samples in the function itself (self) and with what it
    called (total), as shares of the part's samples and in ms per message."""
    lines: list[str] = []
    by_part: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for pid, frames, count in samples:
        by_part[parts.get(pid, "other") if pid is not None else "other"].append((frames, count))
    for part, stacks in sorted(by_part.items(), key=lambda item: -cpu_ms.get(item[0], 0)):
        total = sum(count for _, count in stacks) or 1
        own: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        for frames, count in stacks:
            if frames:
                own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        ms = cpu_ms.get(part)
        lines.append(f"{part}: {total} samples" + (f", {ms:.2f} CPU ms a message" if ms else ""))
        lines.append(f"  {'self':>6} {'ms':>6}  {'total':>6} {'ms':>6}  function")
        for frame, count in inclusive.most_common(top):
            share, share_self = count / total, own.get(frame, 0) / total
            lines.append(f"  {share_self:6.1%} {_ms(share_self, ms)}  {share:6.1%} "
                         f"{_ms(share, ms)}  {frame}")
        lines.append("  top by self: " + "; ".join(
            f"{frame} {count / total:.1%}" for frame, count in own.most_common(12)))
    return lines


def _ms(share: float, ms: float | None) -> str:
    return f"{share * ms:6.2f}" if ms else f"{'':6}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path, help="py-spy record --format raw output")
    parser.add_argument("--pids", type=Path, help='JSON {"parts": {pid: part}, '
                        '"cpu_ms": {part: ms a message}} as soak.py writes it beside the file')
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    meta = json.loads(args.pids.read_text()) if args.pids else {"parts": {}, "cpu_ms": {}}
    parts = {int(pid): part for pid, part in meta["parts"].items()}
    print("\n".join(report(read_samples(args.raw), parts, meta["cpu_ms"], args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
