"""gateway.toml: sections, embedded defaults and validation.

Every key has a default, so the gateway runs on one machine with no file at
all. A file only lists what differs. Problems are reported one line each,
``gateway.toml: milter.socket: expected unix:/path or inet:port@host``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gateway.durations import duration_problem, per_second
from gateway.paths import DEFAULT_CONFIG, DEFAULT_RULES, RULES_DIR
from gateway.registry import BUILTIN, DEFAULT_CHECKS, REGISTRY, SITE_SECTION
from gateway.schema import (
    ConfigError,
    load_section,
    non_negative,
    positive,
    setting,
    suggest_key,
)

Action = Literal["accept", "add_header", "quarantine", "reject", "tempfail"]
ACTIONS: tuple[Action, ...] = ("accept", "add_header", "quarantine", "reject", "tempfail")

_SOCKET = re.compile(r"^(unix|local):/.+$|^inet6?:\d{1,5}(@.+)?$")


def socket_problem(value: str) -> str | None:
    if _SOCKET.match(value):
        return None
    return "expected unix:/path or inet:port@host"


def _octal_mode(value: str) -> str | None:
    if re.fullmatch(r"0?[0-7]{3}", value):
        return None
    return f'expected an octal mode such as "660", got {value!r}'


def _networks(values: list[str]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not an IP address or network (e.g. 198.51.100.0/24)"
    return None


def _addresses(values: list[str]) -> str | None:
    for value in values:
        if not value or " " in value or value.count("@") > 1:
            return f"{value!r} is not an address, @domain or domain"
    return None


def _default_checks() -> list[str]:
    return list(DEFAULT_CHECKS)  # gateway.checks.REGISTRY


@dataclass(frozen=True)
class MilterSection:
    socket: str = setting(
        # Inside Postfix's queue directory, so a chrooted smtpd (Debian's
        # default) reaches it as unix:/gateway/milter.sock.
        "unix:/var/spool/postfix/gateway/milter.sock",
        socket_problem,
        "where Postfix connects: unix:/path or inet:port@host",
    )
    socket_mode: str = setting("660", _octal_mode, "permissions of a unix socket (octal)")
    socket_group: str = setting("postfix", doc="group of a unix socket (\"\" = ours)")
    on_error: Literal["tempfail", "accept"] = setting(
        "tempfail", doc="answer when the gateway itself fails on a message"
    )
    timeout: int = setting(600, positive, "seconds libmilter waits on the MTA")
    threads: int = setting(64, positive, "messages decided at once; more wait their turn")


@dataclass(frozen=True)
class PipelineSection:
    checks: list[str] = field(
        default_factory=_default_checks, metadata={"doc": "enabled checks, by name or module:Class"}
    )
    budget: float = setting(10.0, positive, "seconds all checks of one message may take")
    parallel: bool | Literal["auto"] = setting(
        "auto", doc="run checks that wait on the network (DNS, clamd) concurrently, so a "
        "worker waits for the slowest, not the sum: true, false, or \"auto\" (each in a "
        "thread only while its waits average over 1 ms and cores are spare; inline, threads "
        "would only cost CPU)")
    threads: int = setting(32, positive, "threads for checks run in parallel")
    workers: int = setting(
        2, non_negative, "worker processes running the checks (0 = in the milter, where "
        "the budget cannot stop a check stuck in C code); about one per core"
    )
    max_workers: int = setting(8, positive, "workers the pool may grow to while all are busy")
    grace: float = setting(2.0, non_negative, "seconds past the budget before a worker still "
                           "busy with a message is stopped (BUDGET_EXCEEDED)")
    worker_max_messages: int = setting(10000, non_negative, "messages a worker checks before "
                                       "it is replaced (0 = never)")
    heavy_message_bytes: int = setting(
        128 * 1024, positive, "messages larger than this may occupy all workers but one, so a "
        "burst of them leaves a lane for ordinary mail")
    heavy_cpu_seconds: float = setting(
        0.25, positive, "a client whose message used more CPU than this in a worker has its "
        "mail checked after other mail, on all workers but one, for five minutes")
    spool_threshold: int = setting(  # raw messages larger than this spill to a file
        1024 * 1024, positive, "bytes above which a message spills to a temp file"
    )
    spool_dir: str = setting("", doc="directory for spilled messages (default: system temp)")


@dataclass(frozen=True)
class LimitsSection:
    """How much of a message the parsers look at. Mail beyond a limit is
    still scored (on what fits) and gets a symbol saying which limit."""

    mime_depth: int = setting(30, positive, "nesting of multipart and message/* parts "
                              "(deeper parts are not opened: MIME_TOO_DEEP)")
    mime_parts: int = setting(500, positive, "MIME parts looked at (MIME_TOO_MANY_PARTS)")
    header_count: int = setting(500, positive, "header fields per header block "
                                "(HEADERS_TOO_MANY)")
    header_length: int = setting(16384, positive, "bytes of one header field, folded lines "
                                 "included (HEADER_TOO_LONG)")
    mime_parameters: int = setting(64, positive, "parameters of one Content-* field "
                                   "(MIME_TOO_MANY_PARAMETERS)")
    encoded_words: int = setting(200, positive, "RFC 2047 encoded words decoded per header "
                                 "(TOO_MANY_ENCODED_WORDS)")
    address_comment_depth: int = setting(10, positive, "nesting of (comments) in an address "
                                         "field (ADDRESS_UNPARSEABLE)")
    urls: int = setting(1000, positive, "URLs taken from the text (URLS_TOO_MANY)")
    text_bytes: int = setting(2 * 1024 * 1024, positive, "decoded text of all parts given to "
                              "the classifier (TEXT_TRUNCATED)")
    archive_members: int = setting(1000, positive, "entries read from one archive's directory "
                                   "(more: ATTACHMENT_ARCHIVE_LIMIT)")
    archive_depth: int = setting(3, positive, "archives inside archives opened "
                                 "(deeper: ATTACHMENT_ARCHIVE_LIMIT)")
    archive_bytes: int = setting(16 * 1024 * 1024, positive, "bytes decompressed from the "
                                 "archives of one message, in all: never more, whatever "
                                 "they declare (ATTACHMENT_ARCHIVE_LIMIT)")
    images: int = setting(20, positive, "pictures of one message searched for QR codes "
                          "(more: QR_SCAN_LIMIT)")
    image_bytes: int = setting(8 * 1024 * 1024, positive, "largest picture file searched for "
                               "QR codes (larger: QR_SCAN_LIMIT)")
    image_pixels: int = setting(40_000_000, positive, "largest picture, width x height as "
                                "declared, decoded to search for QR codes; checked before "
                                "decoding, so a decompression bomb is never unpacked "
                                "(larger: QR_SCAN_LIMIT)")
    image_seconds: float = setting(2.0, positive, "seconds spent decoding the pictures of one "
                                   "message, in all (the rest: QR_SCAN_LIMIT)")


@dataclass(frozen=True)
class PolicySection:
    rules: list[str] = setting([str(DEFAULT_RULES)], doc="rules files, later ones override")


@dataclass(frozen=True)
class ListsSection:
    allow_senders: list[str] = setting([], _addresses, "addresses, @domains or domains")
    block_senders: list[str] = setting([], _addresses, "addresses, @domains or domains")
    allow_ips: list[str] = setting([], _networks, "client IPs or networks")
    block_ips: list[str] = setting([], _networks, "client IPs or networks")
    refresh: float = setting(5.0, positive, "seconds a worker keeps the managed lists "
                             "(gateway list) before reading them again from the store")


@dataclass(frozen=True)
class SizeSection:
    max_bytes: int = setting(50 * 1024 * 1024, positive, "messages above this get SIZE_EXCEEDED")


@dataclass(frozen=True)
class ClassifierSection:
    model: str = setting("", doc="model folder (default: the store's current model, "
                         "else the shipped models/default)")
    store: str = setting("/var/lib/gateway/models", lambda v: _model_store(v),
                         doc="model store for train/promote/"
                         "rollback: a directory, or a database URL (sqlite:////path, "
                         "postgresql://...) that several nodes share")
    reload_interval: float = setting(2.0, positive,
                                     "seconds between checks for a newly promoted model")
    training_set: str = setting(
        "", lambda v: _quarantine_url(v) if v else None,
        "database of the learned training set (gateway learn, train --feedback): "
        "sqlite:////path or postgresql://... (default: the quarantine's [quarantine] url)")
    target_fpr: float = setting(
        0.001, lambda v: _target_fpr(v),
        "share of good mail allowed in BAYES_95 and above (the default rules quarantine on "
        "it alone): each model's bands are placed on the ham it carries, the site's own "
        "after a promotion (docs/classifier.md)")
    autolearn: Literal["off", "review", "on"] = setting(
        "review", doc="learn from evidence that is not the classifier's own: off; review "
        "(candidates wait in the feedback queue for an admin); on (accepted after "
        "autolearn_delay_days unless someone objects)")
    autolearn_delay_days: float = setting(
        3.0, non_negative, "days a candidate waits for a label or a release that contradicts "
        "it before it may be learned")
    autolearn_per_sender: int = setting(
        20, positive, "candidates from one sender (authenticated domain for ham, client "
        "network for spam) at most, so that one sender cannot flood the training set")

    def training_set_url(self, quarantine_url: str) -> str:
        return self.training_set or quarantine_url


def _host_port(value: str) -> str | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if host and port.isdigit() and 0 < int(port) < 65536:
        return None
    return f"expected host:port such as 127.0.0.1:3310, got {value!r}"


@dataclass(frozen=True)
class ClamavSection:
    socket: str = setting("/run/clamav/clamd.ctl", doc="clamd's unix socket (LocalSocket)")
    address: str = setting("", _host_port, "clamd over TCP as host:port (overrides socket)")
    on_fail: Literal["tempfail", "accept"] = setting(
        "tempfail", doc="when clamd is down or errs: make the sender retry, or accept "
        "with CLAMAV_ERROR in the headers")
    on_virus: Literal["reject", "quarantine"] = setting("reject", doc="what a virus gets")
    max_size: int = setting(25 * 1024 * 1024, positive,
                            "largest message sent to clamd; keep it <= clamd's StreamMaxLength")
    timeout: float = setting(8.0, positive, "seconds to wait for clamd's answer")


DEFAULT_RETENTION = {"held": 30, "released": 7, "deleted": 1, "expired": 30}
RETENTION_STATES = tuple(DEFAULT_RETENTION)


def _retention(value: dict[str, int]) -> str | None:
    for key, days in value.items():
        if key not in RETENTION_STATES:
            return f"unknown state {key!r} (states: {', '.join(RETENTION_STATES)})"
        if days < 0:
            return f"{key}: days must be 0 or more"
    return None


def _target_fpr(value: float) -> str | None:
    from gateway.classifier.thresholds import target_fpr_problem

    return target_fpr_problem(value)


def _model_store(value: str) -> str | None:
    """A folder, or a database URL; a URL of another kind is a mistake, not a
    folder named 'postgres:'."""
    expected = "expected a folder, sqlite:////path/to/file.db or postgresql://user@host/db"
    if not value:
        return expected
    if ("://" in value or value.startswith(("sqlite:", "postgres"))) and not \
            value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return expected
    return None


def _quarantine_url(value: str) -> str | None:
    if value == "" or value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return None
    return "expected sqlite:////path/to/file.db, postgresql://user@host/db, or \"\""


@dataclass(frozen=True)
class QuarantineSection:
    url: str = setting("sqlite:////var/lib/gateway/quarantine.db", _quarantine_url,
                       "where held mail is kept (\"\" = Postfix's hold queue)")
    node: str = setting("", doc="this gateway's name in shared quarantines (default: hostname)")
    keep_rejected_days: int = setting(0, non_negative,
                                      "keep copies of rejected mail this many days (0 = off)")
    retention: dict[str, int] = setting(
        DEFAULT_RETENTION, _retention,
        "days per state before a held message expires or a record is removed")
    purge_interval: float = setting(3600.0, positive, "seconds between automatic purges")

    def retention_days(self) -> dict[str, int]:
        """The retention table, with defaults for the states not listed."""
        return {**DEFAULT_RETENTION, **self.retention}


_APPROVE_KEY = re.compile(r"^(default|[a-z][a-z0-9_]*|[A-Z][A-Z0-9_]*)$")


APPROVERS: tuple[str, ...] = ("none", "analyst", "admin")  # from the least strict


def _approve(value: str | dict[str, str]) -> str | None:
    table = value if isinstance(value, dict) else {"": value}
    for key, who in table.items():
        where = f"{key}: " if key else ""
        if key and not _APPROVE_KEY.match(key):
            return (f"{key!r}: a key is default, a check's name (the class of its symbols, "
                    "as gateway symbols lists them: bayes, clamav...) or a symbol's name")
        if who not in APPROVERS:
            return f'{where}expected "admin", "analyst" or "none", got {who!r}'
    return None


@dataclass(frozen=True)
class ReleaseSection:
    smtp: str = setting("127.0.0.1:10026", _host_port,
                        "Postfix listener that re-injects released mail without the milter")
    timeout: float = setting(60.0, positive, "seconds for the re-injection")
    approve: str | dict[str, str] = setting(
        "analyst", _approve,
        "who approves a requested release: \"admin\" (analysts' and recipients' releases "
        "wait for an admin), \"analyst\" (recipients' wait for an analyst), \"none\" "
        "(recipients release their own mail); or a table by symbol class (a check's name) "
        "or symbol, with default; viruses always need an admin")


def _sample(value: float) -> str | None:
    if value < 0:
        return f"must be 0 or more, got {value:g}"
    if value > 1 and not value.is_integer():
        return f"a fraction is at most 1, a count is a whole number; got {value:g}"
    return None


@dataclass(frozen=True)
class ReplaySection:
    """Accepted mail kept for ``gateway replay`` (held and kept-rejected mail
    is in the quarantine anyway)."""

    keep_accepted_sample: float = setting(
        0.0, _sample, "accepted messages kept for what-if replays: 0 = none, a fraction "
        "up to 1 (0.01 = one in a hundred, at random), or a count above 1 (that many, "
        "the newest)")
    accepted_retention_days: int = setting(7, positive, "days a kept accepted message stays")


def _ip_addresses(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"{value!r} is not an IP address"
    return None


@dataclass(frozen=True)
class DnsSection:
    nameservers: tuple[str, ...] = setting((), _ip_addresses,
                                           "DNS servers to ask (default: /etc/resolv.conf's)")
    port: int = setting(53, positive, "their port")
    timeout: float = setting(2.0, positive, "seconds to wait for one server's answer")
    lifetime: float = setting(3.0, positive, "seconds one lookup may take in all")
    failure_ttl: float = setting(10.0, positive,
                                 "seconds a DNS failure is remembered (no retry before)")
    server_down_after: int = setting(
        2, positive, "distinct names a server must time out on, answering nothing in "
        "between, before it is probed and, if silent, skipped for failure_ttl")
    cache_size: int = setting(10000, positive, "answers kept in each worker's cache (about "
                              "500 bytes each; expired ones leave first)")


def _actions_by_domain(value: dict[str, str]) -> str | None:
    for domain, action in value.items():
        if action not in ("reject", "quarantine"):
            return f"{domain}: expected \"reject\" or \"quarantine\", got {action!r}"
    return None


def _local_parts(values: tuple[str, ...]) -> str | None:
    for value in values:
        if not value or "@" in value or any(c.isspace() for c in value):
            return f"{value!r} is not a local part (write postmaster, not postmaster@domain)"
    return None


@functools.cache
def _default_authserv_id() -> str:
    import socket

    return socket.getfqdn() or "localhost"


@dataclass(frozen=True)
class AuthSection:
    authserv_id: str = setting("", doc="our name in Authentication-Results (default: FQDN)")
    dmarc_reject: Literal["reject", "quarantine"] = setting(
        "reject", doc="what a DMARC failure under p=reject gets")
    dmarc_reject_domains: dict[str, str] = setting(
        {}, _actions_by_domain, "per From domain: \"reject\" or \"quarantine\" for p=reject")
    trusted_arc_sealers: tuple[str, ...] = setting(
        (), doc="ARC sealers (d= of ARC-Seal) whose passing chain may override a DMARC failure")
    local_names: tuple[str, ...] = setting(
        (), doc="our own host names and IPs: a HELO claiming one of them is forged")
    helo_forged_action: Literal["score", "reject"] = setting(
        "score", doc="HELO claiming to be us: a score, or reject")
    require_tls_from: tuple[str, ...] = setting(
        (), doc="sender domains whose mail must arrive over TLS")
    require_tls_action: Literal["reject", "tempfail", "quarantine"] = setting(
        "tempfail", doc="what plaintext mail from those domains gets")
    reject_exempt_recipients: tuple[str, ...] = setting(
        ("postmaster", "abuse"), _local_parts,
        "local parts never refused for their sender's domain or DMARC when a message is "
        "for them alone (RFC 5321 4.5.1); [] to refuse them like any other")
    max_dkim_signatures: int = setting(
        10, positive, "DKIM signatures verified per message (the rest are not)")

    def server_id(self) -> str:
        return self.authserv_id or _default_authserv_id()


@dataclass(frozen=True)
class LogSection:
    level: Literal["debug", "info", "warning", "error"] = setting("info")
    format: Literal["text", "json"] = setting(
        "text", doc="text: time, level, logger, message; json: one JSON object per line "
        "(for journald, Loki)")


def _listen(value: str) -> str | None:
    return _host_port(value) if value else None


@dataclass(frozen=True)
class ScanSection:
    listen: str = setting("", _listen, "spamd (SPAMC) and rspamd (/checkv2) protocol for "
                          "MTAs without milter, as host:port (\"\" = off)")
    allow: list[str] = setting(["127.0.0.1/32", "::1/128"], _networks,
                               "client addresses allowed to ask")
    secret: str = setting("", doc="if set, clients must send it in a Secret: header "
                          "(checked before the message is read)")
    timeout: float = setting(30.0, positive, "seconds a client has to send its whole request "
                             "(and again to read the answer)")
    max_clients: int = setting(64, positive, "requests read and scanned at once; more wait "
                               "for a slot until their timeout, then get a tempfail")
    max_per_client: int = setting(32, positive, "of those, from one client address")
    max_connections: int = setting(256, positive, "connections open at once, those still "
                                   "sending their request's head included (more are refused)")


@dataclass(frozen=True)
class MetricsSection:
    listen: str = setting("127.0.0.1:9525", _listen,
                          "Prometheus /metrics and /health as host:port (\"\" = off)")


def _hour(value: int) -> str | None:
    return None if 0 <= value <= 23 else f"an hour of the day, 0 to 23, got {value}"


def _console_url(value: str) -> str | None:
    if value == "" or re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        return None
    return f"expected the console's address such as https://quarantine.example.org, got {value!r}"


def _ldap_url(value: str) -> str | None:
    if value == "" or re.fullmatch(r"ldaps?://[^\s/?#]+/?", value):
        return None
    return f"expected ldap://host[:port] or ldaps://host[:port], got {value!r}"


def _ldap_user_dn(value: str) -> str | None:
    if value == "" or (value.count("{name}") == 1 and "=" in value):
        return None
    return f"expected a DN with {{name}} in it, such as uid={{name}},ou=people,dc=example," \
           f"dc=org, got {value!r}"


def _ldap_groups(value: dict[str, str]) -> str | None:
    for group, role in value.items():
        if role not in ("admin", "analyst"):
            return f"{group}: expected \"admin\" or \"analyst\", got {role!r}"
    return None


@dataclass(frozen=True)
class WebSection:
    """The analysts' console, ``gateway web`` (behind the site's reverse proxy)."""

    listen: str = setting("127.0.0.1:8025", _host_port, "the console's host:port (HTTP; the "
                          "reverse proxy in front of it does TLS)")
    trusted_proxies: tuple[str, ...] = setting(
        (), _ip_addresses,
        "reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (the "
        "client's address for the login limits, https for Secure cookies); none by default: "
        "name yours, even on 127.0.0.1")
    secure_cookies: Literal["auto", "always"] = setting(
        "auto", doc="auto: cookies are Secure when the request came over HTTPS (as the "
        "trusted proxy says); always: Secure even over plain HTTP")
    session_idle_minutes: int = setting(60, positive, "a session ends after this long unused")
    session_hours: int = setting(12, positive, "a session ends this long after the login")
    login_attempts: int = setting(5, positive, "failed logins for one account from one client "
                                  "before each next try waits (30 s, doubling to 15 minutes); "
                                  "4x from one client over all accounts in 15 minutes")
    page_size: int = setting(50, positive, "messages per page of the list")
    threads: int = setting(8, positive, "requests served at once")
    connection_limit: int = setting(500, positive, "open connections in all; more wait in the "
                                    "kernel's queue until one closes")
    connections_per_client: int = setting(32, positive, "open connections from one client (an "
                                          "IPv4 address, an IPv6 /64; trusted_proxies "
                                          "excepted); more are closed at once")
    request_seconds: int = setting(30, positive, "a client has this long to send a whole "
                                   "request, then its connection is closed (slow clients)")
    idle_seconds: int = setting(60, positive, "an idle keep-alive connection is closed after "
                                "this long")
    preview_html_kib: int = setting(256, positive, "KiB of a message's HTML body the console "
                                    "renders (the page says when the body is longer)")
    preview_seconds: float = setting(10.0, positive, "a message preview not made within this "
                                     "long is stopped (its worker process killed); the page "
                                     "says so")
    train_ham: list[str] = setting([], doc="good mail the Feedback page's Train button trains "
                                   "on with the learned set: Maildir folders, mbox files or "
                                   "folders of .eml (as gateway train --ham)")
    train_spam: list[str] = setting([], doc="spam it trains on, likewise (--spam)")
    ldap_url: str = setting("", lambda v: _ldap_url(v), "log in against this directory "
                            "as well as local accounts: ldap://host or ldaps://host:636 "
                            "(\"\" = local accounts only)")
    ldap_user_dn: str = setting("", lambda v: _ldap_user_dn(v),
                                "a user's DN, {name} standing for the login name: "
                                "uid={name},ou=people,dc=example,dc=org")
    ldap_groups: dict[str, str] = setting({}, lambda v: _ldap_groups(v),
                                          "group DN -> role (admin or analyst); a user in "
                                          "none of them cannot log in")
    ldap_timeout: float = setting(5.0, positive, "seconds to wait for the directory")


@dataclass(frozen=True)
class DigestSection:
    """Recipients' daily digest of their held mail, with links to release or report."""

    enabled: bool = setting(False, doc="send digests (gateway web sends them daily at hour; "
                            "gateway digest send sends now)")
    url: str = setting("", _console_url, "the console's address as recipients reach it, "
                       "for the links (https://...)")
    sender: str = setting("", doc="From and envelope sender of digests (default: "
                          "postmaster@ this host's name)")
    hour: int = setting(7, _hour, "hour of the day (UTC) after which the daily digest goes out")
    link_days: int = setting(7, positive, "days a digest link works")
    max_messages: int = setting(100, positive, "messages listed in one digest")


