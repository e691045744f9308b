"""DKIM (RFC 6376, dkimpy): every signature, one result each.

``dkim.verify()`` answers a bare False for a bad signature, a missing key, a
SERVFAIL and a dead server alike (and raises on a body-hash mismatch), so
this check walks dkimpy's steps itself and tells them apart:

- pass: the signature verifies;
- fail: it does not (signature or body hash mismatch);
- policy: it verifies but uses rsa-sha1, which RFC 8301 forbids accepting,
  or its l= leaves part of the body unsigned (below);
- neutral: the signature header is malformed;
- permerror: no key, a revoked or malformed key, a key too short;
- temperror: the key could not be fetched now.

A signature whose ``l=`` covers less than the body vouches for none of it:
whatever follows the signed part (a mailing list footer, or an attacker's
phishing line appended to a message the domain really signed) would ride
on the signature. RFC 6376 8.2 lets verifiers ignore ``l=`` or drop what
follows it; like Stalwart's default and go-msgauth (which dropped ``l=``),
such a signature is ``policy`` (RFC 8601: signed, but not acceptable
here), never ``pass``, so DMARC does not count it. Dropping the tail instead
would change the message the recipient reads, and the rules and the
classifier would still be scoring text the recipient does not see.
ed25519-sha256 (RFC 8463) works through PyNaCl.

Signatures are written by whoever sends the message, so the work is bounded:
at most ``[auth] max_dkim_signatures`` are verified, those whose ``d=`` is
aligned with an author domain first (the ones DMARC needs; rspamd and
OpenDMARC prefer the author's signature too), a signature field over
``MAX_SIGNATURE_HEADER_BYTES`` or ``MAX_SIGNATURE_HEADER_LINES`` is refused
before dkimpy's quadratic b= regex sees it, dkimpy's quadratic relaxed body
canonicalization is replaced by :func:`linear_relaxed_body` when the check
is built, and nothing in a message makes the check raise.
"""

from __future__ import annotations

import binascii
import logging
import re
import threading

import dkim
import dkim.canonicalization
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dns import (
    DnsTempError,
    InvalidName,
    NoRecords,
    NxDomain,
    Resolver,
    dns_name,
    shared_resolver,
)
from gateway.facts import DkimFacts, SignatureResult
from gateway.mail import DomainError, ascii_domain, registrable_domain
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.symbols import Report, Symbol

log = logging.getLogger("gateway.checks.dkim")

MIN_KEY_BITS = 1024
# dkimpy strips b= from a signature header with a regular expression that
# backtracks quadratically on folded white space (16,000 folds: 7.7 s). No
# real signature comes near these; longer ones are refused before dkimpy.
MAX_SIGNATURE_HEADER_BYTES = 4096
MAX_SIGNATURE_HEADER_LINES = 128
REVOKED = re.compile(r"(?:^|;)\s*p\s*=\s*(?:;|$)")
SYMBOL_OF = {
    "pass": "DKIM_PASS", "fail": "DKIM_FAIL", "policy": "DKIM_POLICY",
    "neutral": "DKIM_NEUTRAL", "permerror": "DKIM_PERMERROR", "temperror": "DKIM_TEMPERROR",
}


def signature_header_problem(value: bytes) -> str | None:
    """Why a DKIM-Signature or ARC-* field value is refused, or None."""
    if len(value) > MAX_SIGNATURE_HEADER_BYTES:
        return (f"signature header too long ({len(value)} bytes, "
                f"at most {MAX_SIGNATURE_HEADER_BYTES})")
    lines = value.count(b"\n") + 1
    if lines > MAX_SIGNATURE_HEADER_LINES:
        return f"signature header too long ({lines} lines, at most {MAX_SIGNATURE_HEADER_LINES})"
    return None


def select_key_record(records: list[str], name: str) -> tuple[str | None, str]:
    """The key record at ``name`` and "", or None and why there is none.

    The strings of one TXT record are already joined with nothing between
    them (gateway.dns); several records are not joined: RFC 6376 3.6.2.2
    leaves their meaning undefined, so no key is taken from them.
    """
    candidates = list(dict.fromkeys(r for r in records if r.strip()))
    if not candidates:
        return None, f"no key at {name}"
    if len(candidates) > 1:
        return None, (f"{len(candidates)} TXT records at {name}: a key must be one record "
                      "(RFC 6376 3.6.2.2)")
    return candidates[0], ""


# -- dkimpy's relaxed body canonicalization, in linear time ---------------------------

_WSP_RUN = re.compile(rb"[\t ]+")
_install_lock = threading.Lock()


