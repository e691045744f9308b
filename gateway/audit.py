"""Who is acting, for audit trails (model promotions, quarantine releases)."""

from __future__ import annotations

import getpass
import os


def actor() -> str:
    """The person behind a command: the sudo caller if any, else the user."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
