"""Message previews made away from the console's request threads.

A preview parses hostile mail and runs the HTML sanitizer over it. Both are
bounded (:mod:`gateway.web.preview`, :mod:`gateway.web.boundhtml`), but a
parser's worst case is only known until someone finds a worse one; a held
message must never be able to take the console with it. So each preview is
made in a worker process (at most ``workers`` at a time, whatever the number
of request threads; a request waits at most 2 s for one, then the page says
the console is busy), within ``deadline`` seconds: a worker that has not
answered by then is killed and the page says the preview was stopped; the
envelope, verdict, history and actions stay usable, and so does the raw
source. Workers start from a fork server (a clean process, not a fork of the
threaded web server) and end when the console does.

A message's page and its HTML frame ask for the same preview: results are
kept, by record id and content hash, in a small cache bounded in bytes; a
failure is kept for a minute, so reloading a page that timed out does not
make the console pay again straight away.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gateway.config import LimitsSection
from gateway.web.preview import HTML_BYTES, Preview, Sanitized, analyse, sanitize_html

log = logging.getLogger("gateway.web")

FAILURE_KEPT = 60.0
SLOT_WAIT = 2.0


@dataclass(frozen=True)
class Rendered:
    preview: Preview | None
    sanitized: Sanitized | None = None
    problem: str | None = None  # why there is no preview, one line for the page

    def size(self) -> int:
        """Roughly the bytes this result holds (for the cache's bound)."""
        if self.preview is None:
            return 256
        shown = self.preview
        return (len(shown.text) + len(shown.html or "") + 256 * len(shown.attachments)
                + sum(len(u) for u in shown.urls)
                + sum(len(j.found.url) + len(j.found.text) + 200 for j in shown.links)
                + sum(len(n) + len(v) for n, v in shown.headers)
                + (len(self.sanitized.html) if self.sanitized else 0))


def render(raw: bytes, limits: LimitsSection, html_bytes: int) -> Rendered:
    """The preview and the sanitized HTML of one message (what a worker runs)."""
    shown = analyse(raw, limits, html_bytes)
    return Rendered(shown, sanitize_html(shown.html) if shown.html else None)


class Renderer:
    def __init__(self, limits: LimitsSection, html_bytes: int = HTML_BYTES,
                 deadline: float = 10.0, workers: int = 2, cache_bytes: int = 32 << 20,
                 clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.html_bytes = html_bytes
        self.deadline = deadline
        self.cache_bytes = cache_bytes
        self._clock = clock
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[Rendered, float | None]] = OrderedDict()
        self._cached_bytes = 0
        self._closed = False

    def render(self, key: str, raw: bytes) -> Rendered:
        """The preview of ``raw`` (``key`` names its content: id and hash)."""
        found = self._cached(key)
        if found is not None:
            return found
        started = self._clock()
        # A short wait for a free worker: a request thread held here is one
        # the console's other pages (and logins) cannot use meanwhile.
        if not self._slots.acquire(timeout=min(self.deadline, SLOT_WAIT)):
            return Rendered(None, problem=(
                "the console is busy making other previews; reload the page in a moment"))
        try:
            remaining = max(self.deadline - (self._clock() - started), 0.1)
            result = self._in_worker(raw, remaining)
        finally:
            self._slots.release()
        self._keep(key, result)
        return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._idle = self._idle, []
        for worker in workers:
            worker.stop()

    # -- workers -------------------------------------------------------------------------

    def _in_worker(self, raw: bytes, deadline: float) -> Rendered:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            try:
                worker = _Worker.start()
            except OSError as exc:  # no process to be had (limits, memory)
                log.warning("web: cannot start a preview worker: %s", exc)
                return Rendered(None, problem="the preview could not be made (no worker "
                                              "process could be started)")
        try:
            worker.connection.send((raw, self.limits, self.html_bytes))
            if not worker.connection.poll(deadline):
                worker.kill()
                log.warning("web: a preview took longer than %gs; its worker was stopped",
                            self.deadline)
                return Rendered(None, problem=(
                    f"making the preview took longer than {self.deadline:g} s and was "
                    "stopped; the raw source is still available"))
            answer: Any = worker.connection.recv()
        except (EOFError, OSError) as exc:  # the worker died (out of memory, killed)
            worker.kill()
            log.warning("web: a preview worker failed: %s", exc or type(exc).__name__)
            return Rendered(None, problem="the preview could not be made (its worker failed)")
        with self._lock:
            if self._closed:
                worker.stop()
            else:
                self._idle.append(worker)
        if isinstance(answer, Rendered):
            return answer
        log.warning("web: a preview failed: %s", answer)
        return Rendered(None, problem="the preview could not be made; the raw source is "
                                      "still available")

    # -- the cache -----------------------------------------------------------------------

    def _cached(self, key: str) -> Rendered | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            result, expires = entry
            if expires is not None and self._clock() >= expires:
                self._forget(key)
                return None
            self._cache.move_to_end(key)
            return result

    def _keep(self, key: str, result: Rendered) -> None:
        size = result.size()
        if size > self.cache_bytes:
            return
        expires = None if result.problem is None else self._clock() + FAILURE_KEPT
        with self._lock:
            if key in self._cache:
                self._forget(key)
            self._cache[key] = (result, expires)
            self._cached_bytes += size
            while self._cached_bytes > self.cache_bytes:
                self._forget(next(iter(self._cache)))

    def _forget(self, key: str) -> None:
        result, _ = self._cache.pop(key)
        self._cached_bytes -= result.size()


class _Worker:
    _context: Any = None

    def __init__(self, process: Any, connection: Connection):
        self.process = process
        self.connection = connection

    @classmethod
    def start(cls) -> _Worker:
        if cls._context is None:
            # A fork server: workers fork from a clean, single-threaded
            # process that has the preview modules loaded already.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["gateway.web.render"])
            cls._context = context
        ours, theirs = cls._context.Pipe()
        process = cls._context.Process(target=_serve, args=(theirs,), daemon=True,
                                       name="gateway-preview")
        process.start()
        theirs.close()
        return cls(process, ours)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self.connection.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


def _serve(connection: Connection) -> None:
    """A worker: previews, one at a time, until told to stop or the console ends."""
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        raw, limits, html_bytes = job
        try:
            answer: object = render(raw, limits, html_bytes)
        except Exception as exc:  # a bug, not content: say what, keep serving
            answer = f"{type(exc).__name__}: {exc}"
        connection.send(answer)
