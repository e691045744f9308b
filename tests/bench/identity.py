"""Identity bench: impersonation and lookalike attacks spliced into real
corpus ham, and the false positives of the default rules on untouched ham.

    .venv/bin/python tests/bench/identity.py                  # -n 40 per technique, held-back ham
    .venv/bin/python tests/bench/identity.py --on tune        # the half used to choose scores
    .venv/bin/python tests/bench/identity.py -n 5 --json out.json

The SpamAssassin corpus's ham is split as the classifier bench splits it
(tests/bench/classifier.py, seed 42): the shipped model never saw the 20%
held back. ``--on test`` (the default) builds the world from the other 80%
(the *history*) and measures on the held-back 20%; ``--on tune``, used to
choose the scores in rules/default.toml, splits the 80% in two halves
instead and never touches the held-back part.

The world, from the history alone:

- our organisation: the recipients' domain (spamassassin.taint.org); the
  corpus owner's recipient address on each message;
- the correspondent memory (a SQLite store of its own): every history ham
  as accepted mail from its From address, authenticated by its own domain
  (the corpus predates DKIM; modern senders sign), and the recipients of
  mail the organisation's own people wrote as their outbound mail;
- protected people: the 12 most frequent two-word display names of the
  history, with every address they used there.

Each technique (:data:`TECHNIQUES`, a registry: ``@technique("name")``
adds one) turns a carrier, an untouched ham of the measured part, into an
attack: a new From (display name, address), maybe a Reply-To, a sentence,
and what the attacker can make authenticate (a freemail provider's or its
own lookalike domain's DKIM). Every message then goes through the default
rules' checks that need no network (headers, size, lists, rules, identity;
SPF and DKIM as the technique says) plus the shipped classifier's band, as
tests/bench/classifier.py judges ham; the printed table has, per technique,
the share quarantined or rejected, and on the untouched ham the actions
with and without the identity check, every symbol that fired, and each ham
the identity check moved into the quarantine.
"""

from __future__ import annotations

import argparse
import collections
import email
import json
import math
import random
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.checks import Check, CheckContext  # noqa: E402
from gateway.facts import DkimFacts, SignatureResult, SpfFacts  # noqa: E402
from gateway.message import Message  # noqa: E402
from gateway.symbols import Report  # noqa: E402

ORG = "spamassassin.taint.org"
OWNER = f"yyyy@{ORG}"
PROTECTED = 12
FREEMAIL = ("gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "aol.com", "gmx.com")
SEEDS = {"test": 42, "tune": 7}
PAYMENT = ("Please note that our bank details have changed. Kindly update the payment "
           "details before the next invoice is paid and confirm by return email.\n\n")
URGENT = ("I need you to handle an urgent wire transfer for me today. Reply to this "
          "email only, I am in meetings all day.\n\n")
BRAND_SUBJECTS = ("Your account has been limited", "Action required: verify your account",
                  "Unusual sign-in activity", "Your invoice is ready")
WORDS = ("secure", "alerts", "support", "billing", "login", "verify", "account", "service")
HOMOGLYPHS = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441",
              "x": "\u0445", "y": "\u0443", "i": "\u0456"}
TLDS = ("net", "co", "info", "org", "biz", "com")


# -- the authentication the bench gives each message (no network) ------------------------------


class BenchDkim(Check):
    """Stands in for the SPF and DKIM checks: passes for the domains the
    envelope's ``bench_dkim`` / ``bench_spf`` macros name."""

    name = "dkim"
    symbols = {}

    def run(self, message: Message, context: CheckContext) -> Report:
        domains = [d for d in message.envelope.macros.get("bench_dkim", "").split(",") if d]
        return Report(facts=DkimFacts(tuple(SignatureResult(d, "bench", "rsa-sha256", "pass")
                                            for d in domains)).to_json())


class BenchSpf(Check):
    name = "spf"
    symbols = {}

    def run(self, message: Message, context: CheckContext) -> Report:
        domain = message.envelope.macros.get("bench_spf")
        return Report(facts=SpfFacts("pass" if domain else None, domain=domain).to_json())


# -- the world the attacks imitate ----------------------------------------------------------


@dataclass
class Mail:
    path: str
    raw: bytes
    author: str  # lower case
    name: str
    domain: str
    recipient: str
    date: datetime
    to: tuple[str, ...]


