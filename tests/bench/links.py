"""Link tricks spliced into real ham: detection per technique, and the
default rules' false positives on the untouched ham.

    .venv/bin/python tests/bench/links.py                  # the held-back ham: the figures
    .venv/bin/python tests/bench/links.py --part training  # where the scores were chosen
    .venv/bin/python tests/bench/links.py -n 20            # a quick look (20 carriers)

Carriers are the SpamAssassin corpus's ham, split as the shipped model was
(tests/bench/classifier.py's corpus(): seed 42, 80% training, 20% held
back). The links scores in rules/default.toml were chosen on the training
part; the figures to quote are the held-back part's, which nothing was
tuned on (and which the shipped model did not see either).

Each technique of :data:`TECHNIQUES` splices one attack into each carrier:
the carrier's own header (From, Subject, Date, Received...) and text, with
the attack in a new HTML alternative, a link in the text, or a picture,
and only neutral words around it (so the classifier is not handed the
phishing vocabulary a real phish would add). Verdicts come from the
default rules with the checks that need no network (limits, headers,
size, lists, rules, attachments, bayes, links); the same without links is
the "before" column.

Printed: per technique, the share of cases quarantined or rejected (with a
95% Wilson interval) before and with the links check, what the links
symbols must add for 95% of the cases to reach the quarantine threshold
(the other checks' scores vary by carrier), and how often each links symbol
fired; on the untouched ham, per folder, the share held before and with the
links check, and each links symbol's count.

The technique registry has the shape of tests/bench/identity.py's (a name,
what it does, a function (carrier, random) -> message bytes), so that its
techniques can move there.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.checks.links import LinksCheck  # noqa: E402
from gateway.checks.view import view_of  # noqa: E402
from gateway.classifier.corpus import Progress  # noqa: E402
from gateway.config import Config, PipelineSection  # noqa: E402
from gateway.evaluator import LocalEvaluator  # noqa: E402
from gateway.mail import parse_mailboxes, registrable_domain  # noqa: E402
from gateway.message import Message  # noqa: E402
from gateway.ruleset import load_rules  # noqa: E402

CHECKS = ["limits", "headers", "size", "lists", "rules", "attachments", "bayes"]
LINKS_SYMBOLS = tuple(LinksCheck.catalog())
HELD = ("quarantine", "reject")
# The most impersonated brands' sign-in domains (what a lying link shows).
BRAND_DOMAINS = ("paypal.com", "microsoft.com", "office.com", "apple.com", "amazon.com",
                 "dhl.com", "chase.com", "wellsfargo.com", "docusign.com", "netflix.com",
                 "linkedin.com", "google.com", "dropbox.com", "adobe.com", "fedex.com",
                 "ups.com", "bankofamerica.com", "americanexpress.com", "facebook.com",
                 "instagram.com")
TLDS = ("com", "net", "org", "info", "xyz", "top", "online", "site", "click", "ru", "cn",
        "io", "co", "biz", "shop")
NEUTRAL = ("Details:", "See", "Here:", "Link:", "More at", "")
PATHS = ("signin", "login", "account/verify", "secure/update", "auth", "session/renew",
         "documents/view", "invoice")
ANCHOR_WORDS = ("here", "this page", "the document", "open", "view", "link")


@dataclass
class Carrier:
    name: str  # folder/file
    header: bytes  # the carrier's header fields, its Content-* and MIME-Version taken out
    text: str  # what a reader sees of its body
    sender_domain: str  # registrable domain of its From address


@dataclass(frozen=True)
class Technique:
    name: str
    what: str
    family: str  # lying_link, lookalike, userinfo, qr
    splice: Callable[[Carrier, random.Random], bytes]


# -- building blocks -------------------------------------------------------------------------


def attacker_domain(rng: random.Random) -> str:
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    label = "".join(rng.choice(consonants) + rng.choice(vowels)
                    for _ in range(rng.randint(3, 6)))
    if rng.random() < 0.3:
        label += "-" + rng.choice(("online", "portal", "web", "cloud", "services"))
    return f"{label}.{rng.choice(TLDS)}"


def attacker_url(rng: random.Random, host: str | None = None) -> str:
    host = host or attacker_domain(rng)
    if rng.random() < 0.3:  # a compromised site's folder
        return (f"https://www.{host}/wp-content/{rng.choice(PATHS)}/index.php"
                f"?id={rng.randint(1, 99999)}")
    return f"https://{host}/{rng.choice(PATHS)}?session={rng.getrandbits(48):x}"


def shown_forms(domain: str, rng: random.Random) -> str:
    """How a lying link's text shows a domain."""
    path = rng.choice(PATHS)
    return rng.choice((f"https://www.{domain}/{path}", f"https://{domain}/{path}",
                       f"www.{domain}", f"{domain}/{path}", f"http://www.{domain}/"))


