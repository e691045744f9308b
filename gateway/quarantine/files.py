"""A SQLite quarantine's files: readable and writable by the gateway's user only.

Held mail is other people's mail, and a record's recipients decide where a
release goes; so the database directory is 0700 and the database and its
journals 0600. The modes are set explicitly, never left to the umask of
whoever started the gateway (``make run`` as root has 022, the systemd unit
a group shared with Postfix).

The gateway's user is the owner of the directory: when root (the CLI, say)
creates the database in a directory the gateway's user owns, the file is
given to that user. SQLite gives its ``-wal`` and ``-shm`` files the
database's mode, and when root the database's owner, by itself.

At every start wider modes are narrowed and reported in one log line. A
directory is narrowed only when it holds nothing but the quarantine (and
the model store the default layout keeps beside it): chmod on a directory
shared with other software could break that software, so such a directory
is reported instead if others can write to it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("gateway.quarantine")

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600
# SQLite's own files beside the database: its WAL, shared memory, rollback
# and super-journal files are all named "<database>-something".
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
# What else the gateway keeps in its state directory by default
# ([classifier] store = /var/lib/gateway/models).
OWN_NEIGHBOURS = frozenset({"models"})


def make_private(database: Path) -> None:
    """Create ``database``'s directory and file private if missing, and
    narrow them (and SQLite's side files) if they are wider.

    Raises OSError if the database file cannot be created; a mode that
    cannot be narrowed (not our file, a read-only disk) is logged instead.
    """
    directory = database.parent
    narrowed: list[str] = []
    problems: list[str] = []
    if not directory.exists():
        directory.mkdir(parents=True, mode=PRIVATE_DIRECTORY, exist_ok=True)
        os.chmod(directory, PRIVATE_DIRECTORY)  # the umask may have taken bits away
    else:
        _check_directory(directory, database.name, narrowed, problems)
    _create(database, directory)
    for path in (database, *(Path(f"{database}{side}") for side in SQLITE_SIDE_FILES)):
        _narrow(path, PRIVATE_FILE, narrowed, problems)
    if narrowed:
        log.warning("quarantine: the store was open to more than its owner; narrowed %s",
                    ", ".join(narrowed))
    for problem in problems:
        log.warning("quarantine: %s", problem)


def _check_directory(directory: Path, database_name: str, narrowed: list[str],
                     problems: list[str]) -> None:
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if not mode & 0o077:
        return
    if _holds_only_the_quarantine(directory, database_name):
        _narrow(directory, PRIVATE_DIRECTORY, narrowed, problems)
    elif mode & 0o022 and not mode & stat.S_ISVTX:
        problems.append(
            f"{directory} (mode {mode:04o}) can be written by others, who could replace "
            "the database; it holds other files too, so it is left as it is: give the "
            "quarantine a directory of its own")


def _holds_only_the_quarantine(directory: Path, database_name: str) -> bool:
    for entry in os.listdir(directory):
        if not (entry == database_name or entry.startswith(database_name + "-")
                or entry in OWN_NEIGHBOURS):
            return False
    return True


def _create(database: Path, directory: Path) -> None:
    """Create an empty database file (SQLite reads it as an empty database)
    with mode 0600 from the first instant, owned by the directory's owner."""
    try:
        descriptor = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             PRIVATE_FILE)
    except FileExistsError:
        return
    try:
        os.fchmod(descriptor, PRIVATE_FILE)  # exactly 0600, whatever the umask
        owner = os.stat(directory)
        if os.geteuid() == 0 and owner.st_uid != 0:
            os.fchown(descriptor, owner.st_uid, owner.st_gid)
    finally:
        os.close(descriptor)


def _narrow(path: Path, private_mode: int, narrowed: list[str], problems: list[str]) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, private_mode)
    except OSError as exc:
        problems.append(f"{path} has mode {mode:04o} and cannot be narrowed to "
                        f"{private_mode:04o}: {exc.strerror or exc}")
        return
    narrowed.append(f"{path} {mode:04o} -> {private_mode:04o}")
