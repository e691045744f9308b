"""``gateway doctor``: is this gateway set up to work? One line per check.

Each line says ✔ (fine), ✘ (a problem, with how to fix it) or - (does not
apply here, and why): the config and rules, clamd and the age of its
signatures, each DNS server, the quarantine store and its schema, the spam
model (and whether a shared model store answers), this node's heartbeat in
the node registry, Postfix's milter settings, its release listener and whether it can
reach the milter's socket, and the modes of the files that hold mail.
Exit status 1 if any line is ✘.

Unlike ``gateway config check``, a peer that is down (clamd, DNS, the
database) is a ✘ here: the doctor is asked when something does not work.
Nothing is changed: the store is opened read-only, Postfix is only asked.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.checks.clamav import clamd_command
from gateway.commands.configcheck import examine
from gateway.config import Config
from gateway.paths import DEFAULT_CONFIG
from gateway.terminal import dumps, printable

# The checks that ask the DNS: without any of them, DNS does not matter.
DNS_CHECKS = {"spf", "dkim", "arc", "dmarc", "sender", "iprev"}
DEFAULT_SIGNATURE_AGE = 3.0


@dataclass(frozen=True)
class Line:
    check: str
    status: str  # "ok", "fail", "skip"
    text: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "text": self.text, "fix": self.fix}


def ok(check: str, text: str) -> Line:
    return Line(check, "ok", text)


def fail(check: str, text: str, fix: str) -> Line:
    return Line(check, "fail", text, fix)


def skip(check: str, text: str) -> Line:
    return Line(check, "skip", text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="gateway",
                        help="the user the service runs as (default: gateway)")
    parser.add_argument("--postfix-config", metavar="DIR",
                        help="Postfix's configuration directory (default: postconf's own, "
                             "/etc/postfix)")
    parser.add_argument("--dns-probe", default=".", metavar="NAME",
                        help="a name whose SOA every DNS server must answer (default: the "
                             "root, '.')")
    parser.add_argument("--max-signature-age", type=float, default=DEFAULT_SIGNATURE_AGE,
                        metavar="DAYS", help="oldest acceptable ClamAV signatures, in days "
                        f"(default {DEFAULT_SIGNATURE_AGE:g}; 0 = do not check)")
    parser.add_argument("--json", action="store_true", help="a JSON array of the lines")
    parser.add_argument("--fix-owners", action="store_true",
                        help="give every file in the state directories to the directory's "
                        "owner, the gateway's user (as root)")


def main(args: argparse.Namespace) -> int:
    lines = diagnose(args)
    if args.json:
        print(dumps([line.as_dict() for line in lines], indent=2))
    else:
        marks = _marks()
        width = max(len(line.check) for line in lines)
        for line in lines:
            fix = f" -- fix: {line.fix}" if line.fix else ""
            print(printable(f"{marks[line.status]} {line.check:<{width}}  {line.text}{fix}"))
    return 1 if any(line.status == "fail" for line in lines) else 0


def _marks() -> dict[str, str]:
    """✔ ✘ -, or plain words where the terminal cannot show them."""
    try:
        "✔✘-".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return {"ok": "OK  ", "fail": "FAIL", "skip": "--  "}
    return {"ok": "✔", "fail": "✘", "skip": "-"}


def diagnose(args: argparse.Namespace) -> list[Line]:
    path = getattr(args, "config", None)
    lines, config = config_lines(path)
    if config is None:
        return lines
    postconf = Postconf(args.postfix_config)
    steps: list[Callable[[], Iterable[Line]]] = [
        lambda: clamd_lines(config, args.max_signature_age),
        lambda: dns_lines(config, args.dns_probe),
        lambda: store_lines(config),
        lambda: model_lines(config),
        lambda: identity_lines(config),
        lambda: bulk_lines(config),
        lambda: node_lines(config),
        lambda: postfix_lines(config, postconf),
        lambda: permission_lines(config, args.user, path),
        lambda: owner_lines(config, args.fix_owners),
    ]
    for step in steps:
        try:
            lines += list(step())
        except Exception as exc:  # one broken probe must not hide the others
            lines.append(fail("doctor", f"a check failed: {type(exc).__name__}: {exc}",
                              "report this as a bug in gateway doctor"))
    return lines


# -- config and rules ------------------------------------------------------------------


def config_lines(path: str | None) -> tuple[list[Line], Config | None]:
    findings = examine(path, start_checks=False)
    config = findings.config
    where = path or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else "embedded defaults")
    lines = []
    for problem in findings.errors:
        fix = ("correct the symbol name (gateway symbols --all lists them)"
               if "unknown symbol" in problem else "edit the file named; gateway config check "
               "re-checks it")
        lines.append(fail("config", problem, fix))
    if findings.errors:
        return lines, None
    assert config is not None and findings.rules is not None
    rules = findings.rules
    lines.append(ok("config", f"{where}: valid; checks {', '.join(findings.checks)}"))
    lines.append(ok("rules", f"{', '.join(rules.sources)}: valid, every symbol known; "
                             f"quarantine at {rules.quarantine:g}, reject at {rules.reject:g}"))
    return lines, config


# -- clamd ---------------------------------------------------------------------------------


def clamd_lines(config: Config, max_age_days: float) -> list[Line]:
    if "clamav" not in config.pipeline.checks:
        return [skip("clamd", "the clamav check is not enabled")]
    settings = config.clamav
    where = settings.address or settings.socket
    try:
        answer = clamd_command(config.clamav, b"VERSION")
    except OSError as exc:
        fix = ("systemctl start clamav-daemon (it needs signatures: freshclam)"
               if not settings.address else f"start clamd on {settings.address}")
        then = ("mail is answered 4xx" if settings.on_fail == "tempfail"
                else "mail passes unscanned")
        return [fail("clamd", f"not answering at {where}: {exc.strerror or exc}; until it "
                     f"does, {then}", fix)]
    version, _, rest = answer.partition("/")
    database, _, date = rest.partition("/")
    if max_age_days <= 0:
        return [ok("clamd", f"{version} answering at {where} (signature age not checked)")]
    if not date:
        return [fail("clamd", f"{version} at {where} reports no signature database version "
                     "(no daily database loaded)", "run freshclam, then restart clamd")]
    try:
        built = datetime.strptime(" ".join(date.split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return [ok("clamd", f"{version} answering at {where}, signatures {database} "
                   f"of {date.strip()!r}")]
    age = (datetime.now() - built).total_seconds() / 86400
    text = f"{version} answering at {where}, signatures {database} from {built:%Y-%m-%d %H:%M}"
    if age > max_age_days:
        return [fail("clamd", f"{text}: {age:.1f} days old (over {max_age_days:g})",
                     "check freshclam (systemctl status clamav-freshclam; "
                     "journalctl -u clamav-freshclam)")]
    return [ok("clamd", f"{text} ({age:.1f} days old)")]


# -- DNS -----------------------------------------------------------------------------------


def dns_lines(config: Config, probe: str) -> list[Line]:
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype
    import dns.resolver

    if not DNS_CHECKS & set(config.pipeline.checks):
        return [skip("dns", "no enabled check asks the DNS")]
    servers = list(config.dns.nameservers)
    source = "[dns] nameservers"
    if not servers:
        source = "/etc/resolv.conf"
        try:
            servers = [server if isinstance(server, str) else server.answer_nameserver()
                       for server in dns.resolver.Resolver(configure=True).nameservers]
        except dns.resolver.NoResolverConfiguration:
            return [fail("dns", "no DNS servers: [dns] nameservers is empty and "
                         "/etc/resolv.conf names none", "set [dns] nameservers")]
    lines = []
    for server in servers:
        check = f"dns {server}" if config.dns.port == 53 else f"dns {server}:{config.dns.port}"
        query = dns.message.make_query(probe, dns.rdatatype.SOA)
        started = time.monotonic()
        try:
            response = dns.query.udp(query, str(server), timeout=config.dns.timeout,
                                     port=config.dns.port)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(query, str(server), timeout=config.dns.timeout,
                                         port=config.dns.port)
        except (dns.exception.DNSException, OSError) as exc:
            lines.append(fail(check, f"no answer for {probe} SOA within {config.dns.timeout:g} s "
                              f"({type(exc).__name__}: {exc})",
                              f"start or fix the server, or name working ones in {source}"))
            continue
        millis = (time.monotonic() - started) * 1000
        rcode = dns.rcode.to_text(response.rcode())
        if response.rcode() != dns.rcode.NOERROR or not response.answer:
            lines.append(fail(check, f"answered {rcode} for {probe} SOA, with no answer",
                              "the gateway needs a resolver that answers any name "
                              f"(recursive); fix {source}"))
            continue
        lines.append(ok(check, f"answered {probe} SOA in {millis:.0f} ms (from {source})"))
    return lines


# -- the quarantine store ------------------------------------------------------------------


def store_lines(config: Config) -> list[Line]:
    url = config.quarantine.url
    if not url:
        return [skip("store", "quarantine.url is empty: held mail stays in Postfix's hold "
                     "queue")]
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.commands.configcheck import _safe
    from gateway.db import MIGRATIONS, read_only_engine

    where = _safe(url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return [fail("store", f"{where}: {path} does not exist yet",
                         "gateway init creates it (or start the gateway once)")]
    heads = set(ScriptDirectory(str(MIGRATIONS)).get_heads())
    try:
        engine = read_only_engine(url)
        try:
            with engine.connect() as connection:
                current = set(MigrationContext.configure(connection).get_current_heads())
                held = connection.execute(text(
                    "SELECT count(*) FROM messages WHERE state = 'held'")).scalar() \
                    if current else 0
        finally:
            engine.dispose()
    except ModuleNotFoundError as exc:
        return [fail("store", f"{where}: the driver {exc.name} is not installed",
                     "pip install 'gateway[postgres]'")]
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return [fail("store", f"{where}: not reachable: {reason}",
                     "start the database, or correct quarantine.url")]
    if len(heads) != 1:
        return [fail("store", f"the gateway's migrations have {len(heads)} heads "
                     f"({', '.join(sorted(heads))})", "report this as a packaging bug")]
    if current != heads:
        at = ", ".join(sorted(current)) or "empty"
        return [fail("store", f"{where}: schema at {at}, this gateway needs {min(heads)}",
                     "restart the gateway or run gateway quarantine list: either migrates it")]
    return [ok("store", f"{where}: reachable, schema at {min(heads)} (head); {held} held")]


# -- the spam model ------------------------------------------------------------------------


def model_lines(config: Config) -> list[Line]:
    if "bayes" not in config.pipeline.checks:
        return [skip("model", "the bayes check is not enabled")]
    from gateway.checks.bayes import SHIPPED_MODEL, model_location
    from gateway.classifier.model import ModelError, load_model

    try:
        location = model_location(config)
        model = load_model(location)
    except (ModelError, OSError, ValueError) as exc:
        return [fail("model", str(exc), "gateway model rollback, or set [classifier] model "
                     "to a working model folder")]
    digests = model.meta.get("sha256") or {}
    checksum = ", ".join(f"{name} sha256 {digest[:16]}" for name, digest in sorted(
        digests.items()))
    which = ("the shipped model" if Path(location).resolve() == SHIPPED_MODEL.resolve()
             else str(location))
    shared = _shared_store_problem(config)
    if shared:
        return [fail("model", f"{shared}; this node serves on its last good model, "
                     f"{model.version} from {which}",
                     "start the database or correct [classifier] store; promotions reach "
                     "this node once it answers")]
    from gateway.classifier.site import cold_start

    placed = model.placed(config.classifier.target_fpr)
    bands = placed.placement.describe() if placed.placement else \
        "bands at the model's own calibration (it carries no ham scores)"
    return [ok("model", f"{model.version} from {which}: loads, checksums match ({checksum})"),
            ok("model bands", bands),
            ok("model on this site", cold_start(config, placed).describe())]


def identity_lines(config: Config) -> list[Line]:
    """The identity check's lists, and where its idea of "our domains" comes from."""
    if "identity" not in config.pipeline.checks:
        return [skip("identity", "the identity check is not enabled")]
    from gateway.checks.identity import IdentityCheck
    from gateway.correspondents import Memory, memory_url
    from gateway.db import read_only_engine
    from gateway.ruleset import Ruleset
    from gateway.schema import ConfigError

    try:
        check = IdentityCheck(config, Ruleset(), reader=None)  # it reads no rules
    except ConfigError as exc:
        return [fail("identity", "; ".join(exc.problems),
                     "correct the files named in [identity] brands, freemail or "
                     "protected_files")]
    settings = config.identity
    told = (f"{len(check.people)} protected people, {len(check.brands.brands)} brands, "
            f"{len(check.freemail)} freemail domains; outbound mail: {settings.outbound}")
    if settings.org_domains:
        return [ok("identity", f"our domains: {', '.join(settings.org_domains)}; {told}")]
    seen: list[str] = []
    url = memory_url(config.quarantine.url)
    if url is not None:
        try:
            memory = Memory(read_only_engine(url))  # the doctor changes nothing
            try:
                seen = sorted(memory.recipient_domains())
            finally:
                memory.close()
        except Exception:  # an unreadable store has its own line above
            seen = []
    learned = ", ".join(seen[:10]) + (", ..." if len(seen) > 10 else "") if seen else \
        "none yet"
    return [ok("identity", f"[identity] org_domains is empty: our domains are learned from "
               f"the recipients' domains (so far: {learned}); {told}")]