def lookalike(domain: str, method: str, rng: random.Random) -> str:
    """A host imitating ``domain`` by ``method``."""
    label, _, suffix = domain.partition(".")
    if method == "digit":
        swaps = [(i, {"l": "1", "o": "0", "i": "1", "e": "3", "a": "4", "s": "5"}[c])
                 for i, c in enumerate(label) if c in "loieas"]
        if swaps:
            i, digit = rng.choice(swaps)
            return f"{label[:i]}{digit}{label[i + 1:]}.{suffix}"
        return f"{label}1.{suffix}"
    if method == "typo":
        i = rng.randrange(len(label))
        kind = rng.choice(("double", "drop", "swap"))
        if kind == "double":
            changed = label[:i] + label[i] + label[i:]
        elif kind == "drop" and len(label) > 4:
            changed = label[:i] + label[i + 1:]
        else:
            i = min(i, len(label) - 2)
            changed = label[:i] + label[i + 1] + label[i] + label[i + 2:]
        return f"{changed}.{suffix}" if changed != label else f"{label}{label[-1]}.{suffix}"
    if method == "hyphen":
        word = rng.choice(("secure", "login", "alerts", "verify", "support", "account"))
        return rng.choice((f"{label}-{word}.{suffix}", f"{word}-{label}.{suffix}",
                           f"{label}-{word}.{rng.choice(TLDS)}"))
    if method == "tld":
        return f"{label}.{rng.choice([t for t in TLDS if t != suffix])}"
    if method == "idn":
        homoglyphs = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440",
                      "c": "\u0441", "x": "\u0445", "y": "\u0443", "i": "\u0456"}
        spots = [i for i, c in enumerate(label) if c in homoglyphs]
        i = rng.choice(spots) if spots else 0
        changed = label[:i] + homoglyphs.get(label[i], "\u0430") + label[i + 1:]
        return _idna(f"{changed}.{suffix}")
    if method == "subdomain":
        return f"{domain}.{attacker_domain(rng)}"
    raise ValueError(method)


def _idna(host: str) -> str:
    from gateway.urls import parse_link

    link = parse_link(f"https://{host}/")
    return link.host if link is not None else host


def qr_picture(url: str, kind: str = "PNG") -> bytes:
    import segno
    from PIL import Image

    out = io.BytesIO()
    segno.make(url, error="m").save(out, kind="png", scale=6, border=4)
    if kind == "PNG":
        return out.getvalue()
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(out.getvalue())).convert("RGB").save(jpeg, "JPEG", quality=80)
    return jpeg.getvalue()


def with_html(carrier: Carrier, line_text: str, line_html: str) -> bytes:
    """The carrier with a line on top of its text, as text and HTML."""
    body = MIMEMultipart("alternative")
    body.attach(MIMEText(f"{line_text}\n\n{carrier.text}", "plain", "utf-8"))
    body.attach(MIMEText(f"<html><body><p>{line_html}</p><pre>{html.escape(carrier.text)}"
                         "</pre></body></html>", "html", "utf-8"))
    return assemble(carrier, body)


def assemble(carrier: Carrier, body: MIMEMultipart | MIMEText) -> bytes:
    """The carrier's header over a new body."""
    whole = body.as_bytes()
    head, _, content = whole.partition(b"\n\n")
    mime = b"\n".join(line for line in head.split(b"\n")
                      if not line.lower().startswith(b"mime-version"))
    return carrier.header + b"MIME-Version: 1.0\n" + mime + b"\n\n" + content


# -- the techniques ----------------------------------------------------------------------------


