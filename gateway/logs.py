"""Log lines: text or JSON, the same in every process of the gateway.

The milter, its workers, the supervisor and the console all log through
:func:`setup_logging`, so that under ``[log] format = "json"`` no line is
bare text (journald and Loki read one JSON object per line). A record made
while a message is being decided carries that message's queue id
(:func:`for_message`), in either format. Imports nothing heavy: the
supervisor uses it too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

from gateway.terminal import dumps

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(queue_prefix)s%(message)s"

_queue_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("queue_id", default=None)


@contextlib.contextmanager
def for_message(queue_id: str | None) -> Iterator[None]:
    """Records logged inside carry ``queue_id`` (this thread or task only)."""
    token = _queue_id.set(queue_id or None)
    try:
        yield
    finally:
        _queue_id.reset(token)


class _QueueIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        queue_id = getattr(record, "queue_id", None) or _queue_id.get()
        record.queue_id = queue_id
        record.queue_prefix = f"{queue_id}: " if queue_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, queue id (while a
    message is decided), message, and the record's ``fields`` (a verdict's
    action, symbols, ...) merged in; a traceback, when there is one, as
    ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                                 "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            if queue_id := getattr(record, "queue_id", None):
                entry["queue_id"] = queue_id
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return dumps(entry, separators=(",", ":"), default=str)


def formatter(style: str) -> logging.Formatter:
    return JsonFormatter() if style == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str = "info", style: str = "text") -> None:
    """Log to stderr (the journal under systemd): ``text`` lines, or ``json``,
    one JSON object per line. Called again (a reload), it replaces the
    handler, so a changed ``[log]`` applies at once. Uncaught exceptions, in
    any thread, become one record in the same format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(style))
    handler.addFilter(_QueueIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # Alembic narrates every schema check at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("gateway").critical("uncaught %s: %s", kind.__name__, value,
                                          exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("gateway").error(
        "thread %s ended on %s: %s", name, args.exc_type.__name__, args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]