def bulk_lines(config: Config) -> list[Line]:
    """Greylisting, rate limits and near-duplicates: on or off, and whether
    they have the store they keep their state in (shared by every node)."""
    store = bool(config.quarantine.url)
    fix = "set [quarantine] url: the state lives in the store's database"
    lines: list[Line] = []
    greylist = config.greylist
    if not greylist.enabled:
        lines.append(skip("greylist", "off ([greylist] enabled = false)"))
    elif not store:
        lines.append(fail("greylist", "enabled, but there is no store ([quarantine] url is "
                          "empty): no node greylists", fix))
    else:
        lines.append(ok("greylist", f"on: a first attempt waits {greylist.delay}, a sender "
                        f"that passed is remembered {greylist.remember}; "
                        f"{len(greylist.exempt_senders)} exempt senders"))
    limits = config.ratelimit
    if not limits:
        lines.append(skip("ratelimit", "no [[ratelimit]] tables"))
    else:
        shown = "; ".join(f"{r.name}: {r.rate} by {r.key}, then {r.action}" for r in limits)
        if store:
            lines.append(ok("ratelimit", f"{shown} (counted in the store, across nodes)"))
        else:
            lines.append(fail("ratelimit", f"{shown}: no store, so each node counts alone "
                              "and N nodes let in N times the rate", fix))
    if "fuzzy" not in config.pipeline.checks:
        lines.append(skip("fuzzy", "the near-duplicate check is not enabled"))
    elif not store:
        lines.append(fail("fuzzy", "enabled, but there is no store: no learned spam hashes "
                          "and no campaign counts", fix))
    else:
        lines.append(ok("fuzzy", f"near-duplicates within distance {config.fuzzy.threshold}; "
                        f"a campaign is {config.fuzzy.campaign_recipients} recipients within "
                        f"{config.fuzzy.campaign_window}"))
    return lines


