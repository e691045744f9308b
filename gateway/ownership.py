"""Files in the gateway's state belong to the gateway's user, whoever wrote them.

An admin runs ``sudo gateway train`` (or learn, release, promote); what that
creates in the state directories — a model version's folder, a temporary
file, SQLite's ``-wal`` and ``-shm`` files — would belong to root, and the
next job as the service user (the milter, the console's Train button) would
fail with "Permission denied". The owner of each state directory is taken
as the service user: after a command run as root, whatever root created in
there is handed to that owner (:func:`hand_over`), and ``gateway doctor``
finds what is still wrong (:func:`strangers`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from gateway.config import Config

ROOT = 0
# A state directory with more entries than this is not walked by the CLI on
# its way out (doctor still reports): a quarantine kept as files can be large.
MAX_ENTRIES = 100_000


def state_directories(config: Config) -> list[Path]:
    """Where the gateway writes: the SQLite store's folder, the model store
    (or its local cache when the models are in a database), the spool."""
    from gateway.classifier.store import default_cache, is_database_url

    found: list[Path] = []
    url = config.quarantine.url
    if url.startswith("sqlite:///"):
        found.append(Path(url.removeprefix("sqlite:///")).parent)
    store = config.classifier.store
    if is_database_url(store):
        if store.startswith("sqlite:///"):
            found.append(Path(store.removeprefix("sqlite:///")).parent)
        found.append(default_cache())
    elif store:
        found.append(Path(store))
    if config.pipeline.spool_dir:
        found.append(Path(config.pipeline.spool_dir))
    present = [path for path in dict.fromkeys(found) if path.is_dir()]
    # A folder inside another is walked with it.
    return [path for path in present
            if not any(path != other and path.is_relative_to(other) for other in present)]


def _entries(directory: Path, limit: int) -> Iterator[Path]:
    count = 0
    for top, folders, files in os.walk(directory, followlinks=False):
        for name in (*folders, *files):
            count += 1
            if count > limit:
                return
            yield Path(top, name)


def strangers(directory: Path, limit: int = MAX_ENTRIES) -> list[Path]:
    """Entries of ``directory`` not owned by its owner."""
    owner = os.stat(directory).st_uid
    return [path for path in _entries(directory, limit)
            if _owner(path) not in (owner, None)]


def hand_over(config: Config) -> list[Path]:
    """Give what root created in the state directories to each directory's
    owner (when that is not root itself). Does nothing unless run as root."""
    if os.geteuid() != ROOT:
        return []
    changed: list[Path] = []
    for directory in state_directories(config):
        info = os.stat(directory)
        if info.st_uid == ROOT:
            continue  # root's own state: nothing to hand over
        for path in _entries(directory, MAX_ENTRIES):
            if _owner(path) == ROOT:
                try:
                    os.lchown(path, info.st_uid, info.st_gid)
                except FileNotFoundError:
                    continue  # gone meanwhile (a temporary file)
                changed.append(path)
    return changed


def _owner(path: Path) -> int | None:
    try:
        return os.lstat(path).st_uid
    except FileNotFoundError:
        return None
