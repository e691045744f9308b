"""The console's shared state, in the store's database: accounts, sessions,
the login limit, the audit trail, the reviewed feedback queue, settings.

Everything is in the quarantine's database (the same SQLAlchemy engine,
tables from the same Alembic migrations), so every node's ``gateway web``
sees the same users and sessions, one audit trail and one queue, on SQLite
for one machine or PostgreSQL for several. The command line (``gateway
user``, ``gateway feedback``) uses this module too; it imports no web
framework.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway.db import first_line, utc
from gateway.jobs import one_at_a_time
from gateway.quarantine.schema import (
    audit,
    console_jobs,
    console_settings,
    events,
    feedback,
    login_failures,
    messages,
    users,
    web_sessions,
)
from gateway.quarantine.store import QuarantineError, QuarantineStore, now

ROLES = ("analyst", "admin")
LABELS = ("ham", "spam")
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12  # OWASP ASVS 2.1.1
MAX_PASSWORD = 1024
LOGIN_WINDOW = timedelta(minutes=15)
BACKOFF_START = timedelta(seconds=30)
BACKOFF_MAX = timedelta(minutes=15)
ACCOUNT_WINDOW = timedelta(hours=1)
ACCOUNT_FAILURES = 100
DEVICE_DAYS = 90
# The password column of an account the directory (LDAP) vouches for: no
# argon2 hash, so no password typed here can ever match it locally.
DIRECTORY_ACCOUNT = "!ldap"
log = logging.getLogger("gateway.web")


class ConsoleError(Exception):
    """A console operation that cannot be done, as one line."""


class LoginRefused(ConsoleError):
    def __init__(self, message: str, retry_after: int = 0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    disabled: bool
    created: datetime
    last_login: datetime | None
    directory: bool = False  # an LDAP account: its password and role are the directory's

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "disabled": self.disabled,
                "source": "ldap" if self.directory else "local",
                "created": self.created.isoformat(timespec="seconds"),
                "last_login": self.last_login.isoformat(timespec="seconds")
                if self.last_login else None}


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    created: datetime


@dataclass(frozen=True)
class Label:
    id: int
    message: str
    label: str
    source: str
    who: str
    note: str
    created: datetime
    state: str
    reviewer: str | None
    reviewed: datetime | None
    review_note: str
    # from the message's record, when it is still there
    subject: str | None = None
    sender: str | None = None
    score: float | None = None
    message_state: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "message": self.message, "label": self.label,
                "source": self.source, "who": self.who, "note": self.note,
                "created": self.created.isoformat(timespec="seconds"), "state": self.state,
                "reviewer": self.reviewer,
                "reviewed": self.reviewed.isoformat(timespec="seconds")
                if self.reviewed else None,
                "review_note": self.review_note, "subject": self.subject,
                "sender": self.sender, "score": self.score}


class Console:
    def __init__(self, store: QuarantineStore, login_attempts: int = 5,
                 session_idle: timedelta = timedelta(hours=1),
                 session_max: timedelta = timedelta(hours=12),
                 clock: Callable[[], datetime] = now, directory: Any = None):
        self.clock = clock
        self.store = store
        self.engine = store.engine
        self.login_attempts = login_attempts
        self.session_idle = session_idle
        self.session_max = session_max
        self._hasher: Any = None
        self._dummy_hash: str | None = None
        self._device_key: bytes | None = None
        self.directory = directory  # gateway.web.directory.Directory, or None

    # -- passwords -----------------------------------------------------------------

    @property
    def hasher(self):
        if self._hasher is None:
            from argon2 import PasswordHasher

            self._hasher = PasswordHasher()  # argon2id, the library's current defaults
        return self._hasher

    def _hash(self, password: str) -> str:
        problem = password_problem(password)
        if problem:
            raise ConsoleError(problem)
        return self.hasher.hash(password)

    def _dummy(self) -> str:
        """A hash of a random password, verified when the name is unknown, so
        that a wrong name takes as long as a wrong password."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_hex(16))
        return self._dummy_hash

    def _verify(self, stored: str, password: str) -> bool:
        from argon2.exceptions import InvalidHashError, VerificationError

        try:
            return bool(self.hasher.verify(stored, password))
        except (VerificationError, InvalidHashError):
            return False

    # -- users ---------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str) -> User:
        if not USER_NAME.match(name):
            raise ConsoleError(f"{name!r}: a user name is 1 to 64 letters, digits and . _ @ -, "
                               "starting with a letter or digit")
        if role not in ROLES:
            raise ConsoleError(f"role must be analyst or admin, not {role!r}")
        stamp = now()
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(users), {
                    "name": name, "role": role, "password": self._hash(password),
                    "disabled": False, "created": stamp, "updated": stamp})
        except IntegrityError:
            raise ConsoleError(f"user {name!r} exists already") from None
        except SQLAlchemyError as exc:
            raise ConsoleError(f"cannot add user {name!r}: {first_line(exc)}") from None
        return self._user_or_fail(name)

    def user(self, name: str) -> User | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.name == name)).first()
        return _user(row) if row else None

    def _user_or_fail(self, name: str) -> User:
        found = self.user(name)
        if found is None:
            raise ConsoleError(f"no user {name!r}")
        return found

    def users(self) -> list[User]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(users).order_by(users.c.name)).all()
        return [_user(r) for r in rows]

    def set_password(self, name: str, password: str) -> None:
        found = self.user(name)
        if found is not None and found.directory:
            raise ConsoleError(f"{name} is a directory (LDAP) account: its password is the "
                               "directory's")
        hashed = self._hash(password)
        self._update_user(name, password=hashed)
        self.end_sessions(name)  # a new password logs the old sessions out

    def set_role(self, name: str, role: str) -> None:
        if role not in ROLES:
            raise ConsoleError(f"role must be analyst or admin, not {role!r}")
        self._update_user(name, role=role)

    def set_disabled(self, name: str, disabled: bool = True) -> None:
        self._update_user(name, disabled=disabled)
        if disabled:
            self.end_sessions(name)

    def _update_user(self, name: str, **values: Any) -> None:
        with self.engine.begin() as connection:
            result = connection.execute(update(users).where(users.c.name == name)
                                        .values(updated=now(), **values))
        if result.rowcount == 0:
            raise ConsoleError(f"no user {name!r}")

    def count_admins(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(
                select(func.count()).select_from(users).where(and_(
                    users.c.role == "admin", users.c.disabled.is_(False)))).scalar_one())

    # -- logging in ----------------------------------------------------------------

    def authenticate(self, name: str, password: str, address: str, known: bool = False
                     ) -> User:
        """The user, if the password is right and no login limit applies;
        every refusal is the same to the client, whatever the reason.

        The limits (see :meth:`_wait`) count failures per account *and
        client*, so a stranger's wrong passwords cannot lock the account's
        owner out; ``known`` is a browser that has logged in to this account
        before (the console's signed device cookie), which the limits for
        unknown clients do not hold back."""
        stamp = self.clock()
        key = name.strip()[:64]
        client = client_key(address)
        with self.engine.begin() as connection:
            connection.execute(delete(login_failures).where(
                login_failures.c.time < stamp - timedelta(days=1)))
            wait = self._wait(connection, key, client, known, stamp)
        if wait > 0:
            raise LoginRefused(f"too many failed logins; try again in {_duration(wait)}",
                               wait)
        with self.engine.connect() as connection:
            row = connection.execute(select(users).where(users.c.name == key)).first()
        if self.directory is not None and USER_NAME.match(key) and \
                (row is None or row.password == DIRECTORY_ACCOUNT):
            # Not a local account: the directory's to say. (Local accounts
            # never get here, so a directory that is down locks none out.)
            role = self._ask_directory(key, password)
            if role is not None and not (row is not None and row.disabled):
                return self._directory_login(key, role, client, stamp)
            ok = False
        elif row is None:
            self._verify(self._dummy(), password)  # as long as for a real account
            ok = False
        else:
            ok = self._verify(row.password, password) and not row.disabled
        if not ok:
            with self.engine.begin() as connection:
                connection.execute(insert(login_failures),
                                   {"time": stamp, "name": key, "address": client})
            raise LoginRefused("wrong name or password, or the account is disabled")
        assert row is not None  # ok only with a row
        with self.engine.begin() as connection:
            values: dict[str, Any] = {"last_login": stamp}
            if self.hasher.check_needs_rehash(row.password):
                values["password"] = self.hasher.hash(password)
            connection.execute(update(users).where(users.c.id == row.id).values(**values))
            connection.execute(delete(login_failures).where(and_(
                login_failures.c.name == key, login_failures.c.address == client)))
        return self._user_or_fail(key)

    def _ask_directory(self, name: str, password: str) -> str | None:
        from gateway.web.directory import DirectoryDown

        try:
            return self.directory.role(name, password)
        except DirectoryDown as exc:
            log.warning("web: login of %s: the directory did not answer: %s", name, exc)
            raise LoginRefused("the directory (LDAP) did not answer; try again in a moment "
                               "(local accounts can log in)") from None

    def _directory_login(self, name: str, role: str, client: str, stamp: datetime) -> User:
        """A directory user logged in: their account here, with the role their
        groups give now (a change of group changes it at the next login)."""
        with self.engine.begin() as connection:
            done = connection.execute(update(users).where(users.c.name == name).values(
                role=role, password=DIRECTORY_ACCOUNT, updated=stamp, last_login=stamp))
            if done.rowcount == 0:
                connection.execute(insert(users), {
                    "name": name, "role": role, "password": DIRECTORY_ACCOUNT,
                    "disabled": False, "created": stamp, "updated": stamp,
                    "last_login": stamp})
            connection.execute(delete(login_failures).where(and_(
                login_failures.c.name == name, login_failures.c.address == client)))
        return self._user_or_fail(name)

    def _wait(self, connection: Any, name: str, client: str, known: bool, stamp: datetime
              ) -> int:
        """Seconds before ``client`` may try ``name`` again (0: now).

        - This client and account: after ``login_attempts`` failures, each
          next try waits 30 s, doubling with every further failure up to
          15 minutes (a success from this client starts again).
        - This client, any account (guessing many accounts): 4 x
          ``login_attempts`` failures in 15 minutes, unless ``known``.
        - This account, any client (a guess from each of many addresses):
          100 failures in an hour (OWASP ASVS 2.2.1), unless ``known``.
        """
        def failures(*where: Any) -> Any:
            return connection.execute(select(func.count(), func.min(login_failures.c.time),
                                             func.max(login_failures.c.time))
                                      .where(and_(*where))).first()

        until: list[datetime] = []
        count, _, last = failures(login_failures.c.name == name,
                                  login_failures.c.address == client)
        if count >= self.login_attempts:
            backoff = BACKOFF_START * 2 ** min(count - self.login_attempts, 16)
            until.append(utc(last) + min(backoff, BACKOFF_MAX))
        if not known:
            count, oldest, _ = failures(login_failures.c.address == client,
                                        login_failures.c.time >= stamp - LOGIN_WINDOW)
            if count >= self.login_attempts * 4:
                until.append(utc(oldest) + LOGIN_WINDOW)
            count, oldest, _ = failures(login_failures.c.name == name,
                                        login_failures.c.time >= stamp - ACCOUNT_WINDOW)
            if count >= ACCOUNT_FAILURES:
                until.append(utc(oldest) + ACCOUNT_WINDOW)
        latest = max(until, default=stamp)
        return max(0, math.ceil((latest - stamp).total_seconds()))

    def device_token(self, name: str) -> str:
        """A token a browser keeps after logging in as ``name`` (the device
        cookie, OWASP's answer to lockouts): signed, dated, no secret in it."""
        issued = int(self.clock().timestamp())
        return f"{name}~{issued}~{self._device_signature(name, issued)}"

    def known_device(self, token: str | None, name: str) -> bool:
        """Whether ``token`` is this console's, for ``name``, and recent."""
        if not token or len(token) > 200 or token.count("~") != 2:
            return False
        holder, issued, signature = token.split("~")
        if holder != name.strip() or not issued.isdigit():
            return False
        if self.clock().timestamp() - int(issued) > DEVICE_DAYS * 86400:
            return False
        return constant_equal(signature, self._device_signature(holder, int(issued)))

    def _device_signature(self, name: str, issued: int) -> str:
        if self._device_key is None:
            self._device_key = self.secret("device_secret")
        return hmac.new(self._device_key, f"device~{name}~{issued}".encode(),
                        hashlib.sha256).hexdigest()

    def open_session(self, user: User, address: str) -> tuple[str, Session]:
        """A new session: the cookie's token (only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        stamp = now()
        with self.engine.begin() as connection:
            connection.execute(delete(web_sessions).where(or_(
                web_sessions.c.seen < stamp - self.session_idle,
                web_sessions.c.created < stamp - self.session_max)))
            connection.execute(insert(web_sessions), {
                "id": _digest(token), "user_id": user.id, "csrf": csrf, "created": stamp,
                "seen": stamp, "address": address[:64]})
        return token, Session(user, csrf, stamp)

    def session(self, token: str | None) -> Session | None:
        """The live session of this cookie token, if any (and touch it)."""
        if not token or len(token) > 200:
            return None
        stamp = now()
        with self.engine.connect() as connection:
            row = connection.execute(
                select(web_sessions, users.c.name).join(users, users.c.id ==
                                                        web_sessions.c.user_id)
                .where(web_sessions.c.id == _digest(token))).first()
        if row is None:
            return None
        if utc(row.seen) < stamp - self.session_idle or \
                utc(row.created) < stamp - self.session_max:
            self.close_session(token)
            return None
        user = self.user(row.name)
        if user is None or user.disabled:
            return None
        if stamp - utc(row.seen) > timedelta(seconds=30):
            with self.engine.begin() as connection:
                connection.execute(update(web_sessions).where(
                    web_sessions.c.id == row.id).values(seen=stamp))
        return Session(user, row.csrf, utc(row.created))

    def close_session(self, token: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(web_sessions).where(web_sessions.c.id == _digest(token)))

    def end_sessions(self, name: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(web_sessions).where(web_sessions.c.user_id.in_(
                select(users.c.id).where(users.c.name == name).scalar_subquery())))

    # -- the audit trail -----------------------------------------------------------

    def log(self, actor: str, action: str, target: str = "", detail: str = "",
            address: str | None = None) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(audit), {
                "time": now(), "actor": actor, "action": action[:32], "target": target,
                "detail": detail, "address": (address or "")[:64] or None})

    def audit_trail(self, limit: int = 200, offset: int = 0, actor: str | None = None
                    ) -> list[dict[str, Any]]:
        query = select(audit).order_by(audit.c.id.desc()).limit(limit).offset(offset)
        if actor:
            query = query.where(audit.c.actor == actor)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [{"time": utc(r.time), "actor": r.actor, "action": r.action,
                 "target": r.target, "detail": r.detail, "address": r.address} for r in rows]

    # -- the feedback queue --------------------------------------------------------

    def add_label(self, message: str, label: str, source: str, who: str, note: str = ""
                  ) -> tuple[int, str]:
        """Queue a label for review: ('added' | 'changed' | 'unchanged', id).
        One pending label per message and person: labelling again changes it."""
        if label not in LABELS:
            raise ConsoleError(f"label must be ham or spam, not {label!r}")
        stamp = now()
        with self.engine.begin() as connection:
            if connection.execute(select(messages.c.id).where(messages.c.id == message)
                                  ).first() is None:
                raise ConsoleError(f"no quarantined message {message!r}")
            current = connection.execute(select(feedback.c.id, feedback.c.label).where(and_(
                feedback.c.message == message, feedback.c.who == who,
                feedback.c.state == "pending"))).first()
            if current is not None and current.label == label:
                return current.id, "unchanged"
            if current is not None:
                connection.execute(update(feedback).where(feedback.c.id == current.id)
                                   .values(label=label, note=note, created=stamp))
                identifier, outcome = current.id, "changed"
            else:
                identifier = connection.execute(insert(feedback).values(
                    message=message, label=label, source=source, who=who, note=note,
                    created=stamp, state="pending", review_note="")
                    .returning(feedback.c.id)).scalar_one()
                outcome = "added"
            connection.execute(insert(events), {
                "message": message, "time": stamp, "actor": who,
                "action": f"labelled-{label}", "detail": f"feedback #{identifier}, {source}",
                "reason": note or None})
        return identifier, outcome

    def labels(self, state: str | None = "pending", limit: int = 500,
               message: str | None = None) -> list[Label]:
        query = (select(feedback, messages.c.subject, messages.c.sender, messages.c.score,
                        messages.c.state.label("message_state"))
                 .select_from(feedback.outerjoin(messages, messages.c.id == feedback.c.message))
                 .order_by(feedback.c.id.desc()).limit(limit))
        if state:
            query = query.where(feedback.c.state == state)
        if message:
            query = query.where(feedback.c.message == message)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [Label(r.id, r.message, r.label, r.source, r.who, r.note, utc(r.created),
                      r.state, r.reviewer, utc(r.reviewed) if r.reviewed else None,
                      r.review_note, r.subject if r.subject is not None else r.mail_subject,
                      r.sender, r.score, r.message_state)
                for r in rows]

    def label(self, identifier: int) -> Label:
        with self.engine.connect() as connection:
            row = connection.execute(select(feedback).where(feedback.c.id == identifier)).first()
        if row is None:
            raise ConsoleError(f"no label #{identifier} in the feedback queue")
        return Label(row.id, row.message, row.label, row.source, row.who, row.note,
                     utc(row.created), row.state, row.reviewer,
                     utc(row.reviewed) if row.reviewed else None, row.review_note)

    def review(self, identifier: int, accept: bool, reviewer: str, note: str = "",
               training_set_url: str | None = None) -> str:
        """Accept (into the learned training set) or reject one pending label;
        returns what happened, as a short line."""
        item = self.label(identifier)
        if item.state != "pending":
            raise ConsoleError(f"label #{identifier} was {item.state} already")
        if accept and item.source == "autolearn":  # its message may be its own, not held
            from gateway.classifier.autolearn import accept_candidates

            return "autolearn candidate: " + accept_candidates(
                self.store.url, training_set_url or self.store.url, reviewer,
                [identifier]).describe()
        key = None
        if accept:
            raw = self.store.raw(item.message)
            if raw is None:
                raise ConsoleError(f"label #{identifier}: the message's content is gone "
                                   "(deleted); reject the label instead")
            from gateway.classifier.trainingset import TrainingSet, TrainingSetError

            try:
                trainingset = TrainingSet(training_set_url or self.store.url)
            except TrainingSetError as exc:
                raise ConsoleError(str(exc)) from None
            try:
                outcome = trainingset.learn(
                    bytes(raw), item.label, f"feedback #{item.id} ({item.source} {item.who})",
                    f"{item.who}, accepted by {reviewer}", item.message,
                    note or item.note)
            except TrainingSetError as exc:
                raise ConsoleError(str(exc)) from None
            finally:
                trainingset.close()
            from gateway.classifier.corpus import content_key

            key = content_key(bytes(raw))
            result = f"accepted into the learned training set as {item.label} ({outcome})"
        else:
            result = "rejected"
        with self.engine.begin() as connection:
            done = connection.execute(update(feedback).where(and_(
                feedback.c.id == identifier, feedback.c.state == "pending")).values(
                state="accepted" if accept else "rejected", reviewer=reviewer,
                reviewed=now(), review_note=note, training_key=key))
            if done.rowcount == 0:
                raise ConsoleError(f"label #{identifier} was reviewed meanwhile")
            connection.execute(insert(events), {
                "message": item.message, "time": now(), "actor": reviewer,
                "action": "label-accepted" if accept else "label-rejected",
                "detail": f"feedback #{identifier}: {item.label} from {item.who}",
                "reason": note or None})
        return result

    def count_labels(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(feedback.c.state, func.count())
                                      .group_by(feedback.c.state)).all()
        return {"pending": 0, "accepted": 0, "rejected": 0, **{s: int(n) for s, n in rows}}

    # -- settings and jobs ---------------------------------------------------------

    def secret(self, key: str) -> bytes:
        """A random secret shared by every node (created on first use)."""
        with self.engine.begin() as connection:
            value = connection.execute(select(console_settings.c.value).where(
                console_settings.c.key == key)).scalar()
            if value is None:
                value = secrets.token_hex(32)
                try:
                    with connection.begin_nested():
                        connection.execute(insert(console_settings),
                                           {"key": key, "value": value})
                except IntegrityError:  # another node made it first
                    value = connection.execute(select(console_settings.c.value).where(
                        console_settings.c.key == key)).scalar_one()
        return bytes.fromhex(value)

    def start_job(self, kind: str, who: str) -> int:
        """A new running job of ``kind``, unless one is running (on any node):
        its row is written first and the others are looked for after, one
        transaction at a time, so two consoles asked at once start one."""
        with self.engine.begin() as connection:
            one_at_a_time(connection, f"console-{kind}")
            identifier = connection.execute(insert(console_jobs).values(
                kind=kind, who=who, node=self.store.node, started=now(), status="running",
                output="").returning(console_jobs.c.id)).scalar_one()
            running = connection.execute(select(console_jobs.c.id).where(and_(
                console_jobs.c.kind == kind, console_jobs.c.status == "running",
                console_jobs.c.id != identifier,
                console_jobs.c.started > now() - timedelta(hours=6)))).first()
            if running is not None:  # leaving the block rolls our row back
                raise ConsoleError(f"a {kind} job is running already (#{running.id})")
            return int(identifier)

    def update_job(self, identifier: int, output: str) -> None:
        """A running job's output so far (the page shows its progress)."""
        with self.engine.begin() as connection:
            connection.execute(update(console_jobs).where(and_(
                console_jobs.c.id == identifier, console_jobs.c.status == "running"))
                .values(output=output[-20000:]))

    def finish_job(self, identifier: int, ok: bool, output: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(console_jobs).where(console_jobs.c.id == identifier)
                               .values(finished=now(), status="done" if ok else "failed",
                                       output=output[-20000:]))

    def jobs(self, kind: str, limit: int = 5) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(console_jobs).where(console_jobs.c.kind == kind)
                                      .order_by(console_jobs.c.id.desc()).limit(limit)).all()
        return [{"id": r.id, "who": r.who, "node": r.node, "started": utc(r.started),
                 "finished": utc(r.finished) if r.finished else None, "status": r.status,
                 "output": r.output} for r in rows]


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"a password needs {MIN_PASSWORD} characters or more"
    if len(password) > MAX_PASSWORD:
        return f"a password is at most {MAX_PASSWORD} characters"
    return None


def client_key(address: str) -> str:
    """What the login limits count as one client: an IPv4 address, or an
    IPv6 /64 (one host commonly has a whole /64 to pick addresses from)."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip()[:64] or "?"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = (seconds + 59) // 60
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def constant_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(row.id, row.name, row.role, bool(row.disabled), utc(row.created),
                utc(row.last_login) if row.last_login else None,
                row.password == DIRECTORY_ACCOUNT)




__all__ = ["Console", "ConsoleError", "Label", "LoginRefused", "QuarantineError", "Session",
           "User"]