def _shared_store_problem(config: Config) -> str:
    """Why a database model store does not answer ('' if it does, or is none)."""
    from gateway.classifier.store import ModelStore, StoreError, is_database_url

    if config.classifier.model or not is_database_url(config.classifier.store):
        return ""
    try:
        ModelStore(config.classifier.store).current_version()
    except StoreError as exc:
        return str(exc)
    return ""


# -- the node registry -------------------------------------------------------------------


def node_lines(config: Config) -> list[Line]:
    """This node's heartbeat in the shared registry (see gateway.nodes)."""
    if not config.quarantine.url:
        return [skip("node", "quarantine.url is empty: no shared database, no registry")]
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.db import first_line, read_only_engine
    from gateway.nodes import fleet

    name = config.quarantine.node or socket.gethostname()
    url = config.quarantine.url
    try:
        engine = read_only_engine(url)  # the doctor changes nothing
        try:
            with engine.connect() as connection:
                nodes = fleet(connection)
        finally:
            engine.dispose()
    except (SQLAlchemyError, ModuleNotFoundError) as exc:
        return [fail("node", f"cannot read the node registry: {first_line(exc)}",
                     "see the store line above")]
    others = [n for n in nodes if n.name != name]
    stale = [n.name for n in others if n.stale]
    fleet_text = (f"; {len(others)} other node{'s' if len(others) != 1 else ''}"
                  + (f", stale: {', '.join(stale)} (gateway nodes)" if stale else "")
                  if others else "")
    mine = next((n for n in nodes if n.name == name), None)
    if mine is None:
        return [fail("node", f"node {name} has not registered{fleet_text}",
                     "start the gateway (gateway run) on this node; it registers within "
                     "seconds if it reaches the database")]
    if mine.stopped:
        return [fail("node", f"node {name} was stopped {mine.age:.0f} s ago{fleet_text}",
                     "start the gateway (gateway run) on this node")]
    if mine.stale:
        return [fail("node", f"node {name}: last heartbeat {mine.age:.0f} s ago{fleet_text}",
                     "the milter is stopped, hung or cannot reach the database: see its log")]
    return [ok("node", f"node {name}: heartbeat {mine.age:.0f} s ago, gateway "
               f"{mine.version}, model {mine.model}{fleet_text}")]


