"""Declarative rules from the rules files: a symbol, a score, a pattern.

Each ``[rule.NAME]`` table in a rules file is a rule whose symbol is NAME,
like SpamAssassin's ``header``/``body``/``uri`` rules or rspamd's regexp
module, written without Python::

    [rule.SUBJECT_FREE_MONEY]
    type = "header"            # header | body | rawbody | uri | mime | meta
    header = "Subject"         # the field, RFC 2047 decoded; "From:addr", "From:name",
                               # "ALL" (every field, one "Name: value" line each)
    pattern = '\\bfree\\s+money\\b'
    nocase = true
    score = 2.5
    description = "the Subject offers free money"

- ``header``: ``pattern`` on each value of the field (decoded, unfolded);
  ``exists = true`` fires when the field is there (``pattern`` optional);
- ``body``: ``pattern`` on the text a reader sees in each text part (HTML
  without its tags); ``rawbody``: on the decoded text as sent (HTML tags
  and all);
- ``uri``: ``url``, ``host``, ``domain`` (the registrable domain) and
  ``path`` patterns, each given one matching the same URL, for every URL in
  the text and HTML parts (links' targets included);
- ``mime``: ``content_type`` and ``filename`` patterns matching the same
  leaf part, and/or ``min_parts`` / ``max_parts`` on the number of leaf
  parts;
- ``meta``: ``expression = "A && !B"`` over every symbol of the message;
  the policy evaluates these (:mod:`gateway.policy`), as only it sees the
  symbols of every check.

Every rule may have ``force`` (an action, like ``[force]``) and
``enabled = false`` (to switch off a rule an earlier file defines).

Patterns are compiled once, when the check is built, by RE2 (google-re2):
it matches in time linear in the text whatever the pattern, so no rule can
be made into a ReDoS; it has no backreferences and no look-around, and a
pattern RE2 cannot compile (or whose automaton would need more than 8 MiB)
is a configuration error naming the rule. Patterns are searched (not
anchored) in the UTF-8 text; ``nocase = true`` ignores case. The text is
what :mod:`gateway.checks.view` takes within ``[limits]``.

The rules together get half the ``[pipeline] budget`` per message; rules
not run within it are named by ``RULES_INCOMPLETE``, which has a score, so
running out of time is never a clean pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.checks import Check, CheckContext
from gateway.checks.view import MessageView, Part, view_of
from gateway.config import Config
from gateway.facts import RulesFacts
from gateway.mail import Mailbox, decoded_header, parse_mailboxes
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.schema import ConfigError, suggest_key
from gateway.symbols import Report, Symbol
from gateway.urls import Link

log = logging.getLogger("gateway.checks.rules")

MAX_PATTERN = 4096
MAX_PATTERN_MEMORY = 8 << 20  # RE2's own default: bytes for one pattern's automata
EVIDENCE = 80
COMMON_KEYS = ("type", "score", "description", "force", "enabled")
KEYS: dict[str, tuple[str, ...]] = {
    "header": ("header", "pattern", "exists", "nocase"),
    "body": ("pattern", "nocase"),
    "rawbody": ("pattern", "nocase"),
    "uri": ("url", "host", "domain", "path", "nocase"),
    "mime": ("content_type", "filename", "min_parts", "max_parts", "nocase"),
}


class Pattern:
    """One compiled RE2 pattern, searched on UTF-8 bytes."""

    def __init__(self, text: str, nocase: bool):
        import re2

        options = re2.Options()
        options.case_sensitive = not nocase
        options.never_capture = True
        options.max_mem = MAX_PATTERN_MEMORY
        options.log_errors = False
        self.text = text
        self._regexp = re2.compile(text, options)

    def search(self, data: bytes) -> str | None:
        """The matched text (clipped, for evidence), or None."""
        match = self._regexp.search(data)
        if match is None:
            return None
        start, end = match.span()
        found = data[start:min(end, start + EVIDENCE * 4)].decode("utf-8", "replace")
        found = " ".join(found.split())
        return found[:EVIDENCE] + ("…" if len(found) > EVIDENCE else "")


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    score: float
    description: str
    test: Callable[[Message, MessageView], str | None]  # evidence when it fires


def compile_rules(tables: Mapping[str, Mapping[str, Any]],
                  scores: Mapping[str, float] | None = None) -> list[Rule]:
    """The rules of the [rule.NAME] tables (meta rules excepted); raises
    ConfigError naming every rule that is wrong."""
    try:
        import re2  # noqa: F401
    except ImportError:
        raise ConfigError(["rules: the rules check needs google-re2 (pip install google-re2), "
                           "whose matching time cannot blow up"]) from None
    errors: list[str] = []
    rules = []
    for name, table in tables.items():
        if table.get("enabled", True) is False or table.get("type") == "meta":
            continue
        problems: list[str] = []
        rule = _compile(name, table, (scores or {}).get(name), problems)
        errors += [f"rule.{name}{p}" for p in problems]
        if rule is not None and not problems:
            rules.append(rule)
    if errors:
        raise ConfigError(errors)
    return rules


def _compile(name: str, table: Mapping[str, Any], score: float | None,
             problems: list[str]) -> Rule | None:
    kind = table.get("type")
    if kind not in KEYS:
        problems.append(f".type: expected one of {', '.join([*KEYS, 'meta'])}, got {kind!r}")
        return None
    allowed = dict.fromkeys((*COMMON_KEYS, *KEYS[kind]))
    for key in table:
        if key not in allowed:
            problems.append(f".{key}: not a key of a {kind} rule{suggest_key(key, allowed)}")
    nocase = table.get("nocase", False)
    if not isinstance(nocase, bool):
        problems.append(".nocase: expected true or false")
        nocase = False

    def pattern(key: str, required: bool = False) -> Pattern | None:
        text = table.get(key)
        if text is None:
            if required:
                problems.append(f".{key}: a {kind} rule needs a {key}")
            return None
        if not isinstance(text, str) or not text:
            problems.append(f".{key}: expected a pattern (a non-empty string)")
            return None
        if len(text) > MAX_PATTERN:
            problems.append(f".{key}: longer than {MAX_PATTERN} characters")
            return None
        try:
            return Pattern(text, nocase or (kind == "uri" and key in ("host", "domain")))
        except Exception as exc:  # re2.error carries RE2's reason, as bytes
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            problems.append(f".{key}: RE2 cannot compile {text[:60]!r}: {reason} (RE2 has "
                            "no backreferences or look-around)")
            return None

    test: Callable[[Message, MessageView], str | None] | None = None
    if kind == "header":
        test = _header_rule(table, pattern, problems)
    elif kind in ("body", "rawbody"):
        found = pattern("pattern", required=True)
        if found is not None:
            test = _body_rule(found, raw=kind == "rawbody")
    elif kind == "uri":
        patterns = {key: p for key in ("url", "host", "domain", "path")
                    if (p := pattern(key)) is not None}
        if not patterns and not problems:
            problems.append(": a uri rule needs at least one of url, host, domain, path")
        test = _uri_rule(patterns)
    elif kind == "mime":
        test = _mime_rule(table, pattern, problems)
    if test is None:
        return None
    own = table.get("score", 0.0)
    return Rule(name, kind, score if score is not None else float(own),
                str(table.get("description", "")) or f"{kind} rule {name}", test)


# A rule's test: its evidence when it fires on the message, else None.
RuleTest = Callable[[Message, MessageView], str | None]
# A rule's pattern under a key of its table (None: absent or invalid).
PatternOf = Callable[..., Pattern | None]


def _header_rule(table: Mapping[str, Any], pattern: PatternOf, problems: list[str]
                 ) -> RuleTest | None:
    field = table.get("header")
    if not isinstance(field, str) or not field.strip():
        problems.append(".header: a header rule needs the header field's name")
        return None
    name, _, part = field.strip().partition(":")
    if part not in ("", "addr", "name") or not name or any(c.isspace() for c in name):
        problems.append(f".header: {field!r}: expected a field name, Name:addr, Name:name "
                        "or ALL")
        return None
    exists = table.get("exists", False)
    if not isinstance(exists, bool):
        problems.append(".exists: expected true or false")
        return None
    found = pattern("pattern", required=not exists)
    if found is None and not exists:
        return None

    def test(message: Message, view: MessageView) -> str | None:
        if name.upper() == "ALL":
            values = [f"{f.name}: {_header_text(f.value, message)}"
                      for f in message.fields.fields]
            where = "headers"
        else:
            values = [_header_text(v, message) for v in message.headers(name)]
            if part:
                if name.lower() == "from":  # the one reading of the author
                    mailboxes = [Mailbox(_header_text(m.display, message), m.address)
                                 for m in message.authors.mailboxes]
                else:
                    depth = message.limits.address_comment_depth
                    mailboxes = [m for v in values for m in parse_mailboxes(v, depth).mailboxes]
                values = [m.address if part == "addr" else m.display for m in mailboxes]
            where = field
        if not values:
            return None
        if found is None:
            return f"{where} present"
        for value in values:
            hit = found.search(value.encode("utf-8", "surrogatepass"))
            if hit is not None:
                return f"{where}: {hit}"
        return None

    return test


def _header_text(value: str, message: Message) -> str:
    text = decoded_header(value, message.limits.encoded_words)
    return text.replace("\r\n", "").replace("\n", "")


def _body_rule(found: Pattern, raw: bool) -> RuleTest:
    def test(message: Message, view: MessageView) -> str | None:
        for part in view.texts:
            hit = found.search(part.raw_utf8 if raw else part.text_utf8)
            if hit is not None:
                return hit
        return None

    return test


def _uri_rule(patterns: Mapping[str, Pattern]) -> RuleTest:
    def test(message: Message, view: MessageView) -> str | None:
        for link in view.links:
            if all(p.search(_link_part(link, key).encode("utf-8", "replace")) is not None
                   for key, p in patterns.items()):
                return link.url[:EVIDENCE]
        return None

    return test


def _link_part(link: Link, key: str) -> str:
    return {"url": link.url, "host": link.host, "domain": link.domain, "path": link.path}[key]


def _mime_rule(table: Mapping[str, Any], pattern: PatternOf, problems: list[str]
               ) -> RuleTest | None:
    content_type, filename = pattern("content_type"), pattern("filename")
    counts = {}
    for key in ("min_parts", "max_parts"):
        value = table.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f".{key}: expected a whole number, 0 or more")
            return None
        counts[key] = value
    if content_type is None and filename is None and not counts:
        if not problems:
            problems.append(": a mime rule needs content_type, filename, min_parts or max_parts")
        return None

    def matches(part: Part) -> str | None:
        shown = part.content_type + (f" {part.filename!r}" if part.filename else "")
        if content_type is not None and content_type.search(
                part.content_type.encode("utf-8", "surrogatepass")) is None:
            return None
        if filename is not None and filename.search(
                part.filename.encode("utf-8", "surrogatepass")) is None:
            return None
        return shown

    def test(message: Message, view: MessageView) -> str | None:
        count = len(view.parts)
        if "min_parts" in counts and count < counts["min_parts"]:
            return None
        if "max_parts" in counts and count > counts["max_parts"]:
            return None
        if content_type is None and filename is None:
            return f"{count} parts"
        return next((shown for part in view.parts if (shown := matches(part))), None)

    return test


class RulesCheck(Check):
    name = "rules"
    symbols = {
        "RULES_INCOMPLETE": "some rules did not run on this message within their time "
                            "(half the [pipeline] budget)",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.rules = compile_rules(ruleset.rule_tables, ruleset.scores)
        self.time_limit = config.pipeline.budget / 2

    def run(self, message: Message, context: CheckContext) -> Report:
        if not self.rules:
            return Report()
        view = view_of(message)
        started = time.monotonic()
        found: list[Symbol] = []
        for number, rule in enumerate(self.rules):
            if time.monotonic() - started > self.time_limit:
                left = self.rules[number:]
                found.append(self.symbol("RULES_INCOMPLETE", f"{len(left)} of {len(self.rules)} "
                                         f"rules not run in {self.time_limit:g}s: "
                                         f"{', '.join(r.name for r in left[:10])}"))
                break
            evidence = rule.test(message, view)
            if evidence is not None:
                found.append(Symbol(rule.name, rule.score, rule.description, evidence))
        return Report(symbols=tuple(found),
                      facts=RulesFacts(len(self.rules),
                                       round((time.monotonic() - started) * 1000, 2)).to_json())