@dataclass
class World:
    org: str
    people: list[tuple[str, list[str]]]  # protected: name, addresses
    correspondents: list[tuple[str, str]]  # known ones with a two-word name: (name, address)
    url: str


@dataclass
class Attack:
    raw: bytes
    dkim: tuple[str, ...] = ()
    spf: str | None = None


Technique = Callable[[Mail, random.Random, World], Attack | None]
TECHNIQUES: dict[str, Technique] = {}


def technique(name: str) -> Callable[[Technique], Technique]:
    """Register a technique: ``(carrier, rng, world) -> Attack`` or None
    when the carrier does not suit it (another carrier is tried)."""

    def register(function: Technique) -> Technique:
        TECHNIQUES[name] = function
        return function

    return register


def read(path: str) -> Mail | None:
    raw = Path(path).read_bytes()
    head = email.message_from_bytes(raw.split(b"\n\n", 1)[0] + b"\n\n")
    found = getaddresses([str(v) for v in head.get_all("From", [])])
    if not found or "@" not in found[0][1]:
        return None
    name, author = found[0]
    recipients = [a.lower() for _n, a in getaddresses(
        [str(v) for k in ("Delivered-To", "To", "Cc") for v in head.get_all(k, [])]) if "@" in a]
    ours = [a for a in recipients if a.endswith("@" + ORG)]
    try:
        date = parsedate_to_datetime(str(head.get("Date", "")))
        date = date if date.tzinfo else date.replace(tzinfo=UTC)
    except (TypeError, ValueError, IndexError):
        date = datetime(2002, 9, 1, tzinfo=UTC)
    return Mail(path, raw, author.lower(), name.strip(), author.rpartition("@")[2].lower(),
                ours[0] if ours else OWNER, date, tuple(recipients[:20]))


def build_world(history: list[Mail], directory: Path) -> World:
    from gateway.config import IdentitySection
    from gateway.confusables import name_tokens
    from gateway.correspondents import Memory, Observation, build_snapshot
    from gateway.lookalike import registrable
    from gateway.quarantine.store import QuarantineStore

    url = f"sqlite:///{directory}/store.db"
    QuarantineStore(url).close()
    memory = Memory.open(url)
    found = []
    for mail in history:
        via = registrable(mail.domain)
        if mail.domain.endswith(ORG) or mail.domain == ORG:
            for address in mail.to:
                if not address.endswith(ORG):
                    found.append(Observation(address, registrable(address.rpartition("@")[2]),
                                             mail.author, "outbound", mail.date))
            continue
        found.append(Observation(mail.author, via, mail.recipient, "accepted", mail.date,
                                 name=mail.name[:100]))
    for start in range(0, len(found), 2000):
        memory.add(found[start:start + 2000])
    names: dict[str, collections.Counter[str]] = {}
    for mail in history:
        if len(name_tokens(mail.name)) >= 2 and not mail.name.isupper():
            names.setdefault(mail.name, collections.Counter())[mail.author] += 1
    frequent = sorted(names, key=lambda n: -sum(names[n].values()))[:PROTECTED]
    people = [(name, sorted(names[name])) for name in frequent]
    settings = IdentitySection()
    rows = memory.index_rows()
    snapshot = build_snapshot(rows, settings, max(m.date for m in history))
    known = sorted({(snapshot.shown[k], next(iter(sorted(v)))) for k, v in snapshot.names.items()})
    memory.close()
    protected_names = {n for n, _ in people}
    return World(ORG, people, [(n, a) for n, a in known if n not in protected_names], url)


# -- splicing ---------------------------------------------------------------------------------


_DROP = re.compile(rb"^(from|reply-to|dkim-signature|authentication-results|sender|"
                   rb"return-path|received-spf)\s*:", re.IGNORECASE)