def lying_anchor(shown_domain: Callable[[Carrier, random.Random], str]
                 ) -> Callable[[Carrier, random.Random], bytes]:
    def splice(carrier: Carrier, rng: random.Random) -> bytes:
        shown = shown_forms(shown_domain(carrier, rng), rng)
        target = attacker_url(rng)
        intro = rng.choice(NEUTRAL)
        return with_html(carrier, f"{intro} {shown}".strip(),
                         f'{intro} <a href="{html.escape(target)}">{html.escape(shown)}</a>')
    return splice


def lookalike_link(method: str) -> Callable[[Carrier, random.Random], bytes]:
    def splice(carrier: Carrier, rng: random.Random) -> bytes:
        host = lookalike(rng.choice(BRAND_DOMAINS), method, rng)
        target = attacker_url(rng, host)
        intro, words = rng.choice(NEUTRAL), rng.choice(ANCHOR_WORDS)
        return with_html(carrier, f"{intro} {target}".strip(),
                         f'{intro} <a href="{html.escape(target)}">{words}</a>')
    return splice


def brand_anchor(carrier: Carrier, rng: random.Random) -> bytes:
    """A link whose words or logo speak as a brand, to an unknown site."""
    from gateway.lookalike import DEFAULT_BRANDS, load_brands

    brand = rng.choice(load_brands([DEFAULT_BRANDS]).brands)
    name = brand.title
    target = html.escape(attacker_url(rng))
    if rng.random() < 0.5:
        words = rng.choice((f"Sign in to {name}", f"Log in to your {name} account",
                            f"Verify your {name} account", f"{name} login",
                            f"Reset your {name} password"))
        anchor = f'<a href="{target}">{html.escape(words)}</a>'
    else:
        words = name
        anchor = f'<a href="{target}"><img src="https://cdn.example.net/logo.png" ' \
                 f'alt="{html.escape(name)}"></a>'
    return with_html(carrier, words, f"{rng.choice(NEUTRAL)} {anchor}")


def userinfo_trick(carrier: Carrier, rng: random.Random) -> bytes:
    brand = rng.choice(BRAND_DOMAINS)
    url = f"https://{rng.choice(('www.', ''))}{brand}@{attacker_domain(rng)}/{rng.choice(PATHS)}"
    intro = rng.choice(NEUTRAL)
    return with_html(carrier, f"{intro} {url}".strip(),
                     f'{intro} <a href="{html.escape(url)}">{html.escape(url)}</a>')


def qr_code(inline: bool, host: Callable[[random.Random], str]
            ) -> Callable[[Carrier, random.Random], bytes]:
    def splice(carrier: Carrier, rng: random.Random) -> bytes:
        url = attacker_url(rng, host(rng))
        picture = qr_picture(url, "JPEG" if inline else "PNG")
        name = rng.choice(("scan.png", "document.png", "invoice.png", "code.png", "image001.png"))
        if inline:
            body = MIMEMultipart("related")
            body.attach(MIMEText(f'<html><body><p><img src="cid:code1" alt=""></p>'
                                 f"<pre>{html.escape(carrier.text)}</pre></body></html>",
                                 "html", "utf-8"))
            image = MIMEImage(picture, "jpeg")
            image.add_header("Content-ID", "<code1>")
            image.add_header("Content-Disposition", "inline", filename=name.replace("png", "jpg"))
            body.attach(image)
            return assemble(carrier, body)
        mixed = MIMEMultipart("mixed")
        mixed.attach(MIMEText(carrier.text, "plain", "utf-8"))
        image = MIMEImage(picture, "png")
        image.add_header("Content-Disposition", "attachment", filename=name)
        mixed.attach(image)
        return assemble(carrier, mixed)
    return splice


TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    Technique("lying_anchor_brand", "a link whose text shows a brand's URL goes elsewhere",
              "lying_link", lying_anchor(lambda c, rng: rng.choice(BRAND_DOMAINS))),
    Technique("lying_anchor_sender", "a link whose text shows the sender's own domain goes "
              "elsewhere", "lying_link", lying_anchor(lambda c, rng: c.sender_domain
                                                      or rng.choice(BRAND_DOMAINS))),
    Technique("brand_anchor", "a link whose words or logo speak as a brand goes elsewhere "
              "(\"Sign in to Microsoft 365\", a PayPal logo)", "lying_link", brand_anchor),
    Technique("lookalike_digit", "a link to a brand's name with a digit for a letter "
              "(paypa1.com)", "lookalike", lookalike_link("digit")),
    Technique("lookalike_typo", "a link to a brand's name one letter off (paypall.com)",
              "lookalike", lookalike_link("typo")),
    Technique("lookalike_hyphen", "a link to a brand's name with a word (paypal-secure.com)",
              "lookalike", lookalike_link("hyphen")),
    Technique("lookalike_tld", "a link to a brand's name on another TLD (paypal.top)",
              "lookalike", lookalike_link("tld")),
    Technique("lookalike_idn", "a link to a brand's name with a Cyrillic letter (p\u0430ypal.com)",
              "lookalike", lookalike_link("idn")),
    Technique("lookalike_subdomain", "a link to a brand's domain as a subdomain of another "
              "(paypal.com.evil.top)", "lookalike", lookalike_link("subdomain")),
    Technique("userinfo_trick", "a brand's domain as the user name of a link "
              "(https://paypal.com@evil.top/)", "userinfo", userinfo_trick),
    Technique("qr_attached", "a PNG attachment with a QR code to an unknown site", "qr",
              qr_code(False, attacker_domain)),
    Technique("qr_inline_lookalike", "an inline JPEG with a QR code to a brand lookalike", "qr",
              qr_code(True, lambda rng: lookalike(rng.choice(BRAND_DOMAINS),
                                                  rng.choice(("digit", "hyphen", "typo")), rng))),
)}


# -- carriers and verdicts ---------------------------------------------------------------------


def carrier_of(name: str, raw: bytes) -> Carrier:
    cut = min((i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0), default=len(raw))
    lines = raw[:cut].replace(b"\r\n", b"\n").split(b"\n")
    kept: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        field_name = line.split(b":", 1)[0].strip().lower()
        dropping = field_name.startswith(b"content-") or field_name == b"mime-version" \
            or line.startswith(b"From ")
        if not dropping:
            kept.append(line)
    message = Message.from_bytes(raw)
    texts = view_of(message).texts
    text = texts[0].text if texts else ""
    senders = [m for value in message.headers("From") for m in parse_mailboxes(value).mailboxes]
    domain = senders[0].domain if senders else ""
    return Carrier(name, b"\n".join(kept) + b"\n", text[:30000],
                   registrable_domain(domain) if domain else "")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(k: int, n: int) -> str:
    low, high = wilson(k, n)
    return f"{k / n:6.1%} ({low:.1%}-{high:.1%})" if n else "     -"