def _domains(values: list[str]) -> str | None:
    for value in values:
        if not value or "@" in value or any(c.isspace() for c in value) or "." not in value:
            return f"{value!r} is not a domain (write example.org)"
    return None


def _protected(tables: list[dict[str, Any]]) -> str | None:
    for index, table in enumerate(tables):
        unknown = sorted(set(table) - {"name", "addresses"}) if isinstance(table, dict) else []
        if not isinstance(table, dict):
            return f"[{index}]: expected a table with name and addresses"
        if unknown:
            return f"[{index}]: unknown key {unknown[0]!r} (known keys: addresses, name)"
        name, addresses = table.get("name"), table.get("addresses", [])
        if not isinstance(name, str) or not name.strip():
            return f"[{index}]: name: expected the person's name, such as \"Jane Doe\""
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.count("@") == 1 and a.rpartition("@")[0]
                for a in addresses):
            return f"[{index}] ({name}): addresses: expected a list of addresses"
    return None


@dataclass(frozen=True)
class GreylistSection:
    """Greylisting at the SMTP stages (gateway.greylist): off unless enabled."""

    enabled: bool = setting(False, doc="greylist first attempts from suspicious clients (no "
                            "valid reverse DNS, a listed IP, a dynamic-looking name) at RCPT, "
                            "and mail in the policy's greylist score band after DATA")
    delay: float | str = setting("5m", duration_problem, "how long a sender must wait before "
                                 "its retry is taken: seconds, or \"2s\", \"5m\", \"1h\"")
    remember: float | str = setting("35d", duration_problem, "how long a triplet that passed "
                                    "is let through at once (renewed by each message)")
    retry_window: float | str = setting("2d", duration_problem, "how long a first attempt "
                                        "waits for its retry before it is forgotten")
    exempt_senders: list[str] = setting([], _addresses, "sender addresses, @domains or "
                                        "domains never greylisted (login-code and "
                                        "password-reset senders)")
    ipv4_prefix: int = setting(24, lambda v: None if 8 <= v <= 32 else "expected 8 to 32",
                               "an IPv4 client is keyed by its network of this size")
    ipv6_prefix: int = setting(64, lambda v: None if 16 <= v <= 128 else "expected 16 to 128",
                               "an IPv6 client is keyed by its network of this size")


