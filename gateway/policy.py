"""Policy: turn the symbols of a message into one action, and say why.

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
                  (``expression = "A && !B"``) are evaluated here, over every
                  symbol of the message
    [[dnsbl]]     a DNS blocklist (gateway.checks.dnsbl)
    [attachments] the attachment rules' settings (gateway.checks.attachments)
    [domain."example.org"]  the policy of mail to one recipient domain (or to
                  one address, ``[domain."bob@example.org"]``): thresholds,
                  scores, force, lists, dmarc, add_header. The same as a file
                  ``domains/example.org.toml`` beside a rules file.

The actions, mildest first: **accept** (deliver) < **add_header** (deliver
marked as spam: ``X-Spam-Flag: YES``, for the recipient's Junk folder) <
**quarantine** < **tempfail** < **reject**. A forced symbol decides
regardless of the score; when several are forced, the most severe wins. So
an allow-listed sender (a large negative score) still cannot slip a virus
past a forced reject.

A message for several recipients whose policies differ (a domain of their
own, a recipient's own allow list entry) is judged under each, and gets the
strictest of those actions: after DATA a milter answers for the whole
message, so it cannot refuse one recipient and deliver to another.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from gateway.config import ACTIONS, Action
from gateway.facts import ListsFacts
from gateway.mail import DomainError, ascii_domain
from gateway.pipeline import PipelineResult
from gateway.replies import SmtpReply, for_verdict
from gateway.schema import ConfigError, suggest_key
from gateway.symbols import SYMBOL_NAME, Symbol

log = logging.getLogger("gateway.policy")

SEVERITY: dict[str, int] = {"accept": 0, "add_header": 1, "quarantine": 2, "tempfail": 3,
                            "reject": 4}
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
META_LENGTH = 2000
META_DEPTH = 32


@dataclass(frozen=True)
class Verdict:
    """The decision on one message, with everything needed to explain it."""

    action: Action
    score: float
    required: float  # the score from which mail counts as spam (X-Spam-Status: Yes)
    symbols: tuple[Symbol, ...]
    failed_checks: tuple[str, ...]
    reason: str
    reply: SmtpReply | None = None
    forced_by: str | None = None
    check_millis: Mapping[str, float] = field(default_factory=dict)
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    authentication_results: str | None = None
    # add_header: the tag put before the Subject ("" = none), and the whole
    # tagged Subject as the milter sets it (filled in by the decider, which
    # has the message).
    subject_tag: str = ""
    tagged_subject: str | None = None
    # The score is in the greylist band (from [thresholds] greylist, below
    # quarantine): the milter asks the sender to retry, with [greylist] on.
    greylist: bool = False

    @property
    def is_spam(self) -> bool:
        """X-Spam-Flag: YES. By the score, as SpamAssassin's ``required``, or
        because a symbol forced the add_header action."""
        return self.score >= self.required or self.action == "add_header"

    @property
    def spam_probability(self) -> float | None:
        """The classifier's calibrated probability, when it ran."""
        value = self.facts.get("bayes", {}).get("spam_probability")
        return None if value is None else round(float(value), 4)

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "score": round(self.score, 2),
            "required": self.required,
            "reason": self.reason,
            "reply": str(self.reply) if self.reply else None,
            "symbols": [s.as_dict() for s in self.symbols],
            "failed_checks": list(self.failed_checks),
        }


# -- meta rules ------------------------------------------------------------------------------

# A node of a meta rule's parsed expression: (kind, operands...), e.g.
# ("and", (("name", "A"), ("not", ("name", "B")))).
MetaNode = tuple[Any, ...]

_META_TOKEN = re.compile(r"\s*(?:(&&|\|\||>=|<=|==|!=|[!()<>+])|([A-Za-z_][A-Za-z0-9_]*)|"
                         r"(\d+(?:\.\d+)?))")


