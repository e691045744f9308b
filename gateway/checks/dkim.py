"""DKIM (RFC 6376, dkimpy): every signature, one result each.

``dkim.verify()`` answers a bare False for a bad signature, a missing key, a
SERVFAIL and a dead server alike (and raises on a body-hash mismatch), so
this check walks dkimpy's steps itself and tells them apart:

- pass: the signature verifies;
- fail: it does not (signature or body hash mismatch);
- policy: it verifies but uses rsa-sha1, which RFC 8301 forbids accepting;
- neutral: the signature header is malformed;
- permerror: no key, a revoked or malformed key, a key too short;
- temperror: the key could not be fetched now.

A signature whose ``l=`` covers less than the body is marked: whatever
follows the signed part (a mailing list footer, or an attacker's text) is
not vouched for. ed25519-sha256 (RFC 8463) works through PyNaCl.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import asdict, dataclass

import dkim
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from gateway.checks import Check, CheckContext
from gateway.config import Config
from gateway.dns import DnsTempError, NoRecords, NxDomain, Resolver, shared_resolver
from gateway.message import Message
from gateway.symbols import Report, Symbol

MIN_KEY_BITS = 1024
REVOKED = re.compile(r"(?:^|;)\s*p\s*=\s*(?:;|$)")
SYMBOL_OF = {
    "pass": "DKIM_PASS", "fail": "DKIM_FAIL", "policy": "DKIM_POLICY",
    "neutral": "DKIM_NEUTRAL", "permerror": "DKIM_PERMERROR", "temperror": "DKIM_TEMPERROR",
}


@dataclass(frozen=True)
class SignatureResult:
    domain: str
    selector: str
    algorithm: str
    result: str
    reason: str = ""
    partial_body: bool = False
    header_b: str = ""  # first bytes of b=, to tell signatures apart in A-R

    def describe(self) -> str:
        text = f"{self.domain} s={self.selector} a={self.algorithm}: {self.result}"
        return text + (f" ({self.reason})" if self.reason else "")


class DkimCheck(Check):
    name = "dkim"
    io_bound = True
    symbols = {
        "DKIM_PASS": "a DKIM signature verifies",
        "DKIM_FAIL": "a DKIM signature does not verify (message changed or forged)",
        "DKIM_POLICY": "a DKIM signature uses rsa-sha1, which is not accepted (RFC 8301)",
        "DKIM_NEUTRAL": "a DKIM signature is malformed",
        "DKIM_PERMERROR": "a DKIM key is missing, revoked, malformed or too short",
        "DKIM_TEMPERROR": "a DKIM key could not be fetched now (DNS failure)",
        "DKIM_NONE": "the message is not DKIM-signed",
        "DKIM_PARTIAL_BODY": "a DKIM signature covers only part of the body (l=)",
    }

    def __init__(self, config: Config):
        super().__init__(config)
        self.resolver = shared_resolver(config)

    def run(self, message: Message, context: CheckContext) -> Report:
        if message.header("DKIM-Signature") is None:  # spare dkimpy its own parse
            return Report(symbols=(self.symbol("DKIM_NONE"),), facts={"signatures": []})
        signer = dkim.DKIM(message.raw.bytes(), minkey=MIN_KEY_BITS)
        count = sum(1 for name, _ in signer.headers if name.lower() == b"dkim-signature")
        results = [verify_signature(signer, index, self.resolver) for index in range(count)]
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
        return Report(symbols=tuple(symbols),
                      facts={"signatures": [asdict(r) for r in results]})


def verify_signature(signer: dkim.DKIM, index: int, resolver: Resolver) -> SignatureResult:
    try:
        prepared = signer.verify_headerprep(index)
    except dkim.DKIMException as exc:
        return SignatureResult("", "", "", "neutral", f"malformed signature: {exc}")
    if not prepared:
        return SignatureResult("", "", "", "neutral", "signature not found")
    sig, include_headers, sig_headers = prepared
    domain = sig[b"d"].decode("ascii", "replace").lower()
    selector = sig[b"s"].decode("ascii", "replace")
    algorithm = sig[b"a"].decode("ascii", "replace").lower()
    header_b = re.sub(rb"\s+", b"", sig.get(b"b", b""))[:12].decode("ascii", "replace")

    def result(outcome: str, reason: str = "", partial: bool = False) -> SignatureResult:
        return SignatureResult(domain, selector, algorithm, outcome, reason, partial, header_b)

    name = f"{selector}._domainkey.{domain}"
    try:
        records = [r for r in resolver.txt(name) if r.strip()]
    except DnsTempError as exc:
        return result("temperror", f"key lookup failed: {exc}")
    except (NxDomain, NoRecords):
        return result("permerror", f"no key at {name}")
    if not records:
        return result("permerror", f"no key at {name}")
    if REVOKED.search(records[0]):
        return result("permerror", f"key revoked at {name} (empty p=)")
    try:
        signer.pk, signer.keysize, signer.ktag, signer.seqtlsrpt = dkim.evaluate_pk(
            name.encode(), records[0].encode())
    except (dkim.DKIMException, ValueError, TypeError) as exc:
        return result("permerror", f"bad key: {exc}")
    partial = _covers_part_of_body(signer, sig)
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
    return result("pass", "", partial)


def _covers_part_of_body(signer: dkim.DKIM, sig: dict) -> bool:
    if b"l" not in sig:
        return False
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        length = int(sig[b"l"])
    except (InvalidCanonicalizationPolicyError, ValueError):
        return False
    return length < len(policy.canonicalize_body(signer.body))
