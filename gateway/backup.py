"""Backups of a node's SQLite store and folder model store, and restoring them.

A backup is a folder: ``quarantine.db`` (held mail, lists, users, labels,
feedback, and the models too when they live in that database), a
``models/`` copy of a folder model store (or ``models.db``), and
``manifest.json`` naming what each file is, its SHA-256 and the schema it
was taken at. SQLite files are copied with SQLite's online backup API, so a
backup taken while the milter writes is a consistent snapshot, never a
half-written file. A store in PostgreSQL is backed up with PostgreSQL's own
tools (``pg_dump``); the manifest says which parts were left to them.

Restoring checks every file against the manifest, refuses to replace a
store that holds mail unless told to (``force``), and migrates what it
restored to this gateway's schema, so a backup from an earlier release
restores into a newer one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.config import Config

MANIFEST = "manifest.json"
FORMAT = 1


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says what and where."""


@dataclass
class Part:
    name: str  # quarantine, models
    file: str  # inside the backup folder
    source: str  # where it came from (a path, or a URL without password)
    sha256: str = ""
    kind: str = "sqlite"  # sqlite, folder

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "source": self.source,
                "sha256": self.sha256, "kind": self.kind}


@dataclass
class Manifest:
    parts: list[Part] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # what pg_dump must save
    schema: str | None = None
    held: int = 0
    created: str = ""
    version: str = __version__

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "gateway": self.version, "created": self.created,
                "schema": self.schema, "held": self.held,
                "parts": [p.as_dict() for p in self.parts], "left_out": self.left_out}

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        try:
            data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise BackupError(f"{folder}: a backup of format {data.get('format')}, "
                                  f"this gateway reads format {FORMAT}")
            parts = [Part(**p) for p in data["parts"]]
        except FileNotFoundError:
            raise BackupError(f"{folder}: no {MANIFEST}; not a gateway backup") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"{folder}/{MANIFEST}: unreadable ({exc})") from None
        return cls(parts=parts, left_out=list(data.get("left_out", [])),
                   schema=data.get("schema"), held=int(data.get("held", 0)),
                   created=str(data.get("created", "")), version=str(data.get("gateway", "")))


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if "@" in rest else url


# -- backup ------------------------------------------------------------------------------


def backup(config: Config, target: Path) -> Manifest:
    """Write a backup of this node's stores into the new folder ``target``."""
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target}: exists and is not empty; give a new folder")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target, 0o700)  # held mail: for the gateway's user alone
    manifest = Manifest(created=datetime.now(UTC).isoformat(timespec="seconds"))
    quarantine = sqlite_path(config.quarantine.url)
    if quarantine is not None:
        if not quarantine.exists():
            raise BackupError(f"quarantine.url: {quarantine} does not exist")
        manifest.parts.append(_copy_database("quarantine", quarantine, target))
        manifest.schema, manifest.held = _schema_and_held(target / "quarantine.db")
    elif config.quarantine.url:
        manifest.left_out.append(f"quarantine {_redacted(config.quarantine.url)} (pg_dump)")
    store = config.classifier.store
    models_db = sqlite_path(store)
    if models_db is not None:
        if models_db != quarantine and models_db.exists():
            manifest.parts.append(_copy_database("models", models_db, target))
    elif "://" in store:
        manifest.left_out.append(f"models {_redacted(store)} (pg_dump)")
    elif store and Path(store).is_dir():
        copy = target / "models"
        shutil.copytree(store, copy, symlinks=True)
        manifest.parts.append(Part("models", "models", str(store), _tree_sha256(copy),
                                   "folder"))
    (target / MANIFEST).write_text(json.dumps(manifest.as_dict(), indent=2) + "\n",
                                   encoding="utf-8")
    for path in (target / MANIFEST, *target.glob("*.db")):
        os.chmod(path, 0o600)
    return manifest


def _copy_database(name: str, source: Path, target: Path) -> Part:
    """An online, consistent copy (SQLite's backup API)."""
    copy = target / f"{name}.db"
    descriptor = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(descriptor)
    try:
        with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src, \
                contextlib.closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except sqlite3.Error as exc:
        raise BackupError(f"{source}: {exc}") from None
    return Part(name, copy.name, str(source), _file_sha256(copy))


