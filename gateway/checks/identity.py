"""Identity: who a message claims to be from, whom it imitates, and whether
we know them.

The author is the message's one reading of its From fields
(``message.authors``, the reading DMARC judges); display names
and domains are compared through :mod:`gateway.confusables` and
:mod:`gateway.lookalike`, so a Cyrillic letter, a digit for a letter or
an invisible space changes nothing. The authenticated identity is the
author's address with the domain that vouches for it: a passing DKIM d= or
SPF domain aligned with the author's (relaxed, as DMARC), else the first
passing signer (a mailing list's); without either the message is not
authenticated and teaches the correspondent memory nothing.

Symbols, each with evidence naming whom or what it imitates:

- ``FROM_NAME_IMPERSONATION``: the display name is a protected person's
  (``[[identity.protected]]``) or a known correspondent's, and the address
  is not theirs;
- ``FROM_LOOKALIKE_DOMAIN``: the author's domain imitates ours, a known
  correspondent's or a brand's (:class:`gateway.lookalike.DomainIndex`);
  a brand's imitated by a near spelling that is no slip of the keyboard
  (lindows.com, windows.com) only when the display name or the subject
  also names the brand;
- ``BRAND_IMPERSONATION``: the display name speaks as a brand (its name and
  role words only: "PayPal Security") while the message authenticates as
  none of its domains; a brand named in the subject counts when the
  sender is also unauthenticated, freemail or a lookalike;
- ``FROM_FREEMAIL_ORG_NAME``: a freemail author named as a protected person,
  a known correspondent or the organisation;
- ``REPLY_TO_DIVERGES`` (and ``REPLY_TO_FREEMAIL``): replies go to another
  registrable domain than the author's (a mailing list's own is fine);
- ``FIRST_CONTACT`` / ``KNOWN_CORRESPONDENT``: from the correspondent
  memory (:mod:`gateway.correspondents`), for authenticated senders only,
  and only while the memory answers;
- ``OUTBOUND_SUBMISSION``: a SASL-authenticated client (``{auth_authen}``)
  or a configured submission service (``{daemon_name}``): our user writing
  out. With ``[identity] outbound = "learn"`` it forces accept (a virus's
  forced reject still wins) and its recipients become the user's known
  correspondents: the From address's, when the SASL login is that address
  or owns it by ``[identity] sender_login_maps`` (Postfix's
  smtpd_sender_login_maps); else nobody's, and the log says so.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.confusables import name_keys, name_tokens
from gateway.correspondents import (
    Entry,
    MemoryReader,
    Snapshot,
    known_to_any,
    load_sender_logins,
    memory_url,
    now,
)
from gateway.facts import DkimFacts, IdentityFacts, SpfFacts
from gateway.lookalike import (
    ROLE_WORDS,
    Brand,
    Brands,
    DomainIndex,
    Lookalike,
    OurIndexes,
    is_freemail,
    load_brands,
    load_freemail,
    registrable,
    unicode_host,
)
from gateway.mail import Mailbox, decoded_header, parse_mailboxes
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.schema import ConfigError
from gateway.symbols import Report, Symbol

log = logging.getLogger("gateway.checks.identity")

MAX_MAILBOXES = 10  # From / Reply-To mailboxes looked at
MAX_NAME = 200
# Words that may stand beside a protected person's name ("Jane Doe, CEO").
TITLES = ROLE_WORDS | frozenset(name_tokens(
    "ceo cfo cto coo cio ciso president vice director manager head chief executive officer "
    "finance accounting accounts payroll hr dr mr mrs ms prof sir"))
_REPLY = re.compile(r"^\s*(?:re|fwd?|aw|wg|sv|vs|tr)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
IMITATIONS = ("FROM_NAME_IMPERSONATION", "FROM_LOOKALIKE_DOMAIN", "BRAND_IMPERSONATION",
              "FROM_FREEMAIL_ORG_NAME")


@dataclass(frozen=True)
class Person:
    """A protected person: a name worth imitating and the addresses that are theirs."""

    name: str
    addresses: frozenset[str]
    tokens: tuple[str, ...]
    keys: frozenset[str]

    @classmethod
    def of(cls, name: str, addresses: Iterable[str]) -> Person:
        return cls(name, frozenset(a.strip().lower() for a in addresses), name_tokens(name),
                   name_keys(name))

    def named_by(self, display: str) -> bool:
        """Whether a display name shows this person: the same name after
        folding, in any order of its words, or with a title beside it."""
        if not self.tokens:
            return False
        if name_keys(display) & self.keys:
            return True
        tokens = name_tokens(display)
        if len(self.tokens) < 2 or len(tokens) > len(self.tokens) + 3:
            return False
        if sorted(tokens) == sorted(self.tokens):
            return True
        own = sorted(t for t in self.tokens if t not in TITLES)
        if len(own) >= 2 and sorted(t for t in tokens if t not in TITLES) == own:
            return True  # "Doe, Jane (CEO)"
        width = len(self.tokens)
        for start in range(len(tokens) - width + 1):
            if tokens[start:start + width] == self.tokens:
                rest = tokens[:start] + tokens[start + width:]
                return all(word in TITLES for word in rest)
        return False


class People:
    """The protected people, indexed by their name keys: a display name is
    compared with the few people it may name, not with every one."""

    def __init__(self, people: Iterable[Person]):
        self.people = tuple(people)
        self._index: dict[str, list[Person]] = {}
        for person in self.people:
            for key in person.keys | {_unordered(person.tokens)}:
                self._index.setdefault(key, []).append(person)

    def __len__(self) -> int:
        return len(self.people)

    def __iter__(self) -> Iterator[Person]:
        return iter(self.people)

    def named_by(self, display: str) -> list[Person]:
        """The people a display name shows (see :meth:`Person.named_by`)."""
        tokens = name_tokens(display)
        keys = set(name_keys(display)) | {_unordered(tokens)}
        core = tuple(t for t in tokens if t not in TITLES)  # "Jane Doe, CEO"
        if core and core != tokens:
            keys |= {"".join(core), _unordered(core)}
        found = [p for key in keys for p in self._index.get(key, ())]
        return [p for p in dict.fromkeys(found) if p.named_by(display)]


def _unordered(tokens: Sequence[str]) -> str:
    return "~" + " ".join(sorted(tokens))


def load_people(config: Config) -> People:
    """``[[identity.protected]]`` and the tables of ``protected_files``."""
    from gateway.config import _protected

    tables = list(config.identity.protected)
    problems = []
    for path in config.identity.protected_files:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            problems.append(f"{path}: protected people file not found")
            continue
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"{path}: cannot read protected people: {exc}")
            continue
        found = data.get("protected", [])
        problem = _protected(found) if isinstance(found, list) else \
            ": expected [[protected]] tables"
        if problem:
            problems.append(f"{path}: protected{problem}")
            continue
        tables.extend(found)
    if problems:
        raise ConfigError(problems)
    return People(Person.of(t["name"], t.get("addresses", [])) for t in tables)


@dataclass(frozen=True)
class Author:
    """One From mailbox as the checks read it."""

    address: str  # lower case
    domain: str  # registrable, U-labels
    name: str  # display name, RFC 2047 decoded, bounded
    host: str = ""  # the domain as written (lower case): paypal.com.check.example


class IdentityCheck(Check):
    name = "identity"
    wants = ("spf", "dkim")
    symbols = {
        "FROM_NAME_IMPERSONATION": "the From display name is a protected person's or a known "
                                   "correspondent's, from an address that is not theirs",
        "FROM_LOOKALIKE_DOMAIN": "the author's domain imitates ours, a known correspondent's "
                                 "or a brand's (a brand's by a near spelling that is no "
                                 "keyboard slip only when the display name or subject names "
                                 "the brand)",
        "BRAND_IMPERSONATION": "a brand's name in the display name (or subject) while the "
                               "message authenticates as none of the brand's domains",
        "FROM_FREEMAIL_ORG_NAME": "a freemail author whose display name is a protected "
                                  "person's, a known correspondent's or the organisation's",
        "REPLY_TO_DIVERGES": "replies go to another domain than the author's",
        "REPLY_TO_FREEMAIL": "replies go to a freemail address; the author's domain is not "
                             "freemail",
        "FIRST_CONTACT": "the authenticated sender has never written to anyone here",
        "KNOWN_CORRESPONDENT": "the authenticated sender is a known correspondent of the "
                               "recipient (written to, released, or mail accepted over days; "
                               "none labelled spam)",
        "OUTBOUND_SUBMISSION": "our user writing out (SASL-authenticated client or submission "
                               "service): learned from, not spam-scored",
    }

    def __init__(self, config: Config, ruleset: Ruleset, reader: MemoryReader | None = None):
        super().__init__(config, ruleset)
        settings = self.settings = config.identity
        self.brands: Brands = load_brands(settings.brands)
        self.freemail = load_freemail(settings.freemail, settings.freemail_domains)
        self.people = load_people(config)
        self.sender_logins = load_sender_logins(settings.sender_login_maps)
        self.org_domains = frozenset(registrable(d) for d in settings.org_domains)
        url = memory_url(config.quarantine.url)
        if reader is None and url is not None and _exists(url):
            reader = MemoryReader(url, settings)
        self.reader = reader
        self._ours = OurIndexes(self.brands, self.freemail)
        # The known correspondents' index, per set of our domains, for the
        # memory's current snapshot (rebuilt when the snapshot changes).
        self._known: tuple[int, dict[frozenset[str], DomainIndex]] = (0, {})

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        return {"OUTBOUND_SUBMISSION": "accept"} if config.identity.outbound == "learn" else {}

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    # -- per message -----------------------------------------------------------------

    def run(self, message: Message, context: CheckContext) -> Report:
        envelope = message.envelope
        recipients = tuple(r.strip().strip("<>").lower() for r in envelope.rcpt_to)
        authors = self._authors(message)
        author = authors[0] if len(authors) == 1 else None
        outbound = self._outbound(envelope.macros)
        if outbound is not None:
            login = str(envelope.macros.get("auth_authen") or "").strip()[:MAX_NAME]
            address, evidence = self._our_user(author, login, outbound, envelope.queue_id)
            return Report(
                symbols=(self.symbol("OUTBOUND_SUBMISSION", evidence),),
                facts=IdentityFacts(direction="outbound", author=address,
                                    recipients=recipients).to_json())
        hosts = _authenticated(context)
        passes = list(dict.fromkeys(registrable(h) for h in hosts))
        via = None
        if author is not None:
            via = author.domain if author.domain in passes else (passes[0] if passes else None)
        snapshot = self.reader.snapshot() if self.reader is not None else Snapshot()
        org = self.org_domains or frozenset(
            {registrable(r.rpartition("@")[2]) for r in recipients} | snapshot.recipient_domains)
        found: list[Symbol] = []
        history = None
        if author is not None and via is not None and self.reader is not None:
            history = self.reader.sender(author.address, via)
        subject = _subject(message)
        # Where the message names someone, besides its domain: what
        # corroborates a brand's domain imitated by a typo alone.
        naming = [("the display name", a.name) for a in authors if a.name] + \
            [("the subject", subject)]
        lookalike = None
        for mailbox in authors:
            found.extend(self._names(mailbox, org, snapshot, via, naming))
            if lookalike is None:
                lookalike = self._lookalike(mailbox, org, snapshot, naming)
        if lookalike is not None:
            found.append(self.symbol("FROM_LOOKALIKE_DOMAIN", lookalike.describe()))
        found.extend(self._brand(authors, subject, hosts, lookalike))
        known = False
        if author is not None and via is not None and history is not None:
            history_symbol = self._history(author, via, history, recipients)
            if history_symbol is not None:
                found.append(history_symbol)
                known = history_symbol.name == "KNOWN_CORRESPONDENT"
        first = any(s.name == "FIRST_CONTACT" for s in found)
        if author is not None:
            found.extend(self._reply_to(message, author, org, snapshot, first))
        names = {s.name for s in found}
        facts = IdentityFacts(
            author=author.address if author else None,
            name=author.name[:MAX_NAME] if author and author.name else None,
            via=via, recipients=recipients,
            imitation=any(name in names for name in IMITATIONS), known=known,
            history=history is not None)
        return Report(symbols=tuple(_unique(found)), facts=facts.to_json())

    def _outbound(self, macros: Mapping[str, str]) -> str | None:
        """How we know it is our user writing out, or None."""
        if self.settings.outbound != "learn":
            return None
        login = str(macros.get("auth_authen") or "").strip()
        if login:
            return f"SASL-authenticated as {login[:MAX_NAME]}"
        daemon = str(macros.get("daemon_name") or "").strip()
        if daemon and daemon in self.settings.submission_daemons:
            return f"through submission service {daemon}"
        return None

    def _our_user(self, author: Author | None, login: str, outbound: str,
                  queue_id: str | None) -> tuple[str | None, str]:
        """Whose correspondents our user's recipients become (None: nobody's),
        and the evidence. With a SASL login, the From address only when the
        login owns it (``[identity] sender_login_maps``, or the same
        address); without one From, the login when it is an address. A
        submission service without SASL vouches for its From."""
        if not login or author is None:
            address = author.address if author else login.lower() if "@" in login else None
            return address, f"from {address or '-'}, {outbound}"
        if self.sender_logins.owns(login, author.address):
            return author.address, f"from {author.address}, {outbound}"
        log.info("identity: outbound message %s from %s, but SASL login %s does not own that "
                 "address ([identity] sender_login_maps): its recipients are not learned",
                 queue_id or "-", author.address, login)
        return None, (f"from {author.address}, {outbound}, who does not own that address: "
                      "its recipients are not learned")

    def _authors(self, message: Message) -> list[Author]:
        # The message's one reading of its From fields, the one DMARC judges.
        return [_author(mailbox, message) for mailbox in message.authors.mailboxes[:MAX_MAILBOXES]]

    def _names(self, author: Author, org: frozenset[str], snapshot: Snapshot,
               via: str | None, naming: Sequence[tuple[str, str]]) -> list[Symbol]:
        if not author.name:
            return []
        found = []
        ours = author.domain in org and via == author.domain  # our own, authenticated
        freemail = is_freemail(author.domain, self.freemail)
        for person in self.people.named_by(author.name):
            if author.address not in person.addresses:
                where = f"{person.name} ({', '.join(sorted(person.addresses)) or 'protected'})"
                if not ours:
                    found.append(self.symbol(
                        "FROM_NAME_IMPERSONATION",
                        f"display name {author.name!r} is {where}; written from "
                        f"{author.address}"))
                if freemail:
                    found.append(self.symbol(
                        "FROM_FREEMAIL_ORG_NAME",
                        f"freemail {author.address} uses the name of {where}"))
                break
        if not any(s.name == "FROM_NAME_IMPERSONATION" for s in found) and not ours:
            for key in name_keys(author.name):
                senders = snapshot.names.get(key)
                if not senders or author.address in senders:
                    continue
                # Someone we know writing from a new address of their own
                # (a personal domain, a new employer) is common; an imitation
                # comes from freemail, a lookalike or an address that cannot
                # authenticate.
                if via == author.domain and not freemail and \
                        self._lookalike(author, org, snapshot, naming, any_tld=True) is None:
                    continue
                shown = ", ".join(sorted(senders)[:3])
                found.append(self.symbol(
                    "FROM_NAME_IMPERSONATION",
                    f"display name {author.name!r} is known correspondent {shown}'s; written "
                    f"from {author.address}"))
                if freemail:
                    found.append(self.symbol(
                        "FROM_FREEMAIL_ORG_NAME",
                        f"freemail {author.address} uses the name of known correspondent "
                        f"{shown}"))
                break
        if freemail and not any(s.name == "FROM_FREEMAIL_ORG_NAME" for s in found):
            named = self._org(org).speaking_as(author.name)
            if named is not None:
                found.append(self.symbol(
                    "FROM_FREEMAIL_ORG_NAME",
                    f"freemail {author.address} is named {author.name!r}, as our organisation "
                    f"({named.brand.title})"))
        return found

    def _org(self, org: frozenset[str]) -> Brands:
        names = list(self.settings.org_names) or [
            d.partition(".")[0] for d in sorted(org) if len(d.partition(".")[0]) >= 4]
        if not names:
            return Brands()
        keys = tuple(dict.fromkeys("".join(name_tokens(n)) for n in names if name_tokens(n)))
        return Brands.of([Brand("organisation", tuple(names), tuple(sorted(org)), keys)])

    def _lookalike(self, author: Author, org: frozenset[str], snapshot: Snapshot,
                   naming: Sequence[tuple[str, str]], any_tld: bool = False,
                   ) -> Lookalike | None:
        domain = author.domain
        if not domain or domain in org or domain in snapshot.known_domains:
            return None
        # A brand's own domain (its country sites too) and a freemail
        # provider's imitate nothing: the indexes spare them.
        ours, known = self._domains(org, snapshot)
        host = author.host or domain
        found = ours.match(host)
        if found is not None and found.technique == "typo" and found.imitates not in org \
                and not found.crafted:
            found = self._corroborated(found, naming)
        elif found is not None and found.technique == "tld" and found.imitates in org \
                and not any_tld:
            found = self._named_ours(found, author, org, snapshot)
        if found is None:
            # Organisations own their name under several TLDs (python.org,
            # python.ca): another TLD of a correspondent's domain is no
            # imitation by itself, only with the correspondent's name.
            found = known.match(host, other_tld=any_tld)
        return found

    def _named_ours(self, other_tld: Lookalike, author: Author, org: frozenset[str],
                    snapshot: Snapshot) -> Lookalike | None:
        """Another TLD of our domain, if the display name also claims us.

        Organisations share names across TLDs (example.org and example.net
        are not one owner), and ours are only learned from the recipients
        unless [identity] org_domains lists them all: the TLD alone says
        little. An imitation of us speaks as us: as our organisation ("Acme
        Billing"), a protected person, or someone we know by name."""
        name = author.name
        if not name:
            return None
        why = ""
        person = next((p for p in self.people.named_by(name)
                       if author.address not in p.addresses), None)
        if person is not None:
            why = f"the display name is {person.name}'s"
        elif self._org(org).speaking_as(name) is not None:
            why = "the display name speaks as our organisation"
        else:
            for key in name_keys(name):
                senders = snapshot.names.get(key)
                if senders and author.address not in senders:
                    why = f"the display name is known correspondent {min(senders)}'s"
                    break
        return dataclasses.replace(other_tld, corroboration=why) if why else None

    def _corroborated(self, typo: Lookalike, naming: Sequence[tuple[str, str]],
                      ) -> Lookalike | None:
        """A near spelling of a brand's domain, if the message also names
        the brand (a slip of the keyboard, paypall.com, needs no such sign:
        :func:`gateway.lookalike.crafted_form`).

        Brands' names are famous words, and many a legitimate business
        sits one or two letters from one (lindows.com and Microsoft's
        windows.com): a near spelling alone says little. A phish that imitates a
        brand names it somewhere the reader looks first. Our own domains
        and our correspondents' need no such sign: few, and chosen by no
        one else, a domain a letter away from one of them has no innocent
        reason to write to us, and the attack on a supplier's invoice
        names nobody but the supplier's own people. (A brand's domain that
        known correspondents write from, yahoo.co.uk, is theirs too: the
        index of their domains has it.)"""
        brand = self.brands.owner(typo.imitates)
        if brand is None:
            return typo
        for where, text in naming:
            if any(m.brand.key == brand.key for m in self.brands.mentions(text)):
                return dataclasses.replace(typo, corroboration=f"{where} names {brand.title}")
        return None

    def _domains(self, org: frozenset[str], snapshot: Snapshot) -> tuple[DomainIndex,
                                                                        DomainIndex]:
        """(ours and the brands', the known correspondents') domains, rebuilt
        when the memory's index or the org domains change."""
        ours = self._ours.of(org)
        if self._known[0] != id(snapshot):
            self._known = (id(snapshot), {})
        built = self._known[1]
        known = built.get(org)
        if known is None:
            if len(built) >= OurIndexes.LIMIT:
                built.clear()
            # The brands' domains they write from too: a typo of one is
            # theirs to imitate, when it is not corroborated as the brand's.
            known = built[org] = DomainIndex(
                {d: "a known correspondent's domain" for d in snapshot.known_domains
                 if d not in org}, brands=self.brands, freemail=self.freemail)
        return ours, known

    def _brand(self, authors: Sequence[Author], subject: str, hosts: Sequence[str],
               lookalike: Lookalike | None) -> list[Symbol]:
        """``hosts``: the domains that authenticated the message, as they did
        (amazon.com.be is Amazon's, its registrable com.be is not)."""
        passes = list(dict.fromkeys(registrable(h) for h in hosts))
        vouching = [h for h in hosts if not is_freemail(h, self.freemail)]
        shown = ", ".join(passes) if passes else "nothing (not authenticated)"
        for author in authors:
            mention = self.brands.speaking_as(author.name) if author.name else None
            if mention is not None and not any(mention.brand.owns(d) for d in vouching):
                return [self.symbol(
                    "BRAND_IMPERSONATION",
                    f"display name {author.name!r} speaks as {mention.brand.title}; the "
                    f"message authenticates as {shown}, none of {mention.brand.title}'s "
                    f"domains ({', '.join(mention.brand.domains[:3])}...)")]
        # A subject may name a brand for any reason (news, a reply about it):
        # it counts from a sender that cannot authenticate or imitates a
        # domain, and not in a reply or a forward.
        weak = not passes or lookalike is not None
        if subject and weak and not _REPLY.match(subject):
            mention = self.brands.mentioned_in(subject)
            if mention is not None and not any(mention.brand.owns(d) for d in vouching) and \
                    not any(mention.brand.owns(a.host or a.domain) for a in authors
                            if a.domain in passes):
                why = "a lookalike" if lookalike else "not authenticated"
                return [self.symbol(
                    "BRAND_IMPERSONATION",
                    f"subject names {mention.brand.title}; the sender is {why} and "
                    f"authenticates as none of its domains")]
        return []

    def _history(self, author: Author, via: str, entries: list[Entry],
                 recipients: Sequence[str]) -> Symbol | None:
        who = f"{author.address} (authenticated by {via})"
        if not entries:
            return self.symbol("FIRST_CONTACT", f"{who} has never written to anyone here")
        known = known_to_any(entries, recipients, self.settings, now())
        if not known:
            return None
        best = max(known, key=lambda e: (e.outbound, e.released, e.accepted))
        told = []
        if best.outbound:
            told.append(f"{best.recipient} wrote to them {best.outbound} time(s)")
        if best.accepted:
            told.append(f"{best.accepted} message(s) accepted since {best.first_seen:%Y-%m-%d}")
        if best.released:
            told.append(f"{best.released} released")
        return self.symbol("KNOWN_CORRESPONDENT",
                           f"{who} is a known correspondent of {best.recipient}: "
                           f"{'; '.join(told)}; none labelled spam")

    def _reply_to(self, message: Message, author: Author, org: frozenset[str],
                  snapshot: Snapshot, first: bool) -> list[Symbol]:
        depth = message.limits.address_comment_depth
        mailboxes = [m for value in message.headers("Reply-To")[:MAX_MAILBOXES]
                     for m in parse_mailboxes(_text(value), depth).mailboxes[:MAX_MAILBOXES]]
        lists = _list_domains(message)
        author_free = is_freemail(author.domain, self.freemail)
        for mailbox in mailboxes:
            domain = registrable(mailbox.domain) if mailbox.domain else ""
            freemail = is_freemail(domain, self.freemail)
            if not domain or domain == author.domain or domain in lists or domain in org or \
                    (domain in snapshot.known_domains and not freemail):
                continue
            notes = [n for n, on in (("freemail", freemail), ("first contact", first)) if on]
            evidence = (f"Reply-To {mailbox.address.lower()} is on {domain}"
                        f"{' (' + ', '.join(notes) + ')' if notes else ''}, the author "
                        f"{author.address} on {author.domain}")
            found = [self.symbol("REPLY_TO_DIVERGES", evidence)]
            if freemail and not author_free:
                found.append(self.symbol("REPLY_TO_FREEMAIL", evidence))
            return found
        return []


def _author(mailbox: Mailbox, message: Message) -> Author:
    name = decoded_header(mailbox.display, message.limits.encoded_words)
    name = " ".join(name.split())[:MAX_NAME * 2]
    domain = registrable(mailbox.domain) if mailbox.domain else ""
    return Author(mailbox.address.strip().lower()[:320], domain, name, mailbox.domain[:253])


def _subject(message: Message) -> str:
    """The Subject as a reader sees it (RFC 2047 decoded), bounded."""
    subject = message.header("Subject")
    if not subject:
        return ""
    return decoded_header(_text(subject), message.limits.encoded_words)[:MAX_NAME * 2]


def _authenticated(context: CheckContext) -> list[str]:
    """The domains that authenticated the message, as they did (lower case,
    U-labels): passing DKIM signers, then the SPF-passing domain."""
    found: list[str] = []
    dkim = DkimFacts.of(context.facts)
    if dkim is not None:
        found.extend(unicode_host(s.domain) for s in dkim.signatures if s.result == "pass")
    spf = SpfFacts.of(context.facts)
    if spf is not None and spf.result == "pass" and spf.domain:
        found.append(unicode_host(spf.domain))
    return [d for d in dict.fromkeys(found) if d and registrable(d)]


def _list_domains(message: Message) -> set[str]:
    """The registrable domains a mailing list names itself by (List-Id,
    List-Post): its own Reply-To is no divergence."""
    found = set()
    for name in ("List-Id", "List-Post"):
        value = message.header(name)
        if not value:
            continue
        inside = value.rpartition("<")[2].partition(">")[0].removeprefix("mailto:")
        host = inside.rpartition("@")[2] if "@" in inside else inside
        if "." in host:
            found.add(registrable(host[:253]))
    found.discard("")
    return found


def _text(value: str) -> str:
    """A header value as text: raw UTF-8 that arrived as surrogate escapes is read as UTF-8."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return value


def _unique(symbols: Iterable[Symbol]) -> list[Symbol]:
    seen: set[str] = set()
    found = []
    for symbol in symbols:
        if symbol.name not in seen:
            seen.add(symbol.name)
            found.append(symbol)
    return found


def _exists(url: str) -> bool:
    """A SQLite store that does not exist yet is not created by a reader."""
    if not url.startswith("sqlite:///"):
        return True
    path = url.removeprefix("sqlite:///")
    return path not in ("", ":memory:") and Path(path).exists()
