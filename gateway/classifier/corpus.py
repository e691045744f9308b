"""Read training mail from Maildir folders, mbox files and folders of .eml.

The format is detected per path: a folder with ``cur``/``new`` is a
Maildir, a file starting with ``From `` is an mbox, any other file is one
message, and any other folder is searched for all of these.
"""

from __future__ import annotations

import hashlib
import mailbox
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class CorpusError(Exception):
    """A path that cannot be read as mail, reported as one line."""


@dataclass(frozen=True)
class Sample:
    source: str  # file path, or "mbox-path#index"
    raw: bytes


def read_corpus(paths: Iterable[str | Path]) -> Iterator[Sample]:
    for name in paths:
        path = Path(name)
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        yield from _read_path(path)


def _read_path(path: Path) -> Iterator[Sample]:
    if path.is_dir():
        if (path / "cur").is_dir() or (path / "new").is_dir():
            yield from _read_maildir(path)
            return
        for child in sorted(path.iterdir()):
            if child.name.startswith("."):
                continue
            yield from _read_path(child)
        return
    with open(path, "rb") as handle:
        head = handle.read(5)
    if head == b"From " and _looks_like_mbox(path):
        yield from _read_mbox(path)
    else:
        yield Sample(str(path), path.read_bytes())


def _looks_like_mbox(path: Path) -> bool:
    """More than one 'From ' separator: a single .eml saved with its mbox
    line is still one message."""
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.startswith(b"From ")) > 1


def _read_maildir(path: Path) -> Iterator[Sample]:
    for sub in ("cur", "new"):
        folder = path / sub
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                if child.is_file() and not child.name.startswith("."):
                    yield Sample(str(child), child.read_bytes())


def _read_mbox(path: Path) -> Iterator[Sample]:
    box = mailbox.mbox(str(path), create=False)
    try:
        for index, key in enumerate(box.iterkeys()):
            yield Sample(f"{path}#{index}", box.get_bytes(key))
    finally:
        box.close()


def content_key(raw: bytes) -> str:
    """Identity of a message for de-duplication: its body, so the same mail
    delivered twice (other Received lines) counts once."""
    body = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[-1]
    return hashlib.sha1(body).hexdigest()


class Progress:
    """A one-line progress bar on stderr (plain lines when not a terminal)."""

    def __init__(self, label: str, total: int | None = None, stream=None):
        self.label = label
        self.total = total
        self.count = 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._last = 0.0
        self._tty = self.stream.isatty()

    def step(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= (0.1 if self._tty else 5.0):
            self._last = now
            self._draw()

    def _draw(self, final: bool = False) -> None:
        rate = self.count / max(time.monotonic() - self.started, 1e-9)
        if self.total:
            width = 30
            filled = int(width * self.count / self.total)
            bar = "#" * filled + "." * (width - filled)
            text = f"{self.label} [{bar}] {self.count}/{self.total} ({rate:.0f}/s)"
        else:
            text = f"{self.label}: {self.count} ({rate:.0f}/s)"
        end = "\n" if final or not self._tty else ""
        self.stream.write(("\r" if self._tty else "") + text + end)
        self.stream.flush()

    def done(self) -> None:
        self._draw(final=True)