def splice(mail: Mail, from_: str, reply_to: str | None = None, subject: str | None = None,
           text: str = "") -> bytes | None:
    """The carrier with a new From (and Reply-To, Subject), the sentence
    before its text; None for a carrier whose body is not plain text."""
    head, sep, body = mail.raw.partition(b"\n\n")
    if not sep:
        return None
    lines = head.split(b"\n")
    kept: list[bytes] = []
    skipping = False
    for line in lines:
        if line[:1] in (b" ", b"\t") and skipping:
            continue
        skipping = bool(_DROP.match(line)) or (subject is not None and
                                               line.lower().startswith(b"subject:"))
        if not skipping:
            kept.append(line)
    parsed = email.message_from_bytes(head + b"\n\n")
    if text and (parsed.is_multipart() or parsed.get_content_type() != "text/plain" or
                 parsed.get("Content-Transfer-Encoding", "7bit").lower() not in
                 ("7bit", "8bit")):
        return None
    added = [b"From: " + from_.encode("utf-8")]
    if reply_to:
        added.append(b"Reply-To: " + reply_to.encode())
    if subject is not None:
        added.append(b"Subject: " + subject.encode())
    return b"\n".join(added + kept) + b"\n\n" + text.encode() + body


def encoded(name: str) -> str:
    """A display name as a MUA sends it (RFC 2047 when not ASCII)."""
    if name.isascii():
        return '"' + name.replace('"', "") + '"'
    from email.header import Header

    return Header(name, "utf-8").encode()


def freemail_address(rng: random.Random, name: str) -> tuple[str, str]:
    domain = rng.choice(FREEMAIL)
    local = re.sub(r"[^a-z0-9]+", ".", name.lower()).strip(".") or "office"
    return f"{local}.{rng.randint(10, 9999)}@{domain}", domain


def lookalike(domain: str, how: str, rng: random.Random) -> str:
    """A lookalike of ``domain`` (registrable) made by one technique."""
    label, _, suffix = domain.partition(".")
    if how == "confusable":
        spots = [i for i, c in enumerate(label) if c in HOMOGLYPHS or c in "lo"]
        if not spots:
            return lookalike(domain, "typo", rng)
        i = rng.choice(spots)
        char = label[i]
        swap = HOMOGLYPHS.get(char) if rng.random() < 0.7 or char not in "lo" else \
            {"l": "1", "o": "0"}[char]
        shown = label[:i] + (swap or {"l": "1", "o": "0"}[char]) + label[i + 1:]
        import idna

        try:
            return idna.encode(f"{shown}.{suffix}", uts46=True).decode("ascii")
        except idna.IDNAError:
            return f"{shown}.{suffix}"  # a digit for a letter needs no IDNA
    if how == "typo":
        i = rng.randrange(max(len(label) - 1, 1))
        kind = rng.choice(("swap", "drop", "double"))
        if kind == "swap" and len(label) > 1:
            shown = label[:i] + label[i + 1] + label[i] + label[i + 2:]
        elif kind == "drop" and len(label) > 4:
            shown = label[:i] + label[i + 1:]
        else:
            shown = label[:i] + label[i] + label[i:]
        return f"{shown}.{suffix}"
    if how == "hyphen":
        i = rng.randrange(1, max(len(label) - 1, 2))
        return f"{label[:i]}-{label[i:]}.{suffix}"
    if how == "affix":
        word = rng.choice(WORDS)
        return f"{label}-{word}.{suffix}" if rng.random() < 0.6 else f"{word}{label}.{suffix}"
    if how == "tld":
        return f"{label}.{rng.choice([t for t in TLDS if t != suffix])}"
    if how == "dots":
        return f"{label}-{suffix.replace('.', '-')}.com"
    if how == "subdomain":
        return f"{domain}.{rng.choice(WORDS)}-{rng.choice(WORDS)}.com"
    raise ValueError(how)


LOOKALIKES = ("confusable", "typo", "hyphen", "affix", "tld", "dots", "subdomain")


def _registrable(host: str) -> str:
    from gateway.lookalike import registrable

    return registrable(host)


def _ascii(host: str) -> str:
    import idna

    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError:
        return host


# -- the techniques ---------------------------------------------------------------------------


@technique("protected-name-freemail")
def _ceo_freemail(mail: Mail, rng: random.Random, world: World) -> Attack | None:
    name, _addresses = rng.choice(world.people)
    address, domain = freemail_address(rng, name)
    raw = splice(mail, f"{encoded(name)} <{address}>", text=rng.choice((PAYMENT, URGENT)))
    return Attack(raw, (domain,), domain) if raw else None


