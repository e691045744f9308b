"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.config import Config, load_config


class UsageError(Exception):
    """A problem the user can fix, reported as one line without a traceback."""


def config_from(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Alembic narrates every schema check at INFO; only its problems matter here.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