# -- Postfix -------------------------------------------------------------------------------


class Postconf:
    """Asks Postfix's postconf(1), with ``-c DIR`` when given."""

    def __init__(self, directory: str | None):
        self.directory = directory
        self.program = shutil.which("postconf") or (
            "/usr/sbin/postconf" if Path("/usr/sbin/postconf").exists() else None)

    def _run(self, *args: str) -> str:
        if self.program is None:
            raise PostconfError("postconf not found: is Postfix installed?")
        command = [self.program]
        if self.directory:
            command += ["-c", self.directory]
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise PostconfError((result.stderr.strip() or "failed").splitlines()[-1])
        return result.stdout

    def values(self, *names: str) -> dict[str, str]:
        found = {}
        for line in self._run("-x", *names).splitlines():
            name, _, value = line.partition("=")
            found[name.strip()] = value.strip()
        return found

    def services(self) -> list[list[str]]:
        """master.cf services, each as its fields (-o options included)."""
        entries: list[str] = []
        for line in self._run("-M").splitlines():
            if line[:1].isspace() and entries:
                entries[-1] += " " + line.strip()
            elif line.strip():
                entries.append(line.strip())
        return [entry.split() for entry in entries]


class PostconfError(Exception):
    pass


def postfix_lines(config: Config, postconf: Postconf) -> list[Line]:
    socket_spec = config.milter.socket
    local = socket_spec.startswith(("unix:", "local:"))
    if postconf.program is None:
        if local:
            return [fail("postfix", "postconf not found, but the milter listens on a local "
                         "socket", "apt install postfix")]
        return [skip("postfix", f"postconf not found; the milter listens on {socket_spec} "
                     "for a Postfix elsewhere: check it there")]
    names = ("smtpd_milters", "non_smtpd_milters", "milter_default_action", "milter_protocol",
             "queue_directory")
    try:
        values = postconf.values(*names)
        services = postconf.services()
    except (PostconfError, OSError, subprocess.SubprocessError) as exc:
        return [fail("postfix", f"postconf: {exc}", "fix Postfix's configuration "
                     f"({postconf.directory or '/etc/postfix'})")]
    queue_dir = Path(values.get("queue_directory", "/var/spool/postfix"))
    chrooted = {
        "smtpd_milters": _chrooted(services, lambda s: s[1] == "inet" and s[7] == "smtpd"),
        "non_smtpd_milters": _chrooted(services, lambda s: s[7] == "cleanup"),
    }
    lines = []
    wanted = _postfix_spec(socket_spec, chrooted["smtpd_milters"], queue_dir)
    for name in ("smtpd_milters", "non_smtpd_milters"):
        value = values.get(name, "")
        if any(_same_milter(entry, socket_spec, chrooted[name], queue_dir)
               for entry in _milter_entries(value)):
            lines.append(ok(f"postfix {name}", f"{value} reaches the milter"))
        else:
            what = ("mail from the network is not filtered" if name == "smtpd_milters" else
                    "mail submitted on this machine (sendmail, pickup) is not filtered")
            shown = value or "(empty)"
            fix = (f"postconf -e '{name} = {wanted}'" if name == "smtpd_milters"
                   else "postconf -e 'non_smtpd_milters = $smtpd_milters'")
            lines.append(fail(f"postfix {name}", f"{shown} does not name the milter at "
                              f"{socket_spec}: {what}", fix + "; postfix reload"))
    action = values.get("milter_default_action", "")
    if action == "tempfail":
        lines.append(ok("postfix milter_default_action", "tempfail: while the gateway is "
                        "down, senders retry"))
    else:
        lines.append(fail("postfix milter_default_action", f"{action}: while the gateway is "
                          "down, mail is " + ("accepted unfiltered" if action == "accept"
                                              else "refused or lost"),
                          "postconf -e 'milter_default_action = tempfail'; postfix reload"))
    protocol = values.get("milter_protocol", "")
    if protocol == "6":
        lines.append(ok("postfix milter_protocol", "6"))
    else:
        lines.append(fail("postfix milter_protocol", f"{protocol}: the gateway speaks "
                          "version 6", "postconf -e 'milter_protocol = 6'; postfix reload"))
    if config.quarantine.url:
        lines.append(_release_line(config.release.smtp, services))
    if local:
        lines.append(_socket_line(socket_spec, chrooted["smtpd_milters"], queue_dir))
    return lines