@technique("protected-name-homoglyph")
def _ceo_homoglyph(mail: Mail, rng: random.Random, world: World) -> Attack | None:
    name, _addresses = rng.choice(world.people)
    spots = [i for i, c in enumerate(name) if c.lower() in HOMOGLYPHS]
    shown = name.upper() if not spots else name
    for i in rng.sample(spots, min(2, len(spots))):
        shown = shown[:i] + HOMOGLYPHS[shown[i].lower()] + shown[i + 1:]
    address, domain = freemail_address(rng, "office")
    raw = splice(mail, f"{encoded(shown)} <{address}>", text=URGENT)
    return Attack(raw, (domain,), domain) if raw else None


@technique("correspondent-name-freemail")
def _correspondent_freemail(mail: Mail, rng: random.Random, world: World) -> Attack | None:
    if not world.correspondents:
        return None
    name, _address = rng.choice(world.correspondents)
    address, domain = freemail_address(rng, name)
    raw = splice(mail, f"{encoded(name)} <{address}>", text=PAYMENT)
    return Attack(raw, (domain,), domain) if raw else None


def _org_lookalike(how: str) -> Technique:
    def make(mail: Mail, rng: random.Random, world: World) -> Attack | None:
        name, addresses = rng.choice(world.people)
        local = addresses[0].partition("@")[0]
        domain = lookalike(_registrable(world.org), how, rng)
        raw = splice(mail, f"{encoded(name)} <{local}@{domain}>", text=PAYMENT)
        return Attack(raw, (_registrable(domain),), domain) if raw else None

    return make


def _correspondent_lookalike(how: str) -> Technique:
    def make(mail: Mail, rng: random.Random, world: World) -> Attack | None:
        candidates = [(n, a) for n, a in world.correspondents
                      if len(_registrable(a.rpartition("@")[2]).partition(".")[0]) >= 5]
        if not candidates:
            return None
        name, address = rng.choice(candidates)
        local, _, host = address.partition("@")
        domain = lookalike(_registrable(host), how, rng)
        raw = splice(mail, f"{encoded(name)} <{local}@{domain}>", text=PAYMENT)
        return Attack(raw, (_registrable(domain),), domain) if raw else None

    return make


@technique("brand-display-name")
def _brand_name(mail: Mail, rng: random.Random, world: World) -> Attack | None:
    from gateway.lookalike import DEFAULT_BRANDS, load_brands

    brand = rng.choice(load_brands([DEFAULT_BRANDS]).brands)
    domain = f"{rng.choice(WORDS)}{rng.randint(10, 999)}-mail.com"
    name = f"{brand.names[0]} {rng.choice(('Security', 'Support', 'Billing', 'Team', ''))}"
    raw = splice(mail, f"{encoded(name.strip())} <no-reply@{domain}>",
                 subject=rng.choice(BRAND_SUBJECTS))
    return Attack(raw, (domain,), domain) if raw else None


def _brand_lookalike(how: str, named: bool = False) -> Technique:
    """A brand's lookalike domain behind "Customer Service"; the subject
    names the brand only when ``named`` ("Your PayPal account ...")."""

    def make(mail: Mail, rng: random.Random, world: World) -> Attack | None:
        from gateway.lookalike import DEFAULT_BRANDS, load_brands

        brands = [b for b in load_brands([DEFAULT_BRANDS]).brands
                  if len(b.domains[0].partition(".")[0]) >= 5]
        brand = rng.choice(brands)
        domain = lookalike(brand.domains[0], how, rng)
        subject = rng.choice(BRAND_SUBJECTS)
        if named:
            subject = subject.replace("Your ", f"Your {brand.names[0]} ").replace(
                "Unusual ", f"{brand.names[0]}: unusual ")
            subject = subject if brand.names[0] in subject else f"{brand.names[0]}: {subject}"
        raw = splice(mail, f'"Customer Service" <service@{domain}>', subject=subject)
        return Attack(raw, (_registrable(domain),), domain) if raw else None

    return make


@technique("reply-to-freemail-payment")
def _reply_to(mail: Mail, rng: random.Random, world: World) -> Attack | None:
    domain = f"{rng.choice(('acme', 'global', 'euro', 'prime'))}{rng.randint(10, 999)}" \
             f"-{rng.choice(('trading', 'supplies', 'logistics'))}.com"
    reply, _free = freemail_address(rng, "accounts")
    raw = splice(mail, f'"Accounts Receivable" <accounts@{domain}>', reply_to=reply,
                 text=PAYMENT)
    return Attack(raw, (domain,), domain) if raw else None