RATELIMIT_KEYS = ("client_ip", "client_net", "sender_domain", "auth_identity", "recipient")


def _rate(value: str) -> str | None:
    try:
        per_second(value)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class IdentitySection:
    """Who may be imitated, and the correspondent memory (gateway/checks/identity.py)."""

    org_domains: list[str] = setting(
        [], _domains, "the domains we receive mail for (empty: learned from the recipients' "
        "domains; gateway doctor says which)")
    org_names: list[str] = setting(
        [], doc="the organisation's names as a display name would show them (empty: the "
        "first label of each org domain of 4 letters or more)")
    protected: list[dict[str, Any]] = setting(
        [], _protected, "[[identity.protected]] tables: name = \"Jane Doe\", addresses = "
        "[...]: a person worth imitating and the addresses that are really theirs")
    protected_files: list[str] = setting(
        [], doc="files of [[protected]] tables (gateway identity import writes one)")
    brands: list[str] = setting([str(RULES_DIR / "brands.toml")],
                                doc="brands files, later ones add or replace brands")
    freemail: list[str] = setting([str(RULES_DIR / "freemail.txt")],
                                  doc="freemail domain lists, one domain a line")
    freemail_domains: list[str] = setting([], _domains, "freemail domains to add")
    outbound: Literal["learn", "off"] = setting(
        "learn", doc="mail from a SASL-authenticated client or a submission service: learn "
        "its recipients as the user's correspondents and do not spam-score it (\"off\": "
        "score it like any mail)")
    submission_daemons: list[str] = setting(
        [], doc="values of Postfix's {daemon_name} macro (milter_macro_daemon_name in "
        "master.cf) whose mail is our users' outbound mail, e.g. [\"ORIGINATING\"]")
    sender_login_maps: list[str] = setting(
        [], doc="files in the form of Postfix's smtpd_sender_login_maps source (an address or "
        "@domain, then the SASL logins that own it): outbound mail teaches the memory under "
        "its From address only when the login is that address or owns it here")
    known_messages: int = setting(2, positive, "messages accepted from a sender before it is a "
                                  "known correspondent (or one reply, or one release)")
    known_days: float = setting(3.0, non_negative, "days between the first and the last of "
                                "those messages")
    half_life_days: float = setting(90.0, positive, "counts halve for every this many days a "
                                    "correspondent is not seen")
    retention_days: int = setting(400, positive, "days after which a correspondent not seen "
                                  "again is forgotten")
    refresh: float = setting(30.0, positive, "seconds a worker keeps what it read of the "
                             "correspondent memory")
    lookup_timeout: float = setting(0.5, positive, "seconds a message waits for the memory "
                                    "before it is judged without it")


