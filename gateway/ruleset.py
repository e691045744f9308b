"""Rules files: read, validated and merged once into one immutable :class:`Ruleset`.

Rules files (``rules/default.toml`` and the admin's own, later files
overriding earlier ones, key by key) hold:

    [thresholds]  add_header = 4.0, quarantine = 6.0, reject = 15.0
                  (greylist = 5.0: a band below quarantine greylisted after DATA
                  when [greylist] is enabled, gateway.greylist)
    [add_header]  subject_tag = "[SPAM]"  (put before the Subject of mail delivered
                                           as add_header; "" = leave it)
    [scores]      SYMBOL = 2.5          (replaces the check's own score)
    [force]       SYMBOL = "reject"     (accept | add_header | quarantine | reject |
                                         tempfail; "score" undoes a force set earlier
                                         or by a check's own settings)
    [release]     SYMBOL = "admin"      (who may release held mail carrying it:
                                         "admin" or "analyst"; see gateway.quarantine.release)
    [rule.NAME]   a declarative rule: header, body, rawbody, uri and mime rules
                  run in the ``rules`` check (gateway.checks.rules); meta rules
                  (``expression = "A && !B"``, gateway.meta) are evaluated by the
                  policy, over every symbol of the message
    [[dnsbl]]     a DNS blocklist (gateway.checks.dnsbl)
    [attachments] the attachment rules' settings (gateway.checks.attachments)
    [domain."example.org"]  the policy of mail to one recipient domain (or to
                  one address, ``[domain."bob@example.org"]``): thresholds,
                  scores, force, lists, dmarc, add_header. The same as a file
                  ``domains/example.org.toml`` beside a rules file.

Like Postfix's main.cf and rspamd's rules, the files are read once per
configuration: ``gateway run`` loads them into a Ruleset when it starts and
on each reload (gateway.service), and hands that one Ruleset to the checks,
the policy and every worker process. A file edited on disk changes nothing
until the next reload, and a file broken on disk cannot stop a worker that
replaces another.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from gateway.config import ACTIONS, Action
from gateway.mail import DomainError, ascii_domain
from gateway.meta import Meta, parse_meta
from gateway.schema import ConfigError, suggest_key
from gateway.symbols import SYMBOL_NAME

# In [force]: the symbol is scored like any other, whatever forced it before.
NOT_FORCED = "score"
FORCE_VALUES: tuple[str, ...] = (*ACTIONS, NOT_FORCED)
SECTIONS = ("thresholds", "add_header", "scores", "force", "release", "rule", "dnsbl",
            "attachments", "domain")
RULE_TYPES = ("header", "body", "rawbody", "uri", "mime", "meta")
# What a domain's (or a recipient's) policy may change.
OVERLAY_SECTIONS = ("thresholds", "add_header", "scores", "force", "lists", "dmarc")
LIST_KEYS = ("allow_senders", "block_senders", "allow_ips", "block_ips")
# [dmarc] in a domain's policy: what DMARC failures under the sender's
# p=reject / p=quarantine get for mail to that domain.
DMARC_SYMBOLS = {"reject": ("DMARC_POLICY_REJECT", "DMARC_REJECT_DOWNGRADED"),
                 "quarantine": ("DMARC_POLICY_QUARANTINE",)}
DOMAINS_DIR = "domains"
SUBJECT_TAG_LENGTH = 64


class _CrossesProcesses:
    """A frozen dataclass of read-only mappings that pickles: the Ruleset is
    sent whole to each worker process, and MappingProxyType does not pickle
    by itself."""

    def __reduce__(self) -> tuple[Any, ...]:
        state = {f.name: _thawed(getattr(self, f.name))
                 for f in fields(cast(Any, self))}
        return (_rebuilt, (type(self), state))


class _Thawed(dict[Any, Any]):
    """A read-only mapping on its way to another process."""


def _thawed(value: Any) -> Any:
    if isinstance(value, MappingProxyType):
        return _Thawed({key: _thawed(item) for key, item in value.items()})
    if isinstance(value, tuple):
        return tuple(_thawed(item) for item in value)
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, _Thawed):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, tuple):
        return tuple(_frozen(item) for item in value)
    return value


def _rebuilt(cls: type[Any], state: dict[str, Any]) -> Any:
    return cls(**{name: _frozen(value) for name, value in state.items()})


@dataclass(frozen=True)
class Overlay(_CrossesProcesses):
    """The policy of mail to one recipient domain, or one recipient address:
    what it changes of the global rules."""

    key: str  # "example.org" or "bob@example.org" (A-labels, lower case)
    # add_header may be None: no add_header tier for this key.
    thresholds: Mapping[str, float | None] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)
    force: Mapping[str, str] = field(default_factory=dict)  # an action, or "score"
    subject_tag: str | None = None
    lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ruleset(_CrossesProcesses):
    quarantine: float = 6.0
    reject: float = 15.0
    scores: Mapping[str, float] = field(default_factory=dict)
    force: Mapping[str, Action] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    release: Mapping[str, str] = field(default_factory=dict)
    # None: no add_header tier (mail below quarantine is accepted).
    add_header: float | None = None
    greylist: float | None = None  # None: no greylist band
    subject_tag: str = ""
    # Symbols a rules file says are not forced (undoing a check's own force).
    unforced: frozenset[str] = frozenset()
    domains: Mapping[str, Overlay] = field(default_factory=dict)
    metas: tuple[Meta, ...] = ()
    # [rule.NAME] tables of the other kinds, merged (the rules check reads them),
    # the [[dnsbl]] lists by name, and the [attachments] settings.
    rule_tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dnsbl: tuple[Mapping[str, Any], ...] = ()
    attachments: Mapping[str, Any] = field(default_factory=dict)
    # Symbols the rules files themselves define (rules, metas, blocklists).
    defined: Mapping[str, str] = field(default_factory=dict)

    @property
    def spam_threshold(self) -> float:
        """The score from which mail counts as spam: add_header, else quarantine."""
        return self.quarantine if self.add_header is None else self.add_header

    def with_default_forces(self, defaults: Mapping[str, str]) -> Ruleset:
        """These rules, with forced actions that apply unless a rules file
        forces the same symbol itself (or says it is not forced)."""
        # The checks' forced_actions name actions their config sections validated.
        merged = {name: cast(Action, action)
                  for name, action in {**defaults, **self.force}.items()
                  if name in self.force or name not in self.unforced}
        return replace(self, force=MappingProxyType(merged))


class _Builder:
    """Everything of every rules file, merged in order."""

    def __init__(self) -> None:
        self.thresholds: dict[str, float | None] = {"add_header": None, "quarantine": 6.0,
                                                    "reject": 15.0}
        self.subject_tag = ""
        self.scores: dict[str, float] = {}
        self.force: dict[str, str] = {}
        self.unforced: set[str] = set()
        self.release: dict[str, str] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.rule_sources: dict[str, str] = {}
        self.dnsbl: dict[str, dict[str, Any]] = {}
        self.attachments: dict[str, Any] = {}
        self.domains: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.sources: list[str] = []
        # When each threshold was last set (its file's place in the order).
        self.set_at: dict[str, int] = {}
        # Each symbol a file's [scores] or [force] names: (file, section, symbol).
        self.named: list[tuple[str, str, str]] = []

    def set_force(self, name: str, value: str) -> None:
        if value == NOT_FORCED:
            self.force.pop(name, None)
            self.unforced.add(name)
        else:
            self.force[name] = value
            self.unforced.discard(name)


def load_rules(paths: Iterable[str | Path], known: Mapping[str, str] | None = None) -> Ruleset:
    """Merge rules files in order, then the domain files beside them; raise
    ConfigError listing every problem. ``known``: the symbols the checks
    can emit (gateway.symbolcheck); a symbol that a file's [scores] or
    [force] names and that neither a check emits nor a rules file defines
    is then a problem too: a misspelt ``BAYES_99X = 3`` would silently
    score nothing."""
    built = _Builder()
    files = [Path(p) for p in paths]
    for path in files:
        built.sources.append(str(path))
        data = _read(path, built.errors)
        if data is not None:
            _merge_file(data, str(path), built)
    for directory in dict.fromkeys(p.parent / DOMAINS_DIR for p in files):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            built.sources.append(str(path))
            data = _read(path, built.errors)
            if data is not None:
                _merge_overlay(path.stem, data, str(path), built)
    thresholds = built.thresholds
    last = built.sources[-1] if built.sources else "rules"
    _clamp_add_header(thresholds, built.set_at)
    _check_thresholds(f"{last}: thresholds", thresholds, built.errors)
    metas = _metas(built)
    domains = _overlays(built)
    defined = {meta.name: meta.description for meta in metas}
    for name, table in built.rules.items():
        defined[name] = str(table.get("description", ""))
    for name, table in built.dnsbl.items():
        defined[name] = str(table.get("description") or f"listed in {table.get('zone', '?')}")
        symbols = table.get("symbols")
        if isinstance(symbols, Mapping):
            for symbol in symbols.values():
                if isinstance(symbol, str):
                    defined.setdefault(symbol, f"listed in {table.get('zone', '?')}")
    if known is not None:
        built.errors += unknown_symbols(built.named, {**known, **defined})
    if built.errors:
        raise ConfigError(built.errors)
    return Ruleset(
        quarantine=float(thresholds["quarantine"] or 0.0),
        reject=float(thresholds["reject"] or 0.0),
        add_header=thresholds["add_header"],
        greylist=thresholds.get("greylist"),
        subject_tag=built.subject_tag,
        scores=MappingProxyType(built.scores),
        force=MappingProxyType(built.force),  # type: ignore[arg-type]
        unforced=frozenset(built.unforced),
        sources=tuple(built.sources),
        release=MappingProxyType(built.release),
        domains=MappingProxyType(domains),
        metas=metas,
        rule_tables=MappingProxyType({n: MappingProxyType(t) for n, t in built.rules.items()
                                      if t.get("type") != "meta"}),
        dnsbl=tuple(MappingProxyType(t) for t in built.dnsbl.values()
                    if t.get("enabled", True) is not False),
        attachments=MappingProxyType(built.attachments),
        defined=MappingProxyType(defined),
    )


def _read(path: Path, errors: list[str]) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        errors.append(f"{path}: rules file not found")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        errors.append(f"{path}: cannot read rules file: {exc}")
    return None


def _merge_file(data: dict[str, Any], source: str, built: _Builder) -> None:
    errors = built.errors
    for name in data:
        if name not in SECTIONS:
            errors.append(f"{source}: [{name}]: unknown section"
                          f"{suggest_key(name, dict.fromkeys(SECTIONS))}")
    for section in ("scores", "force"):
        table = data.get(section)
        if isinstance(table, Mapping):
            built.named += [(source, section, name) for name in table
                            if SYMBOL_NAME.match(name)]
    table = data.get("thresholds", {})
    _merge_thresholds(table, f"{source}: thresholds", built.thresholds, errors)
    if isinstance(table, Mapping):
        built.set_at.update(dict.fromkeys(table, len(built.sources)))
    tag = _subject_tag(data.get("add_header", {}), f"{source}: add_header", errors)
    if tag is not None:
        built.subject_tag = tag
    # A rule's own score and force come first: [scores] and [force] in the
    # same file (or a later one) override them.
    _merge_rule_tables(data.get("rule", {}), source, built)
    _merge_scores(data.get("scores", {}), f"{source}: scores", built.scores, errors)
    for name, value in _forces(data.get("force", {}), f"{source}: force", errors):
        built.set_force(name, value)
    _merge_release(data.get("release", {}), source, built.release, errors)
    _merge_dnsbl(data.get("dnsbl", []), source, built)
    attachments = data.get("attachments", {})
    if isinstance(attachments, Mapping):
        built.attachments.update(attachments)
    else:
        errors.append(f"{source}: attachments: expected a table")
    domains = data.get("domain", {})
    if not isinstance(domains, Mapping):
        errors.append(f"{source}: domain: expected tables such as [domain.\"example.org\"]")
        return
    for key, table in domains.items():
        if isinstance(table, Mapping):
            _merge_overlay(key, table, f"{source}: domain.{key}", built)
        else:
            errors.append(f"{source}: domain.{key}: expected a table")


def _merge_thresholds(table: Any, where: str, into: dict[str, float | None],
                      errors: list[str], known: Iterable[str] | None = None) -> None:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table")
        return
    keys = dict.fromkeys(known or ("add_header", "greylist", "quarantine", "reject"))
    for key, value in table.items():
        if key not in keys:
            errors.append(f"{where}.{key}: unknown key{suggest_key(key, keys)}")
        elif not _is_number(value):
            errors.append(f"{where}.{key}: expected a number, got {value!r}")
        else:
            into[key] = float(value)


def _clamp_add_header(thresholds: dict[str, float | None], set_at: Mapping[str, int]) -> None:
    """A quarantine threshold lowered below add_header by a file that did not
    set add_header itself (one written before the add_header tier) leaves no
    add_header tier: mail below the quarantine is accepted, as before. An
    add_header set at or after it must fit below it (checked next)."""
    quarantine = thresholds["quarantine"]
    for tier in ("add_header", "greylist"):  # the greylist band the same way
        below = thresholds.get(tier)
        if below is not None and quarantine is not None and below > quarantine and \
                set_at.get(tier, -1) < set_at.get("quarantine", -1):
            thresholds[tier] = quarantine


def _check_thresholds(where: str, thresholds: Mapping[str, float | None],
                      errors: list[str]) -> None:
    add_header, quarantine, reject = (thresholds.get("add_header"), thresholds["quarantine"],
                                      thresholds["reject"])
    assert quarantine is not None and reject is not None
    if reject < quarantine:
        errors.append(f"{where}: reject ({reject}) must not be below quarantine ({quarantine})")
    if add_header is not None and add_header > quarantine:
        errors.append(f"{where}: add_header ({add_header}) must not be above quarantine "
                      f"({quarantine}); make it equal to quarantine for no add_header tier")
    greylist = thresholds.get("greylist")
    if greylist is not None and greylist > quarantine:
        errors.append(f"{where}: greylist ({greylist}) must not be above quarantine "
                      f"({quarantine}); make it equal to quarantine for no greylist band")


def _subject_tag(table: Any, where: str, errors: list[str]) -> str | None:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table")
        return None
    tag = None
    for key, value in table.items():
        if key != "subject_tag":
            errors.append(f"{where}.{key}: unknown key (known keys: subject_tag)")
        elif not isinstance(value, str) or len(value) > SUBJECT_TAG_LENGTH or \
                any(not c.isprintable() for c in value):
            errors.append(f"{where}.subject_tag: expected printable text of at most "
                          f"{SUBJECT_TAG_LENGTH} characters on one line, got {value!r}")
        else:
            tag = value
    return tag


def _merge_scores(table: Any, where: str, into: dict[str, float], errors: list[str]) -> None:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table")
        return
    for name, value in table.items():
        if not SYMBOL_NAME.match(name):
            errors.append(f"{where}.{name}: symbol names are UPPER_SNAKE_CASE")
        elif not _is_number(value):
            errors.append(f"{where}.{name}: expected a number, got {value!r}")
        else:
            into[name] = float(value)


def _forces(table: Any, where: str, errors: list[str]) -> list[tuple[str, str]]:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table")
        return []
    found = []
    for name, value in table.items():
        if not SYMBOL_NAME.match(name):
            errors.append(f"{where}.{name}: symbol names are UPPER_SNAKE_CASE")
        elif value not in FORCE_VALUES:
            errors.append(f"{where}.{name}: expected one of {', '.join(FORCE_VALUES)}, "
                          f"got {value!r}")
        else:
            found.append((name, value))
    return found


def _merge_release(table: Any, source: str, release: dict[str, str], errors: list[str]) -> None:
    if not isinstance(table, Mapping):
        errors.append(f"{source}: release: expected a table")
        return
    for name, value in table.items():
        if not SYMBOL_NAME.match(name):
            errors.append(f"{source}: release.{name}: symbol names are UPPER_SNAKE_CASE")
        elif value not in ("admin", "analyst"):
            errors.append(f"{source}: release.{name}: expected \"admin\" or \"analyst\", "
                          f"got {value!r}")
        else:
            release[name] = value


def _merge_rule_tables(tables: Any, source: str, built: _Builder) -> None:
    """[rule.NAME] tables, merged key by key over the files; the keys every
    rule has are checked here, the others by the rules check."""
    errors = built.errors
    if not isinstance(tables, Mapping):
        errors.append(f"{source}: rule: expected tables such as [rule.MY_RULE]")
        return
    for name, table in tables.items():
        where = f"{source}: rule.{name}"
        if not SYMBOL_NAME.match(name):
            errors.append(f"{where}: rule names are symbol names, UPPER_SNAKE_CASE")
            continue
        if not isinstance(table, Mapping):
            errors.append(f"{where}: expected a table")
            continue
        merged = built.rules.setdefault(name, {})
        merged.update(table)
        built.rule_sources[name] = source
        kind = merged.get("type")
        if kind not in RULE_TYPES:
            errors.append(f"{where}.type: expected one of {', '.join(RULE_TYPES)}, "
                          f"got {kind!r}")
        if "score" in table:
            if _is_number(table["score"]):
                built.scores[name] = float(table["score"])
            else:
                errors.append(f"{where}.score: expected a number, got {table['score']!r}")
        elif "score" not in merged:
            errors.append(f"{where}.score: every rule needs a score")
        if not isinstance(merged.get("description", ""), str):
            errors.append(f"{where}.description: expected a string")
        if not isinstance(merged.get("enabled", True), bool):
            errors.append(f"{where}.enabled: expected true or false")
        if "force" in table:
            for symbol, value in _forces({name: table["force"]}, f"{where}.force", errors):
                built.set_force(symbol, value)


def _merge_dnsbl(tables: Any, source: str, built: _Builder) -> None:
    """[[dnsbl]] lists by name: a later file's list of the same name replaces
    the earlier one (``enabled = false`` switches it off)."""
    if not isinstance(tables, list):
        built.errors.append(f"{source}: dnsbl: expected [[dnsbl]] tables")
        return
    for index, table in enumerate(tables):
        name = table.get("name") if isinstance(table, Mapping) else None
        if not isinstance(name, str) or not SYMBOL_NAME.match(name):
            built.errors.append(f"{source}: dnsbl[{index}].name: expected the symbol of the "
                                f"list, UPPER_SNAKE_CASE (such as \"ZEN\"), got {name!r}")
            continue
        built.dnsbl[name] = {**table, "source": source}
        if "force" in table:
            for symbol, value in _forces({name: table["force"]}, f"{source}: dnsbl {name}.force",
                                         built.errors):
                built.set_force(symbol, value)


def _merge_overlay(key: str, table: Mapping[str, Any], source: str, built: _Builder) -> None:
    errors = built.errors
    try:
        normal = policy_key(key)
    except ValueError as exc:
        errors.append(f"{source}: {key!r} is not a recipient domain or address: {exc}")
        return
    overlay = built.domains.setdefault(normal, {
        "thresholds": {}, "scores": {}, "force": {}, "subject_tag": None, "lists": {},
        "sources": []})
    overlay["sources"].append(source)
    for name, value in table.items():
        where = f"{source}: {name}"
        if name not in OVERLAY_SECTIONS:
            errors.append(f"{where}: not for a domain's policy (it may set "
                          f"{', '.join(OVERLAY_SECTIONS)})")
        elif name == "thresholds":
            _merge_thresholds(value, where, overlay["thresholds"], errors)
        elif name == "add_header":
            tag = _subject_tag(value, where, errors)
            if tag is not None:
                overlay["subject_tag"] = tag
        elif name == "scores":
            _merge_scores(value, where, overlay["scores"], errors)
        elif name == "force":
            overlay["force"].update(_forces(value, where, errors))
        elif name == "lists":
            _merge_lists(value, where, overlay["lists"], errors)
        elif name == "dmarc":
            _merge_dmarc(value, where, overlay["force"], errors)


def _merge_lists(table: Any, where: str, into: dict[str, tuple[str, ...]],
                 errors: list[str]) -> None:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table")
        return
    for key, values in table.items():
        if key not in LIST_KEYS:
            errors.append(f"{where}.{key}: unknown key{suggest_key(key, dict.fromkeys(LIST_KEYS))}")
            continue
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            errors.append(f"{where}.{key}: expected a list of strings")
            continue
        bad = None
        for value in values:
            if key.endswith("_ips"):
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    bad = f"{value!r} is not an IP address or network"
            elif not value or " " in value or value.count("@") > 1:
                bad = f"{value!r} is not an address, @domain or domain"
        if bad:
            errors.append(f"{where}.{key}: {bad}")
        else:
            into[key] = tuple(values)


def _merge_dmarc(table: Any, where: str, force: dict[str, str], errors: list[str]) -> None:
    if not isinstance(table, Mapping):
        errors.append(f"{where}: expected a table")
        return
    allowed = ("reject", "quarantine", "add_header", NOT_FORCED)
    for key, value in table.items():
        if key not in DMARC_SYMBOLS:
            errors.append(f"{where}.{key}: unknown key (known keys: quarantine, reject)")
        elif value not in allowed:
            errors.append(f"{where}.{key}: expected one of {', '.join(allowed)}, got {value!r}")
        else:
            for symbol in DMARC_SYMBOLS[key]:
                force[symbol] = value


def _metas(built: _Builder) -> tuple[Meta, ...]:
    """The meta rules, each after the metas it reads (a loop is an error)."""
    found: dict[str, Meta] = {}
    for name, table in built.rules.items():
        if table.get("type") != "meta" or table.get("enabled", True) is False:
            continue
        where = f"{built.rule_sources[name]}: rule.{name}"
        unknown = set(table) - {"type", "expression", "score", "description", "force",
                                "enabled"}
        for key in sorted(unknown):
            errors_key = suggest_key(key, dict.fromkeys(("expression", "score", "description",
                                                         "force", "enabled")))
            built.errors.append(f"{where}.{key}: not a key of a meta rule{errors_key}")
        expression = table.get("expression")
        if not isinstance(expression, str):
            built.errors.append(f"{where}.expression: a meta rule needs an expression such "
                                f"as \"A && !B\"")
            continue
        try:
            tree, names = parse_meta(expression)
        except ValueError as exc:
            built.errors.append(f"{where}.expression: {exc}")
            continue
        if name in names:
            built.errors.append(f"{where}.expression: refers to itself")
            continue
        score = table.get("score", 0.0)
        found[name] = Meta(name, expression, tree, names,
                           str(table.get("description", "")) or f"meta rule {name}",
                           float(score) if _is_number(score) else 0.0)
    ordered: list[Meta] = []
    state: dict[str, str] = {}

    def visit(meta: Meta, trail: list[str]) -> None:
        if state.get(meta.name) == "done":
            return
        if state.get(meta.name) == "open":
            loop = " -> ".join([*trail[trail.index(meta.name):], meta.name])
            built.errors.append(f"{built.rule_sources[meta.name]}: rule.{meta.name}: meta "
                                f"rules refer to each other in a loop: {loop}")
            return
        state[meta.name] = "open"
        for other in sorted(meta.names):
            if other in found:
                visit(found[other], [*trail, meta.name])
        state[meta.name] = "done"
        ordered.append(meta)

    for meta in found.values():
        visit(meta, [])
    return tuple(ordered)


def _overlays(built: _Builder) -> dict[str, Overlay]:
    overlays: dict[str, Overlay] = {}
    for key, parts in built.domains.items():
        overlays[key] = Overlay(
            key=key, thresholds=MappingProxyType(parts["thresholds"]),
            scores=MappingProxyType(parts["scores"]), force=MappingProxyType(parts["force"]),
            subject_tag=parts["subject_tag"], lists=MappingProxyType(parts["lists"]),
            sources=tuple(dict.fromkeys(parts["sources"])))
    for key, overlay in list(overlays.items()):
        chain = [overlays[d] for d in overlay_chain(key, overlays)]
        thresholds = dict(built.thresholds)
        set_at = {"add_header": 0, "greylist": 0, "quarantine": 0}
        for place, part in enumerate(chain, 1):
            thresholds.update(part.thresholds)
            set_at.update(dict.fromkeys(part.thresholds, place))
        if thresholds == built.thresholds:
            continue
        _clamp_add_header(thresholds, set_at)
        _check_thresholds(f"{overlay.sources[-1]}: thresholds for {key}", thresholds,
                          built.errors)
        # The add_header that holds for this recipient key, clamped or not.
        overlays[key] = replace(overlay, thresholds=MappingProxyType(
            {**overlay.thresholds, "add_header": thresholds["add_header"],
             **({"greylist": thresholds["greylist"]} if thresholds.get("greylist") is not None
                else {})}))
    return overlays


def unknown_symbols(named: Iterable[tuple[str, str, str]], known: Mapping[str, str]) -> list[str]:
    """A line for each (file, section, symbol) whose symbol is not known,
    with the closest known name."""
    return [f"{source}: {section}.{name}: unknown symbol{_did_you_mean(name, known)}"
            for source, section, name in named if name not in known]


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]}?)"
    return " (gateway symbols --all lists them)"


def policy_key(text: str) -> str:
    """A recipient domain or address as policies are keyed: lower case, the
    domain in A-labels. Raises ValueError."""
    text = text.strip().strip("<>").rstrip(".").lower()
    local, at, domain = text.rpartition("@")
    if at and not local:
        raise ValueError("no local part before '@' (a domain is written without '@')")
    try:
        domain = ascii_domain(domain)
    except DomainError as exc:
        raise ValueError(str(exc)) from None
    return f"{local}@{domain}" if at else domain


def overlay_chain(key: str, overlays: Mapping[str, Any]) -> tuple[str, ...]:
    """The policies that apply to a recipient key: its domain's, then its own."""
    domain = key.rpartition("@")[2]
    chain = [domain] if domain in overlays else []
    if "@" in key and key in overlays:
        chain.append(key)
    return tuple(chain)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