def _chrooted(services: list[list[str]], match: Callable[[list[str]], bool]) -> bool:
    """Whether the matching master.cf services run chrooted ("-" is "n"
    since Postfix 3.0)."""
    return any(len(s) >= 8 and match(s) and s[4] == "y" for s in services)


def _milter_entries(value: str) -> list[str]:
    """The milters of a smtpd_milters value: ``a, b`` or ``{ a, options }``."""
    entries = []
    for group in re.findall(r"\{[^}]*\}|[^\s,{}]+", value):
        if group.startswith("{"):
            inner = group.strip("{} ").replace(",", " ").split()
            if inner:
                entries.append(inner[0])
        else:
            entries.append(group)
    return entries


def _postfix_spec(socket_spec: str, chrooted: bool, queue_dir: Path) -> str:
    """How Postfix should name the milter's socket."""
    kind, _, rest = socket_spec.partition(":")
    if kind in ("unix", "local"):
        path = Path(rest)
        if chrooted and path.is_relative_to(queue_dir):
            return f"unix:/{path.relative_to(queue_dir)}"
        return f"unix:{path}"
    port, _, host = rest.partition("@")
    return f"inet:{host or '127.0.0.1'}:{port}"


def _same_milter(entry: str, socket_spec: str, chrooted: bool, queue_dir: Path) -> bool:
    kind, _, rest = socket_spec.partition(":")
    if kind in ("unix", "local"):
        if entry.startswith("inet:"):
            return False
        path = entry.removeprefix("unix:").removeprefix("local:")
        if not path.startswith("/"):
            return False
        seen = queue_dir / path.lstrip("/") if chrooted else Path(path)
        return os.path.normpath(seen) == os.path.normpath(rest)
    if not entry.startswith("inet:"):
        return False
    port, _, host = rest.partition("@")
    their_host, _, their_port = entry.removeprefix("inet:").rpartition(":")
    loopback = {"localhost", "127.0.0.1", "::1", "[::1]"}
    same_host = (not host or host in ("0.0.0.0", "::") or host == their_host
                 or (host in loopback and their_host in loopback))
    return their_port == port and same_host