@dataclass(frozen=True)
class RateLimitSection:
    """One ``[[ratelimit]]`` table (gateway.ratelimit)."""

    name: str = setting("", lambda v: None if re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", v)
                        else "expected a short name in lower case such as \"per_ip\"",
                        "the limit's name, in the logs, metrics and gateway ratelimit show")
    key: Literal["client_ip", "client_net", "sender_domain", "auth_identity", "recipient"] = \
        setting("client_ip", doc="what is counted: client_ip, client_net (its /24 or /64), "
                "sender_domain, auth_identity (SMTP AUTH login), recipient")
    rate: str = setting("", _rate, "how many messages, such as \"100/hour\"")
    burst: int = setting(0, non_negative, "how many may come at once (0 = the rate's count)")
    action: Literal["tempfail", "quarantine", "score"] = setting(
        "tempfail", doc="over the limit: tempfail (4.7.1 at RCPT), quarantine, or score "
        "(RATELIMITED in the verdict)")


@dataclass(frozen=True)
class FuzzySection:
    """Near-duplicate detection (gateway.checks.fuzzy)."""

    threshold: int = setting(50, lambda v: None if 1 <= v <= 300 else "expected 1 to 300",
                             "TLSH distance at or under which two texts are near-duplicates")
    short_text: int = setting(256, positive, "normalised texts shorter than this many "
                              "bytes are compared by an exact hash instead")
    campaign_recipients: int = setting(20, positive, "recipients one near-duplicate from "
                                       "unknown senders must reach within campaign_window "
                                       "for BULK_CAMPAIGN")
    campaign_window: float | str = setting("1h", duration_problem,
                                           "the window campaigns are counted in")
    expire: float | str = setting("90d", duration_problem, "learned hashes not matched for "
                                  "this long are removed")
    max_hashes: int = setting(50000, positive, "learned hashes kept (the least recently "
                              "matched go first)")
    refresh: float = setting(5.0, positive, "seconds a worker keeps the learned hashes and "
                             "recent messages before reading them again")