def linear_relaxed_body(body: bytes) -> bytes:
    """dkimpy's ``Relaxed.canonicalize_body``, byte for byte, in linear time.

    dkimpy strips trailing white space with ``re.sub(b"[\\t ]+\\r\\n", ...)``,
    which backtracks quadratically on a long run of spaces that does not end
    a line (100 KB of spaces: 7 s). Compressing every run to one space first
    leaves at most one space before a line end, which a plain replace removes.
    """
    body = _WSP_RUN.sub(b" ", body).replace(b" \r\n", b"\r\n")
    canonical: bytes = dkim.canonicalization.correct_empty_body(
        dkim.canonicalization.strip_trailing_lines(body))
    return canonical


def install_linear_relaxed_body() -> None:
    """Make dkimpy (DKIM and ARC alike) use :func:`linear_relaxed_body`.
    Called when the dkim or arc check is built; idempotent."""
    relaxed = dkim.canonicalization.Relaxed
    with _install_lock:
        if relaxed.__dict__["canonicalize_body"].__func__ is not linear_relaxed_body:
            relaxed.canonicalize_body = staticmethod(linear_relaxed_body)


class DkimCheck(Check):
    name = "dkim"
    io_bound = True
    symbols = {
        "DKIM_PASS": "a DKIM signature verifies",
        "DKIM_FAIL": "a DKIM signature does not verify (message changed or forged)",
        "DKIM_POLICY": "a DKIM signature verifies but is not accepted: rsa-sha1 (RFC 8301), "
                       "or an l= that leaves part of the body unsigned",
        "DKIM_NEUTRAL": "a DKIM signature is malformed",
        "DKIM_PERMERROR": "a DKIM key is missing, revoked, malformed or too short",
        "DKIM_TEMPERROR": "a DKIM key could not be fetched now (DNS failure)",
        "DKIM_NONE": "the message is not DKIM-signed",
        "DKIM_PARTIAL_BODY": "a DKIM signature covers only part of the body (l=)",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.resolver = shared_resolver(config)
        self.max_signatures = config.auth.max_dkim_signatures
        install_linear_relaxed_body()

    def run(self, message: Message, context: CheckContext) -> Report:
        if message.header("DKIM-Signature") is None:  # spare dkimpy its own parse
            return Report(symbols=(self.symbol("DKIM_NONE"),), facts=DkimFacts().to_json())
        try:
            results, skipped = self._verify_all(message)
        except Exception as exc:  # message content must never make the check fail
            log.warning("DKIM: cannot read the signatures of a message: %r", exc)
            results, skipped = [SignatureResult(
                "", "", "", "neutral", f"cannot read the signatures: {type(exc).__name__}")], []
        unverified = len(skipped)
        symbols: list[Symbol] = []
        if not results:
            symbols.append(self.symbol("DKIM_NONE"))
        for outcome in ("pass", "fail", "policy", "neutral", "permerror", "temperror"):
            matching = [r for r in results if r.result == outcome]
            if matching:
                symbols.append(self.symbol(SYMBOL_OF[outcome],
                                           "; ".join(r.describe() for r in matching)))
        partial = [r for r in results if r.partial_body]
        if partial:
            symbols.append(self.symbol("DKIM_PARTIAL_BODY",
                                       "; ".join(f"{r.domain} s={r.selector}" for r in partial)))
        if unverified:
            first = symbols[0]
            note = (f"{unverified} more signature(s) not verified "
                    f"([auth] max_dkim_signatures = {self.max_signatures})")
            symbols[0] = self.symbol(first.name, f"{first.evidence}; {note}".lstrip("; "))
        facts = DkimFacts(results, unverified, tuple(skipped) if skipped else None)
        return Report(symbols=tuple(symbols), facts=facts.to_json())

    def _verify_all(self, message: Message) -> tuple[list[SignatureResult], list[str]]:
        """Results in header order, and the d= of the signatures not verified."""
        signer = dkim.DKIM(message.raw.bytes(), minkey=MIN_KEY_BITS)
        values = [value for name, value in signer.headers if name.lower() == b"dkim-signature"]
        authors = {organizational(domain) for domain in message.authors.domains}
        domains = [signing_domain(value) for value in values]
        # The author's own signatures first: a sender cannot push the one
        # DMARC needs past the cap with signatures of its own above it.
        order = sorted(range(len(values)), key=lambda i: organizational(domains[i]) not in authors)
        chosen = sorted(order[:self.max_signatures])
        results = []
        for index in chosen:
            problem = signature_header_problem(values[index])
            if problem:
                results.append(SignatureResult("", "", "", "neutral", problem))
            else:
                results.append(verify_signature(signer, index, self.resolver))
        return results, [domains[i] for i in sorted(order[self.max_signatures:])]


_D_TAG = re.compile(rb"(?:^|;)[ \t\r\n]*d[ \t\r\n]*=[ \t\r\n]*([^;]*)")


def signing_domain(value: bytes) -> str:
    """The d= of a DKIM-Signature field value, lower case ("" if none), read
    before dkimpy parses it, to choose which signatures to verify."""
    if signature_header_problem(value):
        return ""
    match = _D_TAG.search(value)
    if match is None:
        return ""
    return re.sub(rb"[ \t\r\n]", b"", match.group(1)).decode("utf-8", "replace").lower()


def organizational(domain: str) -> str:
    """The organizational domain (relaxed alignment, RFC 7489 3.2) in
    A-labels, or "" for what is not a domain name."""
    try:
        return registrable_domain(ascii_domain(domain))
    except DomainError:
        return ""


def verify_signature(signer: dkim.DKIM, index: int, resolver: Resolver) -> SignatureResult:
    """One signature's result; never raises on what the message says."""
    try:
        return _verify_signature(signer, index, resolver)
    except Exception as exc:  # dkimpy on input nobody foresaw: the signature, not the check
        log.warning("DKIM: signature %d could not be verified: %r", index, exc)
        return SignatureResult("", "", "", "neutral",
                               f"cannot verify: {type(exc).__name__}: {str(exc)[:80]}")


def _verify_signature(signer: dkim.DKIM, index: int, resolver: Resolver) -> SignatureResult:
    try:
        prepared = signer.verify_headerprep(index)
    except dkim.DKIMException as exc:
        return SignatureResult("", "", "", "neutral", f"malformed signature: {exc}")
    if not prepared:
        return SignatureResult("", "", "", "neutral", "signature not found")
    sig, include_headers, sig_headers = prepared
    selector = sig[b"s"].decode("utf-8", "replace")
    algorithm = sig[b"a"].decode("ascii", "replace").lower()
    header_b = re.sub(rb"\s+", b"", sig.get(b"b", b""))[:12].decode("ascii", "replace")
    try:
        # RFC 8616: d= may be written in U-labels; the key is looked up in A-labels.
        domain = dns_name(sig[b"d"].decode("utf-8"))
    except (UnicodeDecodeError, InvalidName):
        written = sig[b"d"].decode("utf-8", "replace")
        return SignatureResult(written.lower(), selector, algorithm, "neutral",
                               f"malformed signature: d={written!r} is not a domain name",
                               header_b=header_b)

    def result(outcome: str, reason: str = "", partial: bool = False) -> SignatureResult:
        return SignatureResult(domain, selector, algorithm, outcome, reason, partial, header_b)

    name = f"{selector}._domainkey.{domain}"
    try:
        record, missing = select_key_record(resolver.txt(name), name)
    except DnsTempError as exc:
        return result("temperror", f"key lookup failed: {exc}")
    except (NxDomain, NoRecords):
        return result("permerror", f"no key at {name}")
    if record is None:
        return result("permerror", missing)
    if REVOKED.search(record):
        return result("permerror", f"key revoked at {name} (empty p=)")
    try:
        signer.pk, signer.keysize, signer.ktag, signer.seqtlsrpt = dkim.evaluate_pk(
            name.encode(), record.encode())
    except (dkim.DKIMException, ValueError, TypeError) as exc:
        return result("permerror", f"bad key: {exc}")
    signed, body = _body_lengths(signer, sig)
    partial = signed < body
    try:
        verified = signer.verify_sig_process(sig, include_headers, sig_headers[index], None)
    except dkim.ValidationError as exc:
        return result("fail", str(exc).split(" (")[0], partial)
    except dkim.KeyFormatError as exc:
        return result("permerror", str(exc), partial)
    except dkim.DKIMException as exc:
        return result("neutral", str(exc), partial)
    except (ValueError, TypeError, binascii.Error) as exc:
        return result("neutral", f"cannot verify: {exc}", partial)
    if not verified:
        return result("fail", "signature does not verify", partial)
    if algorithm == "rsa-sha1":
        return result("policy", "rsa-sha1 is not accepted (RFC 8301)", partial)
    if partial:
        return result("policy", f"l={signed} signs {signed} of the body's {body} bytes: "
                      "what follows is not signed", partial)
    return result("pass", "", partial)


def _body_lengths(signer: dkim.DKIM, sig: dict[bytes, bytes]) -> tuple[int, int]:
    """(bytes l= signs, bytes of the canonicalized body); equal without l=."""
    if b"l" not in sig:
        return 0, 0
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        length = int(sig[b"l"])
    except (InvalidCanonicalizationPolicyError, ValueError):
        return 0, 0
    return length, len(policy.canonicalize_body(signer.body))