def _release_line(smtp: str, services: list[list[str]]) -> Line:
    check = "postfix release listener"
    host, _, port = smtp.rpartition(":")
    for service in services:
        if len(service) < 8 or service[1] != "inet":
            continue
        name = service[0]
        their_host, _, their_port = name.rpartition(":")
        if their_port != port or their_host not in (host, "", "localhost", "127.0.0.1"):
            continue
        options = " ".join(service[8:])
        skips_milters = ("no_milters" in options
                         or re.search(r"-o smtpd_milters=(\s|$)", options + " ") is not None)
        if not skips_milters:
            return fail(check, f"master.cf service {name} does not skip the milters: "
                        "released mail would be filtered, and held, again",
                        "add '-o smtpd_milters=' and '-o receive_override_options=no_milters' "
                        "to it (deploy/postfix/master.cf); postfix reload")
        return ok(check, f"master.cf service {name} re-injects released mail, milters off")
    return fail(check, f"no master.cf service listens on {smtp} ([release] smtp): a release "
                "cannot be delivered", "add the lines of deploy/postfix/master.cf to "
                "/etc/postfix/master.cf; postfix reload")


def _socket_line(socket_spec: str, chrooted: bool, queue_dir: Path) -> Line:
    check = "postfix reaches socket"
    path = Path(socket_spec.partition(":")[2])
    if chrooted and not path.is_relative_to(queue_dir):
        return fail(check, f"{path} is outside Postfix's chroot ({queue_dir}): a chrooted "
                    "smtpd cannot reach it", f"set [milter] socket under {queue_dir}, "
                    f"e.g. unix:{queue_dir}/gateway/milter.sock")
    if not path.exists():
        return fail(check, f"{path} does not exist: is the gateway running?",
                    "systemctl start gateway (journalctl -u gateway says why it stopped)")
    if not stat.S_ISSOCK(path.stat().st_mode):
        return fail(check, f"{path} is not a socket", "remove it and restart the gateway")
    try:
        postfix = pwd.getpwnam("postfix")
    except KeyError:
        return fail(check, "there is no postfix user", "apt install postfix")
    groups = set(os.getgrouplist("postfix", postfix.pw_gid))
    for directory in [*reversed(path.parents)]:
        if not _may(directory, postfix.pw_uid, groups, 0o1):
            return fail(check, f"the postfix user cannot enter {directory} "
                        f"(mode {stat.S_IMODE(directory.stat().st_mode):04o})",
                        f"chmod o+x {directory}, or give the postfix group access")
    if not _may(path, postfix.pw_uid, groups, 0o2):
        info = path.stat()
        return fail(check, f"the postfix user may not connect to {path} (mode "
                    f"{stat.S_IMODE(info.st_mode):04o}, group {_group(info.st_gid)})",
                    "set [milter] socket_group = \"postfix\" and socket_mode = \"660\"")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(5)
        try:
            probe.connect(str(path))
        except OSError as exc:
            return fail(check, f"{path}: nobody answers ({exc.strerror or exc})",
                        "restart the gateway")
    inside = f" (in the chroot: /{path.relative_to(queue_dir)})" if chrooted else ""
    return ok(check, f"{path}{inside}: the postfix user may connect, the milter answers")