@dataclass(frozen=True)
class Meta:
    """``A && !B``, ``(A + B + C) >= 2``: a symbol from the presence of others
    (a name counts 1 when the message has that symbol, else 0)."""

    name: str
    expression: str
    tree: MetaNode
    names: frozenset[str]
    description: str
    score: float

    def holds(self, present: set[str]) -> bool:
        return bool(_evaluate(self.tree, present))


def parse_meta(expression: str) -> tuple[MetaNode, frozenset[str]]:
    """The expression's tree and the names it reads; raises ValueError."""
    if len(expression) > META_LENGTH:
        raise ValueError(f"longer than {META_LENGTH} characters")
    tokens: list[tuple[str, str]] = []
    position = 0
    text = expression.rstrip()
    while position < len(text):
        match = _META_TOKEN.match(text, position)
        if match is None or match.end() == position:
            rest = text[position:].lstrip()
            raise ValueError(f"cannot read {rest[:20]!r}")
        operator, name, number = match.groups()
        if name is not None and not SYMBOL_NAME.match(name):
            raise ValueError(f"{name!r}: symbol names are UPPER_SNAKE_CASE")
        tokens.append(("op", operator) if operator else ("name", name) if name
                      else ("num", number))
        position = match.end()
    parser = _MetaParser(tokens)
    tree = parser.expression(0)
    if parser.index != len(tokens):
        raise ValueError(f"unexpected {tokens[parser.index][1]!r}")
    return tree, frozenset(parser.names)


class _MetaParser:
    """expr: or; or: and ('||' and)*; and: not ('&&' not)*; not: '!' not | cmp;
    cmp: sum (op number)?; sum: atom ('+' atom)*; atom: NAME | number | '(' expr ')'."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.index = 0
        self.names: set[str] = set()

    def peek(self) -> str | None:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.index >= len(self.tokens):
            raise ValueError("the expression ends too soon")
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expression(self, depth: int) -> MetaNode:
        if depth > META_DEPTH:
            raise ValueError(f"nested more than {META_DEPTH} levels")
        items = [self.conjunction(depth)]
        while self.peek() == "||":
            self.take()
            items.append(self.conjunction(depth))
        return items[0] if len(items) == 1 else ("or", tuple(items))

    def conjunction(self, depth: int) -> MetaNode:
        items = [self.negation(depth)]
        while self.peek() == "&&":
            self.take()
            items.append(self.negation(depth))
        return items[0] if len(items) == 1 else ("and", tuple(items))

    def negation(self, depth: int) -> MetaNode:
        if self.peek() == "!":
            self.take()
            return ("not", self.negation(depth + 1))
        return self.comparison(depth)

    def comparison(self, depth: int) -> MetaNode:
        left = self.total(depth)
        if self.peek() in (">", ">=", "<", "<=", "==", "!="):
            operator = self.take()[1]
            kind, value = self.take()
            if kind != "num":
                raise ValueError(f"{operator} needs a number after it, not {value!r}")
            return ("cmp", operator, left, float(value))
        return left

    def total(self, depth: int) -> MetaNode:
        items = [self.atom(depth)]
        while self.peek() == "+":
            self.take()
            items.append(self.atom(depth))
        return items[0] if len(items) == 1 else ("sum", tuple(items))

    def atom(self, depth: int) -> MetaNode:
        kind, value = self.take()
        if kind == "name":
            self.names.add(value)
            return ("name", value)
        if kind == "num":
            return ("num", float(value))
        if value == "(":
            inner = self.expression(depth + 1)
            if self.peek() != ")":
                raise ValueError("a '(' is not closed")
            self.take()
            return inner
        raise ValueError(f"unexpected {value!r}")


_COMPARE = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__,
            "==": float.__eq__, "!=": float.__ne__}


def _evaluate(node: MetaNode, present: set[str]) -> float:
    kind = node[0]
    if kind == "name":
        return 1.0 if node[1] in present else 0.0
    if kind == "num":
        return float(node[1])
    if kind == "not":
        return 0.0 if _evaluate(node[1], present) else 1.0
    if kind == "and":
        return 1.0 if all(_evaluate(n, present) for n in node[1]) else 0.0
    if kind == "or":
        return 1.0 if any(_evaluate(n, present) for n in node[1]) else 0.0
    if kind == "sum":
        return sum(_evaluate(n, present) for n in node[1])
    _, operator, left, value = node
    return 1.0 if _COMPARE[operator](float(_evaluate(left, present)), value) else 0.0


# -- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlay:
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
class Rules:
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

    def with_default_forces(self, defaults: Mapping[str, str]) -> Rules:
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

    def set_force(self, name: str, value: str) -> None:
        if value == NOT_FORCED:
            self.force.pop(name, None)
            self.unforced.add(name)
        else:
            self.force[name] = value
            self.unforced.discard(name)


def load_rules(paths: Iterable[str | Path]) -> Rules:
    """Merge rules files in order, then the domain files beside them; raise
    ConfigError listing every problem."""
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
    if built.errors:
        raise ConfigError(built.errors)
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
    return Rules(
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
    import ipaddress

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
        chain = [overlays[d] for d in _overlay_chain(key, overlays)]
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


def _overlay_chain(key: str, overlays: Mapping[str, Any]) -> tuple[str, ...]:
    """The policies that apply to a recipient key: its domain's, then its own."""
    domain = key.rpartition("@")[2]
    chain = [domain] if domain in overlays else []
    if "@" in key and key in overlays:
        chain.append(key)
    return tuple(chain)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- deciding ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Effective:
    """The rules for one recipient's mail: the global ones and its overlays."""

    name: str  # the overlay that applies ("" = the global rules)
    add_header: float | None
    quarantine: float
    reject: float
    scores: Mapping[str, float]
    greylist: float | None
    force: Mapping[str, str]
    subject_tag: str

    @property
    def spam_threshold(self) -> float:
        return self.quarantine if self.add_header is None else self.add_header


