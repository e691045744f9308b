"""The fleet: every gateway node says who it is, every few seconds, in the
store's database; ``gateway nodes`` and the console's dashboard read it.

A node is a ``gateway run`` (the milter) with its ``[quarantine] node`` name
(default: the host name). Its row says its host, the gateway's version, the
newest migration it knows (nodes of two versions run side by side during an
upgrade), the model that scores its mail, when it started and its last
heartbeat, by the database's clock so that the nodes' own clocks do not
matter. A node whose heartbeat is older than :data:`STALE_AFTER` is marked
stale: stopped, hung, or cut off from the database.

The heartbeat is also how a node learns that the database does not answer:
it keeps serving (the model from its cache, the lists it read last, the
quarantine answering 4xx until the database is back) and says so in
``/metrics`` (``gateway_database_up``) and in its log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

import gateway
from gateway.db import first_line, insert_ignoring, schema_head, utc
from gateway.quarantine.schema import nodes

log = logging.getLogger("gateway.nodes")

HEARTBEAT = 10.0                       # seconds between heartbeats
STALE_AFTER = timedelta(seconds=35)    # three missed heartbeats and a little


@dataclass
class LocalState:
    """What this process knows about itself, for the heartbeat and /metrics."""

    model: str = ""                   # the version the last scored message used
    database_ok: bool = True
    database_problem: str = ""
    last_contact: float = 0.0         # time.time() of the last heartbeat written
    down_since: float = 0.0


LOCAL = LocalState()
_lock = threading.Lock()
_running: set[Heartbeat] = set()  # this process's heartbeats (two during a reload)


def model_seen(version: str) -> None:
    """The model version that scored a message on this node (from the verdict). The
    registry shows it: what scored this node's mail, not what it might load."""
    LOCAL.model = version


@dataclass(frozen=True)
class Node:
    name: str
    host: str
    version: str
    schema: str
    model: str
    pid: int
    started: datetime
    heartbeat: datetime
    age: float                      # seconds since the heartbeat, by the database's clock
    status: dict[str, Any]

    @property
    def stopped(self) -> bool:
        """Shut down on purpose (its last heartbeat said so)."""
        return bool(self.status.get("stopped"))

    @property
    def stale(self) -> bool:
        """Silent too long without having said it stops: dead, hung, or cut off."""
        return not self.stopped and self.age > STALE_AFTER.total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "version": self.version,
                "schema": self.schema, "model": self.model, "pid": self.pid,
                "started": self.started.isoformat(timespec="seconds"),
                "heartbeat": self.heartbeat.isoformat(timespec="seconds"),
                "age_seconds": round(self.age, 1), "stale": self.stale,
                "stopped": self.stopped}


def database_now(connection: Connection) -> datetime:
    """The database's clock on PostgreSQL (one clock for every node); this
    machine's on SQLite (which is one machine anyway)."""
    if connection.dialect.name == "postgresql":
        return utc(connection.execute(select(func.now())).scalar_one())
    return datetime.now(UTC)


def beat(connection: Connection, name: str, model: str, started: datetime,
         stopped: bool = False) -> None:
    """Write this node's row (insert or update) with a fresh heartbeat."""
    stamp = database_now(connection)
    values = {"host": socket.gethostname(), "version": gateway.__version__,
              "schema": schema_head(), "model": model or "-", "pid": os.getpid(),
              "heartbeat": stamp,
              "status": json.dumps({"stopped": stopped})}
    insert_ignoring(connection, nodes, {"name": name, "started": started, **values})
    connection.execute(update(nodes).where(nodes.c.name == name).values(
        started=started, **values))


def fleet(connection: Connection) -> list[Node]:
    """Every registered node, by name, with its heartbeat's age."""
    at = database_now(connection)
    found = []
    for row in connection.execute(select(nodes).order_by(nodes.c.name)):
        heartbeat = utc(row.heartbeat)
        found.append(Node(row.name, row.host, row.version, row.schema, row.model, row.pid,
                          utc(row.started), heartbeat, (at - heartbeat).total_seconds(),
                          json.loads(row.status or "{}")))
    return found


def forget(connection: Connection, name: str) -> bool:
    """Remove a node's row (a node taken out of service for good)."""
    return connection.execute(delete(nodes).where(nodes.c.name == name)).rowcount > 0


class Heartbeat:
    """A thread that writes this node's row every :data:`HEARTBEAT` seconds and
    keeps :data:`LOCAL` up to date about the database."""

    def __init__(self, store: Callable[[], Any], interval: float = HEARTBEAT):
        self.store = store          # () -> QuarantineStore (opened on first use)
        self.interval = interval
        self.started = datetime.now(UTC)
        self._stop = threading.Event()

    def start(self) -> Heartbeat:
        with _lock:
            _running.add(self)
        threading.Thread(target=self._loop, name="heartbeat", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop beating; the last heartbeat of the process (not one replaced
        on a reload) marks the node stopped, so that a node shut down on
        purpose is not taken for one that died."""
        self._stop.set()
        with _lock:
            _running.discard(self)
            last = not _running
        if last:  # at most a few seconds: a database that is away must not hold a shutdown
            final = threading.Thread(target=self.beat_once, kwargs={"stopped": True},
                                     name="heartbeat-final", daemon=True)
            final.start()
            final.join(3.0)

    def _loop(self) -> None:
        self.beat_once()
        while not self._stop.wait(self.interval):
            self.beat_once()

    def beat_once(self, stopped: bool = False) -> bool:
        """One heartbeat; True if the database took it."""
        try:
            store = self.store()
            with store.engine.begin() as connection:
                beat(connection, store.node, LOCAL.model, self.started, stopped)
        except Exception as exc:  # a heartbeat never takes the node down
            self._down(first_line(exc))
            return False
        self._up()
        return True

    def _down(self, problem: str) -> None:
        with _lock:
            if LOCAL.database_ok:
                LOCAL.down_since = time.time()
                log.error("database unreachable: %s; serving on the last good model and "
                          "lists, quarantined mail gets 4xx until it is back", problem)
            LOCAL.database_ok, LOCAL.database_problem = False, problem

    def _up(self) -> None:
        with _lock:
            if not LOCAL.database_ok:
                log.info("database reachable again after %.0f s",
                         time.time() - LOCAL.down_since)
            LOCAL.database_ok, LOCAL.database_problem = True, ""
            LOCAL.last_contact = time.time()