@dataclass
class Tally:
    n: int = 0
    held_before: int = 0
    held: int = 0
    symbols: Counter[str] = field(default_factory=Counter)
    others: list[float] = field(default_factory=list)  # score without the links symbols

    def add(self, before: str | None, after: Any) -> None:
        self.n += 1
        self.held_before += int(before in HELD)
        self.held += int(after.action in HELD)
        self.symbols.update({s.name for s in after.symbols if s.name in LINKS_SYMBOLS})
        self.others.append(after.score - sum(s.score for s in after.symbols
                                             if s.name in LINKS_SYMBOLS))

    def needed(self, quarantine: float, share: float) -> float:
        """What the links symbols must add for ``share`` of the cases to
        reach the quarantine threshold (the scores are chosen from this, on
        the training part)."""
        ordered = sorted(quarantine - other for other in self.others)
        return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)] \
            if ordered else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"n": self.n, "held_before": self.held_before, "held": self.held,
                "held_rate": self.held / self.n if self.n else 0.0,
                "held_interval": wilson(self.held, self.n), "symbols": dict(self.symbols)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("held", "training"), default="held",
                        help="carriers from the held-back 20%% (the figures) or the training "
                             "80%% (where scores are chosen)")
    parser.add_argument("-n", type=int, default=0, help="at most this many carriers (0 = all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the attacks' choices")
    parser.add_argument("--technique", action="append", choices=sorted(TECHNIQUES),
                        help="only these techniques (repeatable)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--corpus", type=Path, help="the SpamAssassin corpus folder (default: "
                        "shared/corpora/spamassassin above the checkout, tests/bench/corpus.py)")
    args = parser.parse_args()

    sys.path.insert(0, str(PROJECT_ROOT / "tests" / "bench"))
    import classifier  # the shipped model's own split
    from classifier import corpus, folder

    if args.corpus:  # another copy than the one above the checkout
        classifier.CORPUS = args.corpus
        classifier.HAM = [args.corpus / f for f in ("easy_ham", "easy_ham_2", "hard_ham")]
        classifier.SPAM = [args.corpus / f for f in ("spam", "spam_2")]

    data, training, held = corpus()
    indices = [i for i in (held if args.part == "held" else training) if data.labels[i] == 0]
    if args.n:
        indices = random.Random(args.seed).sample(indices, min(args.n, len(indices)))
    techniques = [TECHNIQUES[name] for name in args.technique or TECHNIQUES]

    before = LocalEvaluator(Config(pipeline=PipelineSection(checks=CHECKS, workers=0)))
    after = LocalEvaluator(Config(pipeline=PipelineSection(checks=[*CHECKS, "links"],
                                                           workers=0)))
    ham: dict[str, Tally] = {}
    attacks: dict[str, Tally] = {t.name: Tally() for t in techniques}
    rng = random.Random(args.seed)
    progress = Progress(f"ham and {len(techniques)} techniques", len(indices))
    for index in indices:
        path = Path(data.sources[index])
        raw = path.read_bytes()
        where = folder(data, index)
        verdict = after.evaluate_message(Message.from_bytes(raw))
        ham.setdefault(where, Tally()).add(before.evaluate_message(Message.from_bytes(raw)).action,
                                           verdict)
        carrier = carrier_of(f"{where}/{path.name}", raw)
        for technique in techniques:
            spliced = technique.splice(carrier, rng)
            attacks[technique.name].add(
                before.evaluate_message(Message.from_bytes(spliced)).action,
                after.evaluate_message(Message.from_bytes(spliced)))
        progress.step()
    progress.done()
    before.close()
    after.close()

    print(f"\n{args.part} part: {len(indices)} ham carriers; default rules, checks "
          f"{', '.join(CHECKS)} (+ links)")
    quarantine = load_rules(Config().policy.rules).quarantine
    print(f"\n{'technique':<22} {'n':>5}  {'held before':<22} {'held with links':<22} "
          "needs (95%)  links symbols (share of cases)")
    for technique in techniques:
        tally = attacks[technique.name]
        shares = ", ".join(f"{name} {count / tally.n:.1%}"
                           for name, count in tally.symbols.most_common())
        print(f"{technique.name:<22} {tally.n:>5}  {rate(tally.held_before, tally.n):<22} "
              f"{rate(tally.held, tally.n):<22} {tally.needed(quarantine, 0.95):>11.1f}  {shares}")
    total = Tally(n=sum(t.n for t in attacks.values()),
                  held_before=sum(t.held_before for t in attacks.values()),
                  held=sum(t.held for t in attacks.values()))
    print(f"{'all techniques':<22} {total.n:>5}  {rate(total.held_before, total.n):<22} "
          f"{rate(total.held, total.n):<22}")

    print(f"\n{'untouched ham':<22} {'n':>5}  {'held before':<22} {'held with links':<22} "
          "links symbols (messages)")
    whole = Tally()
    for name in sorted(ham):
        tally = ham[name]
        whole.n += tally.n
        whole.held_before += tally.held_before
        whole.held += tally.held
        whole.symbols.update(tally.symbols)
        print(f"{name:<22} {tally.n:>5}  {rate(tally.held_before, tally.n):<22} "
              f"{rate(tally.held, tally.n):<22} {dict(tally.symbols)}")
    print(f"{'ham (all)':<22} {whole.n:>5}  {rate(whole.held_before, whole.n):<22} "
          f"{rate(whole.held, whole.n):<22} {dict(whole.symbols)}")
    if args.json:
        args.json.write_text(json.dumps({
            "part": args.part, "carriers": len(indices), "seed": args.seed,
            "techniques": {name: t.as_json() for name, t in attacks.items()},
            "ham": {name: t.as_json() for name, t in ham.items()},
            "ham_all": whole.as_json()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