for _how in LOOKALIKES:
    technique(f"org-lookalike-{_how}")(_org_lookalike(_how))
for _how in LOOKALIKES:
    technique(f"correspondent-lookalike-{_how}")(_correspondent_lookalike(_how))
for _how in LOOKALIKES:
    technique(f"brand-lookalike-{_how}")(_brand_lookalike(_how))
# A typo of a brand's domain counts only with the brand named (the display
# name or the subject): the technique above never names it, this one does.
technique("brand-lookalike-typo-named")(_brand_lookalike("typo", named=True))


# Link tricks (tests/bench/links.py's techniques: lying anchors, brand claims,
# lookalike link hosts, the user-name trick, QR codes in pictures), spliced
# into the carrier as that bench splices them; the carrier keeps its author,
# who authenticates as usual.
LINK_TECHNIQUES = ("lying_anchor_brand", "lying_anchor_sender", "brand_anchor",
                   "lookalike_digit", "lookalike_typo", "lookalike_hyphen", "lookalike_tld",
                   "lookalike_idn", "lookalike_subdomain", "userinfo_trick", "qr_attached",
                   "qr_inline_lookalike")


def _link_trick(name: str) -> Technique:
    def make(mail: Mail, rng: random.Random, world: World) -> Attack | None:
        from tests.bench import links

        carrier = links.carrier_of(mail.path, mail.raw)
        raw = links.TECHNIQUES[name].splice(carrier, rng)
        return Attack(raw, (_registrable(mail.domain),), mail.domain)

    return make


for _name in LINK_TECHNIQUES:
    technique(f"links-{_name.replace('_', '-')}")(_link_trick(_name))


# -- judging ----------------------------------------------------------------------------------


class Judge:
    """The default rules' action: the checks that need no network, through
    the policy, plus the shipped classifier's band (as the classifier bench)."""

    def __init__(self, url: str, world: World, identity: bool = True):
        from gateway.classifier.model import load_model
        from gateway.config import Config, IdentitySection, PipelineSection, QuarantineSection
        from gateway.evaluator import LocalEvaluator
        from gateway.ruleset import load_rules

        checks = ["headers", "size", "lists", "rules", "links"]
        if identity:
            checks += ["tests.bench.identity:BenchDkim", "tests.bench.identity:BenchSpf",
                       "identity"]
        protected = [{"name": n, "addresses": a} for n, a in world.people]
        self.config = Config(
            pipeline=PipelineSection(checks=checks, workers=0),
            quarantine=QuarantineSection(url=url),
            identity=IdentitySection(org_domains=[world.org], protected=protected))
        self.rules = load_rules(self.config.policy.rules)
        self.evaluator = LocalEvaluator(self.config)
        self.model = load_model(PROJECT_ROOT / "models" / "default")

    def judge(self, raw: bytes, recipient: str, attack: Attack | None = None,
              ) -> tuple[str, float, list[str]]:
        from gateway.classifier.model import band
        from gateway.message import Envelope

        if attack is None:
            author = read_author(raw)
            dkim = (_registrable(author),) if author else ()
            spf = author or None
        else:
            dkim, spf = attack.dkim, attack.spf
        macros = {"bench_dkim": ",".join(dkim), "bench_spf": spf or ""}
        message = Message.from_bytes(raw, Envelope(mail_from=f"bounce@{spf or 'x.example'}",
                                                   rcpt_to=(recipient,), macros=macros))
        verdict = self.evaluator.evaluate_message(message)
        probability = self.model.score(email.message_from_bytes(raw))[0]
        bayes = band(probability)
        score = verdict.score + self.rules.scores.get(bayes, 0.0)
        names = [s.name for s in verdict.symbols] + [bayes]
        if verdict.forced_by:
            return verdict.action, score, names
        if score >= self.rules.reject:
            return "reject", score, names
        if score >= self.rules.quarantine:
            return "quarantine", score, names
        if self.rules.add_header is not None and score >= self.rules.add_header:
            return "add_header", score, names
        return "accept", score, names

    def close(self) -> None:
        self.evaluator.close()