class Policy:
    def __init__(self, rules: Rules):
        self.rules = rules
        self._effective: dict[tuple[str, ...], _Effective] = {}
        self._lock = threading.Lock()
        self._warned = False

    def decide(self, result: PipelineResult, reference: str | None = None,
               recipients: Sequence[str] | None = None) -> Verdict:
        """The verdict on one message. ``recipients``: the envelope's, for the
        domains' and recipients' own policies (default: as the lists check
        reported them)."""
        listed = ListsFacts.of(result.facts)
        if recipients is None:
            recipients = tuple(listed.recipients) if listed is not None else ()
            if listed is None and self.rules.domains and not self._warned:
                self._warned = True
                log.warning("domain policies are not applied: the recipients are not known "
                            "(the lists check reports them; enable it in [pipeline] checks)")
        scoped = listed.recipient_symbols if listed is not None else {}
        groups: dict[tuple[tuple[str, ...], tuple[Symbol, ...]], list[str]] = {}
        for recipient in recipients:
            extra = tuple(scoped.get(recipient, ()))
            groups.setdefault((self._chain(recipient), extra), []).append(recipient)
        if not groups:
            groups[((), ())] = []
        outcomes = []
        for (chain, extra), members in groups.items():
            effective = self._rules_for(chain)
            outcomes.append((self._judge(result, effective, extra, reference), effective,
                             members))
        verdict, effective, members = max(outcomes, key=lambda o: SEVERITY[o[0].action])
        if len(outcomes) == 1 and not effective.name:
            return verdict
        reason = verdict.reason
        if len(outcomes) > 1:
            parts = ", ".join(f"{', '.join(m) or '-'}: {v.action}" for v, _e, m in outcomes)
            reason += f"; the strictest of {len(outcomes)} recipients' policies ({parts})"
        elif effective.name:
            reason += f" (policy of {effective.name})"
        policy_facts = {"recipients": {m: {"policy": e.name or "global", "action": v.action,
                                           "score": v.score}
                                       for v, e, ms in outcomes for m in ms},
                        "applied": effective.name or "global"}
        return replace(verdict, reason=reason, facts={**verdict.facts, "policy": policy_facts})

    def _chain(self, recipient: str) -> tuple[str, ...]:
        if not self.rules.domains:
            return ()
        try:
            key = policy_key(recipient)
        except ValueError:
            return ()
        return _overlay_chain(key, self.rules.domains)

    def _rules_for(self, chain: tuple[str, ...]) -> _Effective:
        effective = self._effective.get(chain)
        if effective is not None:
            return effective
        rules = self.rules
        thresholds: dict[str, float | None] = {"add_header": rules.add_header,
                                               "greylist": rules.greylist,
                                               "quarantine": rules.quarantine,
                                               "reject": rules.reject}
        scores, tag = dict(rules.scores), rules.subject_tag
        force: dict[str, str] = dict(rules.force)
        for key in chain:
            overlay = rules.domains[key]
            thresholds.update(overlay.thresholds)
            scores.update(overlay.scores)
            force.update(overlay.force)
            if overlay.subject_tag is not None:
                tag = overlay.subject_tag
        force = {name: action for name, action in force.items() if action != NOT_FORCED}
        effective = _Effective(
            name=chain[-1] if chain else "", add_header=thresholds["add_header"],
            quarantine=float(thresholds["quarantine"] or 0.0),
            reject=float(thresholds["reject"] or 0.0),
            scores=scores, force=force, subject_tag=tag, greylist=thresholds["greylist"])
        with self._lock:
            self._effective[chain] = effective
        return effective

    def _judge(self, result: PipelineResult, rules: _Effective, extra: tuple[Symbol, ...],
               reference: str | None) -> Verdict:
        found = [*result.symbols, *extra]
        symbols = [s.rescored(rules.scores[s.name]) if s.name in rules.scores else s
                   for s in found]
        if self.rules.metas:
            present = {s.name for s in symbols}
            for meta in self.rules.metas:
                if meta.holds(present):
                    present.add(meta.name)
                    symbols.append(Symbol(meta.name, rules.scores.get(meta.name, meta.score),
                                          meta.description, meta.expression))
        score = round(sum(s.score for s in symbols), 3)
        forced = [(rules.force[s.name], s) for s in symbols if s.name in rules.force]
        forced_by: Symbol | None = None
        if forced:
            action, forced_by = max(forced, key=lambda pair: SEVERITY[pair[0]])
            reason = f"forced by {forced_by.name}"
        elif score >= rules.reject:
            action, reason = "reject", f"score {score:g} >= reject threshold {rules.reject:g}"
        elif score >= rules.quarantine:
            action = "quarantine"
            reason = f"score {score:g} >= quarantine threshold {rules.quarantine:g}"
        elif rules.add_header is not None and score >= rules.add_header:
            action = "add_header"
            reason = f"score {score:g} >= add_header threshold {rules.add_header:g}"
        else:
            action = "accept"
            lowest = ("quarantine", rules.quarantine) if rules.add_header is None else \
                ("add_header", rules.add_header)
            reason = f"score {score:g} < {lowest[0]} threshold {lowest[1]:g}"
        return Verdict(
            action=action,  # type: ignore[arg-type]
            score=score,
            required=rules.spam_threshold,
            symbols=tuple(symbols),
            failed_checks=tuple(result.failed_checks),
            reason=reason,
            reply=for_verdict(action, score, forced_by, reference),
            forced_by=forced_by.name if forced_by else None,
            check_millis=result.check_millis,
            facts=dict(result.facts),
            subject_tag=rules.subject_tag if action == "add_header" else "",
            greylist=not forced and rules.greylist is not None
            and rules.greylist <= score < rules.quarantine,
        )
