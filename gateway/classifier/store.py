"""The model store: versions side by side, one of them current.

``[classifier] store`` is a directory (one node) or a database URL
(``sqlite:///...``, ``postgresql://...``: several nodes share one store).
``ModelStore(location)`` gives the right kind for either.

A directory::

    STORE/versions/<version>/   model.npz, vocabulary.json, model.json
    STORE/current               symlink to the promoted version
    STORE/history.json          every promotion and rollback: who, when, figures

Promotion swaps the ``current`` link atomically (rename over the old link),
so a running gateway never sees half a model; it notices the change and
reloads (see :mod:`gateway.checks.bayes`). The previously promoted version
stays in the store for ``rollback``.

A database (tables ``model_versions``, ``model_current``, ``model_history``
of migration 0006): each version is the model folder as one tar artifact
with its SHA-256 and its card (``model.json``); the current pointer names a
version *and* the checksum it was promoted with. Every node asks for the
pointer when the bayes check looks for a new model (every ``[classifier]
reload_interval``), and on a change fetches the artifact once, checks it
against the pointer's checksum, loads it to be sure, and unpacks it into a
local cache (``current_path`` returns the cached folder). A node that
cannot reach the database keeps its last good model, read from the cache's
own ``current`` link, even across a restart; a bad artifact is refused with
one log line and the last good model keeps serving.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.audit import actor
from gateway.classifier.names import META_FILE, ModelError
from gateway.db import first_line, insert_ignoring, make_engine, migrate, safe_url, utc
from gateway.quarantine.schema import model_current, model_history, model_versions

if TYPE_CHECKING:
    from gateway.classifier.model import SpamModel

log = logging.getLogger("gateway.classifier")

DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
# Where nodes keep the artifacts they fetched from a database store; the
# environment variable moves it (tests, several stores on one host).
CACHE_ENV = "GATEWAY_MODEL_CACHE"
DEFAULT_CACHE = Path("/var/lib/gateway/model-cache")
# A database that just failed is not asked again for this long by the same
# process: every message's worker would otherwise wait for its timeout.
RETRY_AFTER = 5.0
CONNECT_TIMEOUT = 3
CACHE_KEEP = 5  # models kept in a node's cache


class StoreError(Exception):
    """A store operation that cannot be done, as one line."""


def load_model(model_dir: Path) -> SpamModel:
    """The model in a folder. The model's code (and numpy) is imported here,
    when a model is added: the milter only asks the store for a folder."""
    from gateway.classifier.model import load_model as load

    return load(model_dir)


@dataclass(frozen=True)
class StoredVersion:
    version: str
    path: Path
    meta: dict[str, Any]
    current: bool


def is_database_url(location: str | Path) -> bool:
    return str(location).startswith(DATABASE_SCHEMES)


class ModelStore:
    """A model store; ``ModelStore(location)`` is a :class:`DirectoryModelStore`
    or a :class:`DatabaseModelStore`, by the form of ``location``."""

    root: str | Path

    def __new__(cls, location: str | Path, *args: Any, **kwargs: Any) -> ModelStore:
        if cls is ModelStore:
            cls = DatabaseModelStore if is_database_url(location) else DirectoryModelStore
        return super().__new__(cls)

    # The interface both kinds give (documented here, implemented there).
    def current_version(self) -> str | None:
        raise NotImplementedError

    def current_path(self) -> Path | None:
        raise NotImplementedError

    def versions(self) -> list[StoredVersion]:
        raise NotImplementedError

    def path_of(self, version: str) -> Path:
        raise NotImplementedError

    def history(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def add(self, model_dir: Path) -> str:
        raise NotImplementedError

    def set_current(self, version: str, action: str, details: dict[str, Any]) -> None:
        raise NotImplementedError

    def clear_current(self, action: str, details: dict[str, Any]) -> None:
        raise NotImplementedError

    def previous_version(self) -> str | None:
        """The version promoted before the current one: rollback walks back
        through the promotions one step at a time."""
        current = self.current_version()
        promoted = [e["version"] for e in self.history() if e.get("action") == "promote"]
        if current not in promoted:
            return None
        index = len(promoted) - 1 - promoted[::-1].index(current)
        known = {v.version for v in self.versions()}
        for version in reversed(promoted[:index]):
            if version != current and version in known:
                return version
        return None


class DirectoryModelStore(ModelStore):
    root: Path

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.current_link = self.root / "current"
        self.history_file = self.root / "history.json"

    # -- reading -------------------------------------------------------------------

    def current_version(self) -> str | None:
        if not self.current_link.is_symlink():
            return None
        return Path(os.readlink(self.current_link)).name

    def current_path(self) -> Path | None:
        version = self.current_version()
        return self.versions_dir / version if version else None

    def versions(self) -> list[StoredVersion]:
        if not self.versions_dir.is_dir():
            return []
        current = self.current_version()
        found = []
        for path in sorted(self.versions_dir.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                meta = json.loads((path / META_FILE).read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            found.append(StoredVersion(path.name, path, meta, path.name == current))
        return sorted(found, key=lambda v: str(v.meta.get("created", "")))

    def path_of(self, version: str) -> Path:
        path = self.versions_dir / version
        if not path.is_dir():
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise StoreError(f"{self.root}: no model version {version!r} (stored: {known})")
        return path

    def history(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.history_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{self.history_file}: unreadable: {exc}") from None

    # -- writing -------------------------------------------------------------------

    def add(self, model_dir: Path) -> str:
        """Copy a trained model folder into the store; returns its version."""
        try:
            model = load_model(model_dir)
        except ModelError as exc:
            raise StoreError(str(exc)) from None
        target = self.versions_dir / model.version
        if target.exists():
            return model.version
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".{model.version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(model_dir, staging)
        staging.rename(target)
        return model.version

    def set_current(self, version: str, action: str, details: dict[str, Any]) -> None:
        self.path_of(version)
        temporary = self.root / ".current.tmp"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        os.symlink(Path("versions") / version, temporary)
        os.replace(temporary, self.current_link)  # atomic: readers see old or new
        self._append_history(action, version, details)

    def clear_current(self, action: str, details: dict[str, Any]) -> None:
        """Remove the ``current`` link: gateways go back to the shipped model
        (``models/default``) when they next look."""
        if self.current_link.is_symlink():
            self.current_link.unlink()
        self._append_history(action, "shipped", details)

    def _append_history(self, action: str, version: str, details: dict[str, Any]) -> None:
        entry = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "action": action,
            "version": version,
            "user": actor(),
            **details,
        }
        history = self.history()
        history.append(entry)
        staged = self.history_file.with_suffix(".tmp")
        staged.write_text(json.dumps(history, indent=2) + "\n")
        os.replace(staged, self.history_file)


# -- the database store ------------------------------------------------------------------

def default_cache() -> Path:
    """``$GATEWAY_MODEL_CACHE``, else /var/lib/gateway/model-cache where the
    gateway's state lives, else the user's own cache (an admin's CLI)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.access(DEFAULT_CACHE.parent, os.W_OK) or os.access(DEFAULT_CACHE, os.W_OK):
        return DEFAULT_CACHE
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gateway" / \
        "model-cache"


@dataclass
class StoreHealth:
    """How this process last fared with a database store (for metrics, the
    node registry and doctor)."""

    ok: bool = True
    problem: str = ""
    since: float = 0.0          # time.time() of the last change between ok and not
    last_contact: float = 0.0   # time.time() of the last answer
    last_failure: float = 0.0   # time.time() of the last failed attempt


_engines: dict[tuple[int, str], Engine] = {}
_health: dict[str, StoreHealth] = {}
_lock = threading.Lock()


def store_health(url: str) -> StoreHealth:
    """This process's view of a database store (a fresh one if never asked)."""
    with _lock:
        return _health.setdefault(url, StoreHealth(since=time.time()))


def _engine_for(url: str) -> Engine:
    """One engine per URL and process (a forked worker makes its own: a
    pooled connection must not be shared across a fork)."""
    key = (os.getpid(), url)
    with _lock:
        if key not in _engines:
            _engines[key] = make_engine(url, pool_size=2, connect_timeout=CONNECT_TIMEOUT)
        return _engines[key]


class DatabaseModelStore(ModelStore):
    def __init__(self, url: str, cache: str | Path | None = None):
        self.url = url
        self.root = safe_url(url)
        self.engine = _engine_for(url)
        key = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        self.cache = Path(cache) if cache is not None else default_cache() / key
        self.health = store_health(url)

    # -- the pointer and the local cache ------------------------------------------

    def _pointer(self) -> tuple[str, str] | None:
        """(version, sha256) the store says is current; None: the shipped model.
        Raises StoreError when the database does not answer."""
        health = self.health
        if not health.ok and time.time() - health.last_failure < RETRY_AFTER:
            raise StoreError(health.problem)
        try:
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(model_current.c.version, model_current.c.sha256)
                    .where(model_current.c.id == 1)).first()
        except SQLAlchemyError as exc:
            self._failed(exc)
            raise StoreError(health.problem) from None
        self._answered()
        if row is None or row.version is None:
            return None
        return row.version, row.sha256

    def _failed(self, exc: Exception) -> None:
        problem = f"model store {self.root}: {first_line(exc)}"
        with _lock:
            if self.health.ok:
                self.health.since = time.time()
                log.error("%s; keeping the last good model", problem)
            self.health.ok, self.health.problem = False, problem
            self.health.last_failure = time.time()

    def _answered(self) -> None:
        with _lock:
            if not self.health.ok:
                self.health.since = time.time()
                log.info("model store %s answers again", self.root)
            self.health.ok, self.health.problem = True, ""
            self.health.last_contact = time.time()

    def _cached_dir(self, version: str, sha256: str) -> Path:
        return self.cache / f"{version}-{sha256[:16]}"

    def last_good(self) -> Path | None:
        """The model this host last verified from the store (None: shipped)."""
        link = self.cache / "current"
        try:
            if not link.is_symlink():
                return None
            path = self.cache / os.readlink(link)
            return path if path.is_dir() else None
        except OSError:  # a cache this user may not read: none
            return None

    def _remember(self, path: Path | None) -> None:
        """Point the cache's ``current`` link at ``path`` (None: remove it)."""
        link = self.cache / "current"
        if path is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            return
        if link.is_symlink() and os.readlink(link) == path.name:
            return
        temporary = self.cache / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(path.name, temporary)
        self._hand_over(temporary)
        os.replace(temporary, link)

    def _hand_over(self, path: Path) -> None:
        """What root (an admin's CLI) makes in the cache belongs to the cache
        folder's owner, the gateway's user, whose workers write there next."""
        if os.geteuid() != 0:
            return
        try:
            owner = os.stat(self.cache.parent)
        except OSError:
            return
        if owner.st_uid == 0:
            return
        inside = list(path.rglob("*")) if path.is_dir() and not path.is_symlink() else []
        for item in (path, *inside):
            os.lchown(item, owner.st_uid, owner.st_gid)

    def _fetch(self, version: str, sha256: str) -> Path:
        """The verified, unpacked artifact in the cache (fetched if missing)."""
        target = self._cached_dir(version, sha256)
        if (target / META_FILE).is_file():
            return target
        try:
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(model_versions.c.artifact, model_versions.c.sha256)
                    .where(model_versions.c.version == version)).first()
        except SQLAlchemyError as exc:
            self._failed(exc)
            raise StoreError(self.health.problem) from None
        if row is None:
            raise StoreError(f"model store {self.root}: no model version {version!r}")
        data = bytes(row.artifact)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256 or row.sha256 != sha256:
            raise StoreError(f"model {version}: artifact checksum {actual[:16]} does not match "
                             f"the promoted {sha256[:16]}; refused")
        if not self.cache.is_dir():
            self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._hand_over(self.cache)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.cache))
        try:
            unpack(data, staging)
            load_model(staging)  # a model that will not load is refused here, not in a worker
            os.chmod(staging, 0o755)
            self._hand_over(staging)
            try:
                staging.rename(target)
            except OSError:  # another process of this host unpacked it meanwhile
                if not (target / META_FILE).is_file():
                    raise
        except ModelError as exc:
            raise StoreError(f"model {version}: {exc}; refused") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._prune()
        return target

    def _prune(self, keep: int = CACHE_KEEP) -> None:
        """The cache keeps the newest ``keep`` models (a rollback a few steps
        back needs no fetch); older ones go, never the one in use."""
        current = self.last_good()
        cached = sorted((p for p in self.cache.iterdir()
                         if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")),
                        key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for path in cached[keep:]:
            if current is None or path.name != current.name:
                shutil.rmtree(path, ignore_errors=True)

    # -- reading -------------------------------------------------------------------

    def current_version(self) -> str | None:
        pointer = self._pointer()
        return pointer[0] if pointer else None

    def current_path(self) -> Path | None:
        """The current model's verified folder in the local cache; when the
        database does not answer or the new artifact is bad, the last good one."""
        try:
            pointer = self._pointer()
            if pointer is None:
                self._remember(None)
                return None
            path = self._fetch(*pointer)
        except StoreError as exc:
            last = self.last_good()
            if self.health.ok:  # reachable, but the artifact was refused
                self._complain(str(exc))
            return last
        except OSError as exc:
            self._complain(f"model cache {self.cache}: {exc}")
            return self.last_good()
        self._remember(path)
        return path

    _complained: dict[str, float] = {}

    def _complain(self, problem: str) -> None:
        """One log line per problem and process every ten minutes."""
        if time.time() - self._complained.get(problem, 0.0) > 600:
            self._complained[problem] = time.time()
            log.error("classifier: %s; keeping the last good model", problem)

    def versions(self) -> list[StoredVersion]:
        current = self._pointer()
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(select(
                    model_versions.c.version, model_versions.c.sha256,
                    model_versions.c.meta)).all()
        except SQLAlchemyError as exc:
            self._failed(exc)
            raise StoreError(self.health.problem) from None
        found = [StoredVersion(row.version, self._cached_dir(row.version, row.sha256),
                               json.loads(row.meta),
                               current is not None and current[0] == row.version)
                 for row in rows]
        return sorted(found, key=lambda v: str(v.meta.get("created", "")))

    def path_of(self, version: str) -> Path:
        try:
            with self.engine.connect() as connection:
                sha256 = connection.execute(select(model_versions.c.sha256).where(
                    model_versions.c.version == version)).scalar()
        except SQLAlchemyError as exc:
            self._failed(exc)
            raise StoreError(self.health.problem) from None
        if sha256 is None:
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise StoreError(f"{self.root}: no model version {version!r} (stored: {known})")
        return self._fetch(version, sha256)

    def history(self) -> list[dict[str, Any]]:
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(select(model_history)
                                          .order_by(model_history.c.id)).all()
        except SQLAlchemyError as exc:
            self._failed(exc)
            raise StoreError(self.health.problem) from None
        return [{"time": utc(row.time).isoformat(timespec="seconds"), "action": row.action,
                 "version": row.version, "user": row.user, "node": row.node,
                 **json.loads(row.details)} for row in rows]

    # -- writing -------------------------------------------------------------------

    def _writable(self) -> None:
        """The schema at the newest migration before the first write."""
        try:
            migrate(self.engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"model store {self.root}: {first_line(exc)}") from None
        self._answered()

    def add(self, model_dir: Path) -> str:
        """Put a trained model folder into the store; returns its version."""
        try:
            model = load_model(model_dir)
        except ModelError as exc:
            raise StoreError(str(exc)) from None
        data = pack(Path(model_dir))
        self._writable()
        row = {"version": model.version, "sha256": hashlib.sha256(data).hexdigest(),
               "size": len(data), "meta": json.dumps(model.meta), "artifact": data,
               "created": datetime.now(UTC), "added_by": actor()}
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(model_versions), row)
        except IntegrityError:
            pass  # that version is stored already: versions name their content
        except SQLAlchemyError as exc:
            raise StoreError(f"model store {self.root}: cannot add {model.version}: "
                             f"{first_line(exc)}") from None
        return model.version

    def set_current(self, version: str, action: str, details: dict[str, Any]) -> None:
        self._writable()
        try:
            with self.engine.begin() as connection:
                sha256 = connection.execute(select(model_versions.c.sha256).where(
                    model_versions.c.version == version)).scalar()
                if sha256 is None:
                    raise StoreError(f"{self.root}: no model version {version!r}")
                self._point(connection, version, sha256, action, details)
        except SQLAlchemyError as exc:
            raise StoreError(f"model store {self.root}: cannot {action} {version}: "
                             f"{first_line(exc)}") from None

    def clear_current(self, action: str, details: dict[str, Any]) -> None:
        self._writable()
        try:
            with self.engine.begin() as connection:
                self._point(connection, None, None, action, details)
        except SQLAlchemyError as exc:
            raise StoreError(f"model store {self.root}: cannot {action}: {first_line(exc)}") \
                from None

    def _point(self, connection, version: str | None, sha256: str | None, action: str,
               details: dict[str, Any]) -> None:
        """Move the pointer and record it, in the caller's transaction; the
        pointer's row is locked first, so two promotions do not interleave."""
        stamp = datetime.now(UTC)
        query = select(model_current.c.id).where(model_current.c.id == 1)
        if connection.dialect.name == "postgresql":
            query = query.with_for_update()
        if connection.execute(query).first() is None:
            insert_ignoring(connection, model_current, {"id": 1, "changed": stamp})
            connection.execute(query)
        connection.execute(update(model_current).where(model_current.c.id == 1).values(
            version=version, sha256=sha256, changed=stamp))
        connection.execute(insert(model_history), {
            "time": stamp, "action": action, "version": version or "shipped",
            "user": actor(), "node": socket.gethostname(),
            "details": json.dumps(details, default=str)})


# -- the artifact ---------------------------------------------------------------------

def pack(model_dir: Path) -> bytes:
    """The model folder's files as one tar, the same bytes for the same files
    (sorted, no times or owners), so the checksum names the content."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for path in sorted(model_dir.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(data: bytes, directory: Path) -> None:
    """Write an artifact's files into ``directory``: plain files with plain
    names only (an artifact is data, never a path outside the cache)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive.getmembers():
                name = member.name
                if not member.isfile() or "/" in name or name.startswith(".") or not name:
                    raise ModelError(f"artifact member {name!r} is not a plain file")
                source = archive.extractfile(member)
                assert source is not None
                (directory / name).write_bytes(source.read())
    except tarfile.TarError as exc:
        raise ModelError(f"artifact is not a readable tar: {exc}") from None