def _may(path: Path, uid: int, groups: set[int], bit: int) -> bool:
    """Whether ``uid`` (in ``groups``) has permission ``bit`` (1 = x, 2 = w,
    4 = r) on ``path``, by its mode bits."""
    info = path.stat()
    if uid == 0:
        return True
    if info.st_uid == uid:
        return bool(info.st_mode & (bit << 6))
    if info.st_gid in groups:
        return bool(info.st_mode & (bit << 3))
    return bool(info.st_mode & bit)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# -- file permissions ----------------------------------------------------------------------


def permission_lines(config: Config, user: str, config_path: str | None) -> list[Line]:
    lines = []
    owner: pwd.struct_passwd | None
    try:
        owner = found = pwd.getpwnam(user)
    except KeyError:
        lines.append(fail("user", f"there is no user {user} for the service to run as",
                          "gateway init --user " + user + " (or useradd --system --home "
                          "/var/lib/gateway --shell /usr/sbin/nologin " + user + ")"))
        owner = None
    else:
        lines.append(ok("user", f"{user} (uid {found.pw_uid}) runs the gateway"))
    url = config.quarantine.url
    if url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).exists():
        lines.append(_store_modes(Path(url.removeprefix("sqlite:///")), owner))
    file = Path(config_path) if config_path else DEFAULT_CONFIG
    if file.exists():
        mode = stat.S_IMODE(file.stat().st_mode)
        secret = "@" in url and ":" in url.split("://", 1)[-1].split("@", 1)[0]
        if mode & 0o022:
            lines.append(fail("config file", f"{file} (mode {mode:04o}) can be changed by "
                              "others, who could then steer the gateway", f"chmod go-w {file}"))
        elif secret and mode & 0o004:
            lines.append(fail("config file", f"{file} holds the database password and "
                              f"everyone may read it (mode {mode:04o})",
                              f"chown {user} {file} && chmod 600 {file}"))
        else:
            lines.append(ok("config file", f"{file}: mode {mode:04o}, owner "
                            f"{_user(file.stat().st_uid)}"))
    spool = config.pipeline.spool_dir
    if spool and Path(spool).exists():
        mode = stat.S_IMODE(Path(spool).stat().st_mode)
        if mode & 0o077 and not mode & stat.S_ISVTX:
            lines.append(fail("spool dir", f"{spool} (mode {mode:04o}) is open to others, and "
                              "messages being checked are written there", f"chmod 700 {spool}"))
        else:
            lines.append(ok("spool dir", f"{spool}: mode {mode:04o}"))
    return lines