def read_author(raw: bytes) -> str:
    head = email.message_from_bytes(raw.split(b"\n\n", 1)[0] + b"\n\n")
    found = getaddresses([str(v) for v in head.get_all("From", [])])
    return found[0][1].rpartition("@")[2].lower() if found else ""


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of a proportion (Wilson score)."""
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def split(on: str) -> tuple[list[Mail], list[Mail]]:
    """(history, measured) ham for ``--on test`` or ``tune``."""
    from tests.bench import classifier

    data, training, held = classifier.corpus(show_progress=False)
    ham_training = [data.sources[i] for i in training if data.labels[i] == 0]
    ham_held = [data.sources[i] for i in held if data.labels[i] == 0]
    if on == "tune":
        shuffled = sorted(ham_training)
        random.Random(SEEDS["tune"]).shuffle(shuffled)
        half = len(shuffled) // 2
        history_paths, measured_paths = shuffled[:half], shuffled[half:]
    else:
        history_paths, measured_paths = ham_training, ham_held
    history = [m for p in history_paths if (m := read(p)) is not None]
    measured = [m for p in measured_paths if (m := read(p)) is not None]
    # The corpus is from 2002: its dates move so that the history ends
    # today, or the memory would have decayed it all (half_life_days).
    dates = sorted(m.date for m in history)
    last = dates[len(dates) * 99 // 100]  # a few messages are dated decades ahead
    shift = datetime.now(UTC) - last
    for mail in history:
        mail.date = min(mail.date, last) + shift
    return history, measured


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=40, help="attacks per technique")
    parser.add_argument("--on", choices=("test", "tune"), default="test")
    parser.add_argument("--techniques", help="comma-separated names (default: all)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(list(argv) if argv is not None else None)
    history, measured = split(args.on)
    print(f"identity bench, on {args.on}: history {len(history)} ham, measured "
          f"{len(measured)} ham", flush=True)
    with tempfile.TemporaryDirectory(prefix="identity-bench-") as directory:
        world = build_world(history, Path(directory))
        print(f"  our domain {world.org}; {len(world.people)} protected people "
              f"({', '.join(n for n, _ in world.people[:4])}, ...); "
              f"{len(world.correspondents)} known correspondents with a name", flush=True)
        judge = Judge(world.url, world)
        plain = Judge(world.url, world, identity=False)
        try:
            results = run(args, world, measured, judge, plain)
        finally:
            judge.close()
            plain.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def run(args: argparse.Namespace, world: World, measured: list[Mail], judge: Judge,
        plain: Judge) -> dict[str, Any]:
    results: dict[str, Any] = {"on": args.on, "ham": {}, "techniques": {}}
    ham_actions: collections.Counter[str] = collections.Counter()
    plain_actions: collections.Counter[str] = collections.Counter()
    fired: collections.Counter[str] = collections.Counter()
    moved: list[dict[str, Any]] = []
    for mail in measured:
        action, score, names = judge.judge(mail.raw, mail.recipient)
        before, _score, _names = plain.judge(mail.raw, mail.recipient)
        ham_actions[action] += 1
        plain_actions[before] += 1
        fired.update(n for n in names if not n.startswith("BAYES_"))
        held_now, held_before = action in ("quarantine", "reject"), before in ("quarantine",
                                                                               "reject")
        if held_now != held_before or (action != before and "add_header" in (action, before)):
            moved.append({"file": Path(mail.path).name, "before": before, "after": action,
                          "score": round(score, 2),
                          "symbols": [n for n in names if n in IDENTITY_SYMBOLS]})
    n = len(measured)
    held = ham_actions["quarantine"] + ham_actions["reject"]
    held_plain = plain_actions["quarantine"] + plain_actions["reject"]
    low, high = wilson(held, n)
    results["ham"] = {"n": n, "actions": dict(ham_actions), "without_identity": dict(
        plain_actions), "held": held, "held_rate": held / n if n else 0.0,
        "held_interval": [low, high], "held_without_identity": held_plain,
        "symbols": dict(fired), "changed_by_identity": moved}
    print(f"\nuntouched ham ({n}), default rules with the identity check:")
    print(f"  actions: {_counts(ham_actions)}; without the identity check: "
          f"{_counts(plain_actions)}")
    print(f"  quarantined or rejected: {held} ({held / n:.2%}, 95% interval {low:.2%}-"
          f"{high:.2%}); without the identity check {held_plain} ({held_plain / n:.2%})")
    baseline = card_baseline()
    results["ham"]["nested_cv_baseline"] = baseline
    print(f"  today's default rules out of fold, without the identity check (nested CV on the "
          f"training set, {MODEL_CARD.relative_to(PROJECT_ROOT)}): "
          f"{baseline or 'not found'}")
    print("  identity symbols on ham: " + (", ".join(
        f"{k} {v} ({v / n:.1%})" for k, v in sorted(fired.items(), key=lambda i: -i[1])
        if k in IDENTITY_SYMBOLS) or "none"))
    for change in moved:
        print(f"    {change['file']}: {change['before']} -> {change['after']} "
              f"({change['score']}; {', '.join(change['symbols'])})")
    wanted = [t for t in (args.techniques.split(",") if args.techniques else TECHNIQUES)]
    print(f"\nattacks ({args.n} per technique; carriers: the measured ham):")
    print(f"  {'technique':<34} {'n':>4} {'held':>7} {'junk':>6}  symbols (share of attacks)")
    total, caught = 0, 0
    for name in wanted:
        rng = random.Random(f"{SEEDS[args.on]}-{name}")
        carriers = measured[:]
        rng.shuffle(carriers)
        actions: collections.Counter[str] = collections.Counter()
        symbols: collections.Counter[str] = collections.Counter()
        made = 0
        for carrier in carriers:
            if made >= args.n:
                break
            attack = TECHNIQUES[name](carrier, rng, world)
            if attack is None or attack.raw is None:
                continue
            made += 1
            action, _score, names = judge.judge(attack.raw, carrier.recipient, attack)
            actions[action] += 1
            symbols.update(n for n in names if n in IDENTITY_SYMBOLS)
        hit = actions["quarantine"] + actions["reject"]
        total += made
        caught += hit
        shown = ", ".join(f"{k} {v / made:.0%}" for k, v in symbols.most_common(4)) \
            if made else ""
        print(f"  {name:<34} {made:>4} {hit / made if made else 0:>7.1%} "
              f"{actions['add_header'] / made if made else 0:>6.1%}  {shown}")
        results["techniques"][name] = {"n": made, "actions": dict(actions),
                                       "held_rate": hit / made if made else 0.0,
                                       "symbols": dict(symbols)}
    low, high = wilson(caught, total)
    results["detection"] = {"n": total, "held": caught, "rate": caught / total if total else 0,
                            "interval": [low, high]}
    print(f"  {'all':<34} {total:>4} {caught / total if total else 0:>7.1%}  (95% interval "
          f"{low:.1%}-{high:.1%})")
    return results


IDENTITY_SYMBOLS = ("FROM_NAME_IMPERSONATION", "FROM_LOOKALIKE_DOMAIN", "BRAND_IMPERSONATION",
                    "FROM_FREEMAIL_ORG_NAME", "REPLY_TO_DIVERGES", "REPLY_TO_FREEMAIL",
                    "FIRST_CONTACT", "KNOWN_CORRESPONDENT", "IMPERSONATION_PAYMENT_CHANGE",
                    "FIRST_CONTACT_REPLY_ELSEWHERE", "PAYMENT_CHANGE_WORDS", "IDENTITY_ERROR")


MODEL_CARD = PROJECT_ROOT / "models" / "MODEL_CARD.md"


def card_baseline() -> str | None:
    """The issue's baseline, the share of ham the default rules hold out of
    fold ("0.13% (0.00-0.33)"): the model card's ham row, the column
    tests/bench/classifier.py --rules-cv wrote (its nested CV takes minutes
    of training; the figure is the shipped model's, read back)."""
    try:
        lines = MODEL_CARD.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    header = next((line for line in lines if line.startswith("| mail |")), "")
    columns = [c.strip() for c in header.strip("|").split("|")]
    wanted = next((i for i, c in enumerate(columns) if "out of fold" in c), None)
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if wanted is not None and cells[0] == "ham (all) (held)" and len(cells) > wanted:
            return cells[wanted]
    return None


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {counter.get(k, 0)}" for k in ("accept", "add_header", "quarantine",
                                                            "reject"))


if __name__ == "__main__":
    sys.exit(main())