@dataclass(frozen=True)
class LinksSection:
    """The links check (gateway/checks/links.py)."""

    shorteners: list[str] = setting([], _addresses, "URL shortener domains beside the "
                                    "shipped rules/shorteners.txt (URL_SHORTENER)")


SECTIONS: dict[str, type] = {
    "milter": MilterSection,
    "pipeline": PipelineSection,
    "policy": PolicySection,
    "limits": LimitsSection,
    "lists": ListsSection,
    "size": SizeSection,
    "classifier": ClassifierSection,
    "clamav": ClamavSection,
    "quarantine": QuarantineSection,
    "release": ReleaseSection,
    "replay": ReplaySection,
    "dns": DnsSection,
    "auth": AuthSection,
    "log": LogSection,
    "logging": LogSection,  # the section's name before [log]; still read
    "metrics": MetricsSection,
    "scan": ScanSection,
    "web": WebSection,
    "digest": DigestSection,
    "identity": IdentitySection,
    "greylist": GreylistSection,
    "fuzzy": FuzzySection,
    "links": LinksSection,
}


@dataclass(frozen=True)
class Config:
    milter: MilterSection = field(default_factory=MilterSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    policy: PolicySection = field(default_factory=PolicySection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    lists: ListsSection = field(default_factory=ListsSection)
    size: SizeSection = field(default_factory=SizeSection)
    classifier: ClassifierSection = field(default_factory=ClassifierSection)
    clamav: ClamavSection = field(default_factory=ClamavSection)
    quarantine: QuarantineSection = field(default_factory=QuarantineSection)
    release: ReleaseSection = field(default_factory=ReleaseSection)
    replay: ReplaySection = field(default_factory=ReplaySection)
    dns: DnsSection = field(default_factory=DnsSection)
    auth: AuthSection = field(default_factory=AuthSection)
    log: LogSection = field(default_factory=LogSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    scan: ScanSection = field(default_factory=ScanSection)
    web: WebSection = field(default_factory=WebSection)
    digest: DigestSection = field(default_factory=DigestSection)
    identity: IdentitySection = field(default_factory=IdentitySection)
    greylist: GreylistSection = field(default_factory=GreylistSection)
    fuzzy: FuzzySection = field(default_factory=FuzzySection)
    ratelimit: tuple[RateLimitSection, ...] = ()  # [[ratelimit]] tables
    links: LinksSection = field(default_factory=LinksSection)
    # [check.NAME] tables: a site's own checks' settings, validated against
    # the section each declares once the enabled checks are known
    # (gateway.checks.check_sections).
    check: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<embedded defaults>"


def parse_config(text: str, source: str, base_dir: Path | None = None) -> Config:
    """Parse and validate TOML text; raise ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    errors: list[str] = []
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name == "ratelimit":
            sections[name] = _ratelimits(table, f"{source}: ratelimit", errors)
            continue
        if name == SITE_SECTION:
            sections[name] = _site_sections(table, f"{source}: {name}", errors)
            continue
        if name not in SECTIONS:
            errors.append(f"{source}: [{name}]: unknown section{suggest_key(name, SECTIONS)}")
            continue
        sections[name] = load_section(SECTIONS[name], table, f"{source}: {name}", errors)
    if "logging" in sections:  # [log]'s name before it was [log]
        old = sections.pop("logging")
        sections.setdefault("log", old)
    if base_dir is not None:
        _resolve_paths(sections, base_dir)
    if errors:
        raise ConfigError(errors)
    return Config(source=source, **sections)


def _ratelimits(tables: Any, where: str, errors: list[str]) -> tuple[RateLimitSection, ...]:
    """[[ratelimit]] tables: each needs a name of its own and a rate."""
    if not isinstance(tables, list):
        errors.append(f"{where}: expected [[ratelimit]] tables")
        return ()
    found: list[RateLimitSection] = []
    for index, table in enumerate(tables):
        before = len(errors)
        limit = load_section(RateLimitSection, table, f"{where}[{index}]", errors)
        if isinstance(table, dict):
            for key in ("name", "rate"):
                if key not in table:
                    errors.append(f"{where}[{index}].{key}: every limit needs one")
        if limit.name and limit.name in {f.name for f in found}:
            errors.append(f"{where}[{index}].name: {limit.name!r} is used twice")
        if len(errors) == before:
            found.append(limit)
    return tuple(found)


def _site_sections(table: Any, where: str, errors: list[str]) -> dict[str, dict[str, Any]]:
    """[check.NAME] tables, one per site check; a built-in check's settings
    have a section of their own."""
    if not isinstance(table, dict):
        errors.append(f"{where}: expected tables such as [check.my_check]")
        return {}
    found: dict[str, dict[str, Any]] = {}
    sections = {check.name: check.section for check in REGISTRY}
    for name, settings in table.items():
        if name in BUILTIN:
            own = f"; its settings are in [{sections[name]}]" if sections[name] else ""
            errors.append(f"{where}.{name}: {name} is a built-in check ([check.NAME] is for a "
                          f"site's own checks){own}")
        elif not isinstance(settings, dict):
            errors.append(f"{where}.{name}: expected a table")
        else:
            found[name] = settings
    return found


def _resolve_paths(sections: dict, base_dir: Path) -> None:
    """Relative paths in a config file are relative to that file."""
    if "policy" in sections:
        rules = [str((base_dir / p).resolve()) for p in sections["policy"].rules]
        sections["policy"] = PolicySection(rules=rules)
    if "classifier" in sections:
        classifier = sections["classifier"]
        sections["classifier"] = replace(
            classifier,
            model=str((base_dir / classifier.model).resolve()) if classifier.model else "",
            store=classifier.store if classifier.store.startswith(
                ("sqlite:///", "postgresql://", "postgres://"))
            else str((base_dir / classifier.store).resolve()),
        )
    if "web" in sections:
        web = sections["web"]
        sections["web"] = replace(web, **{
            key: [str((base_dir / p).resolve()) for p in getattr(web, key)]
            for key in ("train_ham", "train_spam")})
    if "identity" in sections:
        identity = sections["identity"]
        sections["identity"] = replace(identity, **{
            key: [str((base_dir / p).resolve()) for p in getattr(identity, key)]
            for key in ("brands", "freemail", "protected_files")})


def load_config(path: str | Path | None = None) -> Config:
    """Load ``path``, or the default file if it exists, else embedded defaults.

    An explicitly named file must exist; the default path is optional.
    """
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return Config()
        path = DEFAULT_CONFIG
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    return parse_config(text, str(path), base_dir=path.parent)
