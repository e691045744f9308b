"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.config import Config, load_config
from gateway.terminal import dumps


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the
    record's ``fields`` (a verdict's queue id, action, symbols, ...) merged in;
    a traceback, when there is one, as ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                       "level": record.levelname.lower(), "logger": record.name}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return dumps(entry, separators=(",", ":"))


class UsageError(Exception):
    """A problem the user can fix, reported as one line without a traceback."""


def config_from(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def setup_logging(level: str = "info", style: str = "text") -> None:
    """Log to stderr (the journal under systemd): ``text`` lines, or ``json``,
    one JSON object per line (a message's verdict line carries its fields)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if style == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # Alembic narrates every schema check at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
