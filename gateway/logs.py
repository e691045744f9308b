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
import time
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import orjson

from gateway.terminal import dumps, escape_json_text

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
        return compact_json(entry)


def compact_json(value: Any) -> str:
    """``dumps(value, separators=(",", ":"), default=str)``, by orjson (a
    fifth of the json module's CPU on a verdict's fields): the same values
    for a JSON reader; floats may be written another way (``0.00001`` for
    ``1e-05``)."""
    try:
        text = orjson.dumps(value, default=str).decode()
    except TypeError:  # lone surrogates (an envelope that was not UTF-8), huge ints
        return dumps(value, separators=(",", ":"), default=str)
    return escape_json_text(text)


def formatter(style: str) -> logging.Formatter:
    return JsonFormatter() if style == "json" else logging.Formatter(TEXT_FORMAT)


# The handler setup_logging installed, while it is the root's only one.
_installed: logging.Handler | None = None


def write_fields(logger: logging.Logger, fields: Mapping[str, Any]) -> bool:
    """Write one INFO record made of ``fields`` (a verdict's log line)
    straight to the handler :func:`setup_logging` installed, formatted as
    that handler formats it, without a LogRecord and the logging module's
    walk over callers, filters and handlers (half the line's CPU). False
    when anything else could see the record (another handler, a logger's
    own handler, a test's capture) or the logger is not enabled for INFO:
    the caller then logs it as usual."""
    handler = _installed
    if handler is None or not logger.isEnabledFor(logging.INFO) or len(handler.filters) != 1 \
            or handler.level > logging.INFO or logging.getLogger().handlers != [handler]:
        return False
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.handlers or not node.propagate:
            return False
        node = node.parent
    if logger.filters:
        return False
    formatter = handler.formatter
    now = time.time()
    stamp = SimpleNamespace(created=now, msecs=int((now - int(now)) * 1000) + 0.0)
    if isinstance(formatter, JsonFormatter):
        line = compact_json({"time": formatter.formatTime(stamp, "%Y-%m-%dT%H:%M:%S"),  # type: ignore[arg-type]
                             "level": "info", "logger": logger.name, **fields})
    elif formatter is not None and formatter._fmt == TEXT_FORMAT:
        queue_id = _queue_id.get()
        line = (f"{formatter.formatTime(stamp)} INFO {logger.name}: "  # type: ignore[arg-type]
                f"{f'{queue_id}: ' if queue_id else ''}{compact_json(fields)}")
    else:
        return False
    assert isinstance(handler, logging.StreamHandler)
    with contextlib.suppress(Exception):  # as StreamHandler.emit: a log line fails nothing
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.stream.flush()
        finally:
            handler.release()
    return True


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
    global _installed
    _installed = handler
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
