"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse

from gateway.config import Config, load_config
from gateway.logs import JsonFormatter, setup_logging

__all__ = ["JsonFormatter", "UsageError", "config_from", "setup_logging"]


class UsageError(Exception):
    """A problem the user can fix, reported as one line without a traceback."""


def config_from(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))
