"""``gateway config check``: validate gateway.toml, the rules and the checks.

Every problem is reported at once, one line each: the config file, the
rules files, symbol names in the rules that no check emits (a misspelt
``BAYES_99X = 3`` would otherwise score nothing, silently), the checks, and
a quarantine URL the gateway could not use. A peer that does not answer
now (clamd, a PostgreSQL server) is a warning: the configuration is right
and the gateway copes while it is down. ``gateway doctor`` checks the peers
in earnest.

Exit status: 0 and "config ok" (warnings, if any, on stderr); 2 and one
line per problem on stderr.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import SECTIONS, Config, load_config
from gateway.config import _resolve_paths as resolve_paths
from gateway.paths import DEFAULT_CONFIG
from gateway.pipeline import Pipeline, check_classes
from gateway.ruleset import Ruleset, load_rules
from gateway.schema import ConfigError, load_section
from gateway.symbolcheck import known_symbols
from gateway.terminal import printable


@dataclass
class Findings:
    """What validating a configuration found."""

    config: Config | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rules: Ruleset | None = None
    checks: list[str] = field(default_factory=list)

    def error(self, *problems: str) -> None:
        for problem in problems:
            if problem not in self.errors:
                self.errors.append(problem)


def main(args: argparse.Namespace) -> int:
    findings = examine(getattr(args, "config", None))
    for problem in findings.errors:
        print(printable(f"gateway: {problem}"), file=sys.stderr)
    for problem in findings.warnings:
        print(printable(f"gateway: warning: {problem}"), file=sys.stderr)
    if findings.errors:
        return 2
    config, rules = findings.config, findings.rules
    assert config is not None and rules is not None
    count = len(findings.warnings)
    note = f" ({count} warning{'s' if count > 1 else ''})" if count else ""
    print(f"config ok: {config.source}{note}")
    print(f"  milter socket: {config.milter.socket}")
    print(f"  checks: {', '.join(findings.checks)}")
    print(f"  rules: {', '.join(rules.sources)}")
    marked = f"add_header {rules.add_header:g}, " if rules.add_header is not None else ""
    print(f"  thresholds: {marked}quarantine {rules.quarantine:g}, reject {rules.reject:g}")
    print(f"  quarantine: {_safe(config.quarantine.url) or 'Postfix hold queue'}")
    return 0


def examine(path: str | None, start_checks: bool = True) -> Findings:
    """Validate the config at ``path`` (default: the usual file or the
    embedded defaults) and everything it names. ``start_checks`` also builds
    every check (loads the model, asks clamd), as the milter would."""
    findings = Findings()
    config = _load(path, findings)
    findings.config = config
    if config is None:
        return findings
    problems: list[str] = []
    classes = check_classes(config, problems)
    findings.error(*problems)
    findings.checks = [c.name for c in classes]
    try:
        findings.rules = load_rules(config.policy.rules, known_symbols(classes))
    except ConfigError as exc:
        findings.error(*exc.problems)
    errors, warnings = quarantine_url_problems(config.quarantine.url)
    findings.error(*errors)
    findings.warnings += warnings
    if start_checks and not problems and findings.rules is not None:
        try:
            pipeline = Pipeline.from_config(config, findings.rules)
        except ConfigError as exc:
            findings.error(*exc.problems)
        else:
            try:
                findings.warnings += [p for c in pipeline.checks for p in c.startup_problems()]
            finally:
                pipeline.close()
    return findings


def _load(path: str | None, findings: Findings) -> Config | None:
    """The config; with problems, as much of it as is right (a key with a
    problem keeps its default), so that the rules and checks it names are
    validated too."""
    try:
        return load_config(path)
    except ConfigError as exc:
        findings.error(*exc.problems)
    file = Path(path) if path else DEFAULT_CONFIG
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    sections: dict[str, Any] = {name: load_section(SECTIONS[name], table, name, [])
                                for name, table in data.items() if name in SECTIONS}
    sections = {name: section for name, section in sections.items()
                if name in Config.__dataclass_fields__}
    resolve_paths(sections, file.parent)
    return Config(source=str(file), **sections)


# -- symbols -------------------------------------------------------------------------------


def quarantine_url_problems(url: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) about a quarantine URL, without creating anything."""
    if not url:
        return [], []
    where = f"quarantine.url {_safe(url)}"
    if url.startswith("sqlite:///"):
        return _sqlite_problems(url.removeprefix("sqlite:///"), where), []
    return _postgres_problems(url, where)


def _sqlite_problems(name: str, where: str) -> list[str]:
    if name in ("", ":memory:") or name.startswith("file::memory:"):
        return [f"{where}: a database in memory loses held mail at every restart; name a "
                "file, e.g. sqlite:////var/lib/gateway/quarantine.db"]
    if not name.startswith("/"):
        return [f"{where}: the path {name!r} is relative, so it depends on the directory "
                "the gateway starts in; an absolute path takes four slashes "
                "(sqlite:////var/lib/gateway/quarantine.db)"]
    path = Path(name)
    if path.is_dir():
        return [f"{where}: {path} is a directory, not a database file"]
    if path.exists():
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                connection.execute("PRAGMA schema_version").fetchone()
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            if "unable to open" in str(exc):
                return []  # not readable by this user; the gateway's user may
            return [f"{where}: {path}: {exc}"]
        return []
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return [f"{where}: {parent} is not a directory, so {path} cannot be created"]
    return []


def _postgres_problems(url: str, where: str) -> tuple[list[str], list[str]]:
    try:
        import psycopg
    except ImportError:
        return [f"{where}: PostgreSQL needs the [postgres] extra: "
                "pip install 'gateway[postgres]'"], []
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from gateway.db import engine_url

    try:
        parsed = make_url(engine_url(url))
    except ArgumentError as exc:
        return [f"{where}: {exc}"], []
    if not parsed.database:
        return [f"{where}: no database named (postgresql://user@host/database)"], []
    try:
        connection = psycopg.connect(
            parsed.set(drivername="postgresql").render_as_string(hide_password=False),
            connect_timeout=5)
        connection.close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        permanent = ("does not exist", "authentication failed", "no password supplied",
                     "role", "invalid")
        if any(word in reason for word in permanent):
            return [f"{where}: {reason}"], []
        return [], [f"{where}: not reachable now: {reason}"]
    return [], []


def _safe(url: str) -> str:
    from gateway.db import safe_url as without_password

    return without_password(url)