def _schema_and_held(database: Path) -> tuple[str | None, int]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        try:
            (schema,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            (held,) = connection.execute(
                "SELECT count(*) FROM messages WHERE state = 'held'").fetchone()
        except (sqlite3.Error, TypeError):
            return None, 0
    return str(schema), int(held)


# -- restore -----------------------------------------------------------------------------


def verify(folder: Path) -> Manifest:
    """The backup's manifest, once every file matches its checksum."""
    manifest = Manifest.read(folder)
    for part in manifest.parts:
        path = folder / part.file
        if not path.exists():
            raise BackupError(f"{folder}: {part.file} is missing")
        found = _tree_sha256(path) if part.kind == "folder" else _file_sha256(path)
        if found != part.sha256:
            raise BackupError(f"{path}: checksum differs from the manifest's; the backup is "
                              "damaged or was changed")
    return manifest


def restore(config: Config, folder: Path, force: bool = False) -> list[str]:
    """Put the backup in ``folder`` in place of this node's stores; what was
    done, one line each. Refuses to replace mail unless ``force``."""
    manifest = verify(folder)
    parts = {part.name: part for part in manifest.parts}
    plan: list[tuple[Part, Path]] = []
    if "quarantine" in parts:
        target = sqlite_path(config.quarantine.url)
        if target is None:
            raise BackupError("the backup holds a SQLite quarantine, but quarantine.url is "
                              f"{_redacted(config.quarantine.url) or 'empty'}; restore a "
                              "PostgreSQL store with pg_restore")
        if not force and (held := _messages(target)):
            raise BackupError(f"{target} holds {held} messages; --force replaces them with "
                              "the backup's")
        plan.append((parts["quarantine"], target))
    if "models" in parts:
        models = parts["models"]
        store = config.classifier.store
        target = sqlite_path(store) if models.kind == "sqlite" else Path(store)
        if target is None or ("://" in str(store) and models.kind == "folder"):
            raise BackupError(f"the backup's models are a {models.kind}, but "
                              f"classifier.store is {_redacted(store)}")
        if not force and _has_models(target, models.kind):
            raise BackupError(f"{target} holds models; --force replaces them with the "
                              "backup's")
        plan.append((models, target))
    done = []
    for part, target in plan:
        if part.kind == "folder":
            _replace_folder(folder / part.file, target)
        else:
            _replace_database(folder / part.file, target)
        done.append(f"restored {part.name} into {target}")
    if "quarantine" in parts:
        from gateway.quarantine.store import QuarantineStore

        store_ = QuarantineStore(config.quarantine.url)  # migrates to this gateway's schema
        store_.close()
        now, _ = _schema_and_held(plan[0][1])
        if now != manifest.schema:
            done.append(f"migrated the quarantine from schema {manifest.schema} to {now}")
    done += [f"not in this backup: {what}" for what in manifest.left_out]
    return done


def _messages(database: Path) -> int:
    if not database.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        try:
            (count,) = db.execute("SELECT count(*) FROM messages").fetchone()
        except sqlite3.Error:
            return 0
    return int(count)


def _has_models(target: Path, kind: str) -> bool:
    if kind == "folder":
        return target.is_dir() and any(target.iterdir())
    return target.exists()


def _replace_database(backup_file: Path, target: Path) -> None:
    """Copy the backup into the target database through SQLite's backup API:
    connections the gateway holds open see the restored content, not a file
    replaced under them."""
    from gateway.quarantine.files import make_private

    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(descriptor)
    with contextlib.closing(sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)) as src, \
            contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)
    make_private(target)


def _replace_folder(copy: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    shutil.rmtree(staging)
    shutil.copytree(copy, staging, symlinks=True)
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)


# -- checksums ---------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_sha256(folder: Path) -> str:
    """Names, link targets and contents of everything under ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            digest.update(f"L {relative} {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {relative} {_file_sha256(path)}\n".encode())
        else:
            digest.update(f"D {relative}\n".encode())
    return digest.hexdigest()