def owner_lines(config: Config, fix: bool = False) -> list[Line]:
    """Files in the state directories that their owner (the gateway's user)
    does not own: what a command run as root left, which the gateway then
    cannot change (gateway.ownership)."""
    from gateway.ownership import state_directories, strangers

    lines = []
    for directory in state_directories(config):
        owner = directory.stat()
        found = strangers(directory)
        if found and fix and os.geteuid() == 0:
            for item in found:
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(item, owner.st_uid, owner.st_gid)
            lines.append(ok("owners", f"{directory}: gave {len(found)} files to "
                            f"{_user(owner.st_uid)}"))
        elif found:
            shown = ", ".join(f"{p} ({_user(p.lstat().st_uid)})" for p in found[:3])
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            lines.append(fail("owners", f"{directory} belongs to {_user(owner.st_uid)}, but "
                              f"not {shown}{more}: the gateway cannot change them",
                              "sudo gateway doctor --fix-owners"))
        else:
            lines.append(ok("owners", f"{directory}: all {_user(owner.st_uid)}'s"))
    return lines


def _store_modes(database: Path, owner: pwd.struct_passwd | None) -> Line:
    from gateway.quarantine.files import PRIVATE_DIRECTORY, PRIVATE_FILE, SQLITE_SIDE_FILES

    check = "store modes"
    directory = database.parent
    problems = []
    info = directory.stat()
    if stat.S_IMODE(info.st_mode) & 0o077:
        problems.append(f"{directory} is {stat.S_IMODE(info.st_mode):04o}")
    files = [database, *(Path(f"{database}{side}") for side in SQLITE_SIDE_FILES)]
    for path in files:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            problems.append(f"{path} is {stat.S_IMODE(path.stat().st_mode):04o}")
    if problems:
        return fail(check, "held mail is open to others: " + ", ".join(problems),
                    f"chmod {PRIVATE_DIRECTORY:o} {directory} && chmod {PRIVATE_FILE:o} "
                    f"{database}* (the gateway narrows them itself when it starts)")
    if owner is not None:
        strangers = [p for p in (directory, *files)
                     if p.exists() and p.stat().st_uid not in (owner.pw_uid,)]
        if strangers:
            names = ", ".join(f"{p} ({_user(p.stat().st_uid)})" for p in strangers)
            return fail(check, f"not owned by {owner.pw_name}, who runs the gateway: {names}",
                        f"chown -R {owner.pw_name}: {directory}")
    return ok(check, f"{directory} 0700, {database.name} 0600, owner "
                     f"{_user(info.st_uid)}: for the gateway alone")
