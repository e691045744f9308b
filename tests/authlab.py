"""Test zones for sender authentication: fresh DKIM keys, SPF, DMARC, MX, PTR.

All names live under ``.test`` (not in the public suffix list, so the
organizational domain of ``mail.good.test`` is ``good.test``); addresses are
198.51.100.0/24 and 203.0.113.0/24 (and 127.0.0.1 for mail through the local
Postfix).
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass

import dkim
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.lab.dns import Zone

GOOD_IP = "198.51.100.10"      # good.test's mail server, FCrDNS ok
MISMATCH_IP = "198.51.100.20"  # PTR points at a name that does not point back
NO_PTR_IP = "198.51.100.30"
OTHER_IP = "203.0.113.66"      # allowed by nobody


@dataclass(frozen=True)
class RsaKey:
    private_pem: bytes
    public_b64: str

    @classmethod
    def generate(cls, bits: int = 2048) -> RsaKey:
        if bits < 1024:  # cryptography refuses short keys; openssl still makes them
            pem = subprocess.run(["openssl", "genrsa", "-traditional", str(bits)],
                                 capture_output=True, check=True).stdout
            key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(private, base64.b64encode(public).decode())

    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"


@dataclass(frozen=True)
class Ed25519Key:
    private_b64: bytes
    public_b64: str

    @classmethod
    def generate(cls) -> Ed25519Key:
        key = nacl.signing.SigningKey.generate()
        return cls(base64.b64encode(bytes(key)), base64.b64encode(bytes(key.verify_key)).decode())

    def record(self) -> str:
        return f"v=DKIM1; k=ed25519; p={self.public_b64}"


@dataclass(frozen=True)
class Keys:
    rsa: RsaKey
    rsa_other: RsaKey  # published under a selector, but not the one that signed
    small: RsaKey      # 512 bits: too short to trust
    ed25519: Ed25519Key
    arc: RsaKey


def make_keys() -> Keys:
    return Keys(RsaKey.generate(2048), RsaKey.generate(2048), RsaKey.generate(512),
                Ed25519Key.generate(), RsaKey.generate(2048))


def dmarc_zone(origin: str, record: str | None, *extra_txt: str, spf: str | None = None) -> Zone:
    zone = Zone(origin).add("@", "MX", f"10 mx.{origin}.").add("mx", "A", GOOD_IP)
    if spf:
        zone.txt("@", spf)
    if record:
        zone.txt("_dmarc", record)
    for text in extra_txt:
        zone.txt("_dmarc", text)
    return zone


def _cut(text: str, first: int, size: int) -> list[str]:
    """``text`` in strings of ``size`` characters, the first one ``first`` long."""
    return [text[:first]] + [text[i:i + size] for i in range(first, len(text), size)]


def build_zones(keys: Keys) -> list[Zone]:
    good_spf = f"v=spf1 ip4:{GOOD_IP} ip4:127.0.0.1 -all"
    good = (Zone("good.test")
            .add("@", "MX", "10 mail.good.test.")
            .add("@", "A", GOOD_IP)
            .add("mail", "A", GOOD_IP)
            .add("mismatch", "A", "198.51.100.99")
            .add("localhost", "A", "127.0.0.1")
            .txt("@", good_spf)
            .txt("mail", good_spf)
            .txt("sub", good_spf)
            .add("sub", "MX", "10 mail.good.test.")
            .txt("_dmarc", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@good.test")
            .txt("s2048._domainkey", keys.rsa.record())
            .txt("other._domainkey", keys.rsa_other.record())
            .txt("small._domainkey", keys.small.record())
            .txt("sed._domainkey", keys.ed25519.record())
            .txt("revoked._domainkey", "v=DKIM1; k=rsa; p=")
            .txt("broken._domainkey", "v=DKIM1; k=rsa; p=not-base64-at-all!!")
            .txt("nomx", "v=spf1 -all")
            # RFC 6376 3.6.2.2: a key in strings cut anywhere is one key; two
            # records at one selector are no key at all.
            .add("split._domainkey", "TXT", " ".join(
                '"' + part + '"' for part in _cut(keys.rsa.record(), 7, 40)))
            .txt("two._domainkey", keys.rsa.record())
            .txt("two._domainkey", keys.rsa_other.record()))
    # 11 DNS-querying mechanisms: one more than RFC 7208 allows.
    limit = dmarc_zone("limit.test", None,
                       spf="v=spf1 " + " ".join(f"a:h{i}.limit.test" for i in range(11)) + " -all")
    for index in range(11):
        limit.add(f"h{index}", "A", "203.0.113.1")
    zones = [
        good,
        dmarc_zone("quarantine.test", "v=DMARC1; p=quarantine",
                   spf=f"v=spf1 ip4:{GOOD_IP} -all").txt("s2048._domainkey", keys.rsa.record()),
        dmarc_zone("monitor.test", "v=DMARC1; p=none", spf=f"v=spf1 ip4:{GOOD_IP} -all")
        .txt("s2048._domainkey", keys.rsa.record()),
        dmarc_zone("pct.test", "v=DMARC1; p=reject; pct=50", spf=f"v=spf1 ip4:{GOOD_IP} -all"),
        dmarc_zone("sp.test", "v=DMARC1; p=none; sp=reject", spf=f"v=spf1 ip4:{GOOD_IP} -all")
        .txt("mail", f"v=spf1 ip4:{GOOD_IP} -all").add("mail", "MX", "10 mx.sp.test."),
        dmarc_zone("strict.test", "v=DMARC1; p=reject; adkim=s; aspf=s",
                   spf=f"v=spf1 ip4:{GOOD_IP} -all")
        .txt("bounce", f"v=spf1 ip4:{GOOD_IP} -all").add("bounce", "MX", "10 mx.strict.test.")
        .txt("s2048._domainkey", keys.rsa.record())
        .txt("s2048._domainkey.sub", keys.rsa.record()),
        dmarc_zone("junk.test", "v=DMARC1; p=reject", "google-site-verification=abc123",
                   "not even; a record", spf=f"v=spf1 ip4:{GOOD_IP} -all"),
        dmarc_zone("twice.test", "v=DMARC1; p=reject", "v=DMARC1; p=none",
                   spf=f"v=spf1 ip4:{GOOD_IP} -all"),
        dmarc_zone("nodmarc.test", None, spf=f"v=spf1 ip4:{GOOD_IP} -all"),
        dmarc_zone("badp.test", "v=DMARC1; p=bogus; rua=mailto:x@badp.test",
                   spf=f"v=spf1 ip4:{GOOD_IP} -all"),
        # SPF variety
        dmarc_zone("softfail.test", None, spf="v=spf1 ip4:192.0.2.1 ~all"),
        dmarc_zone("neutral.test", None, spf="v=spf1 ?all"),
        dmarc_zone("nospf.test", None),
        dmarc_zone("syntax.test", None, spf="v=spf1 ip4:198.51.100.0/24 bogus:mech -all"),
        dmarc_zone("twospf.test", None, spf="v=spf1 -all").txt("@", "v=spf1 +all"),
        dmarc_zone("include.test", None, spf="v=spf1 include:good.test -all"),
        dmarc_zone("redirect.test", None, spf="v=spf1 redirect=good.test"),
        dmarc_zone("amech.test", None, spf="v=spf1 a -all").add("@", "A", GOOD_IP),
        dmarc_zone("mxmech.test", None, spf="v=spf1 mx -all"),
        dmarc_zone("ptrmech.test", None, spf="v=spf1 ptr:good.test -all"),
        dmarc_zone("cidr.test", None, spf="v=spf1 ip4:198.51.100.0/28 ip6:2001:db8::/32 -all"),
        dmarc_zone("exists.test", None, spf="v=spf1 exists:%{i}.allow.exists.test -all")
        .add(f"{GOOD_IP}.allow", "A", "127.0.0.2"),
        limit,
        # Three lookups that find nothing: one more than the void limit.
        dmarc_zone("void.test", None,
                   spf="v=spf1 a:v1.void.test a:v2.void.test a:v3.void.test -all"),
        dmarc_zone("forwarder.test", None, spf=f"v=spf1 ip4:{OTHER_IP} -all")
        .txt("arc._domainkey", keys.arc.record()),
        # DMARC discovery and record parsing (RFC 7489 6.4, 6.6.3), np= and t=.
        dmarc_zone("bank.test", "v=DMARC1; p=reject", spf=f"v=spf1 ip4:{GOOD_IP} -all")
        .txt("_dmarc.bad", "v=DMARC1; p=none; reject")
        .txt("_dmarc.multi", "v=DMARC1; p=none").txt("_dmarc.multi", "v=DMARC1; p=quarantine")
        .txt("_dmarc.nop", "v=DMARC1; sp=quarantine")
        .txt("_dmarc.ruaonly", "v=DMARC1; rua=mailto:d@bank.test")
        .txt("_dmarc.lower", "v=dmarc1; p=none"),
        dmarc_zone("evil.test", None, spf=f"v=spf1 ip4:{OTHER_IP} -all"),
        dmarc_zone("spaces.test", "v = DMARC1 ; p = reject"),
        dmarc_zone("upper.test", "V=DMARC1; P=Reject"),
        dmarc_zone("stray.test", "v=DMARC1; p=reject; fo"),
        dmarc_zone("badsp.test", "v=DMARC1; p=reject; sp=bogus"),
        dmarc_zone("badsprua.test", "v=DMARC1; p=reject; sp=bogus; rua=mailto:d@badsprua.test"),
        dmarc_zone("np.test", "v=DMARC1; p=reject; sp=none; np=quarantine")
        .add("real", "A", GOOD_IP),
        dmarc_zone("testing.test", "v=DMARC1; p=reject; t=y"),
        # Issue 24: np= must not apply when a subdomain's lookups time out.
        dmarc_zone("npreject.test", "v=DMARC1; p=none; sp=quarantine; np=reject"),
        # Issue 23: a spoofed p=reject author beside the attacker's own domain,
        # whose SPF passes for the local Postfix (127.0.0.1) and OTHER_IP.
        dmarc_zone("paypal.test", "v=DMARC1; p=reject", spf=f"v=spf1 ip4:{GOOD_IP} -all"),
        dmarc_zone("attacker.test", None, spf=f"v=spf1 ip4:127.0.0.1 ip4:{OTHER_IP} -all"),
        # Authors the other tests write as (tests/fixtures/messages, the
        # identity tests): answered, as the real DNS would, rather than
        # REFUSED, a DNS failure that tempfails unauthenticated mail whose
        # DMARC policy cannot be read (DMARC_TEMPFAIL).
        dmarc_zone("example.com", None),
        dmarc_zone("example.org", None),
        dmarc_zone("example.net", None),
        dmarc_zone("gmail.com", "v=DMARC1; p=none"),
        # An internationalised domain: bänk.test in A-labels, p=reject.
        dmarc_zone("xn--bnk-qla.test", "v=DMARC1; p=reject", spf=f"v=spf1 ip4:{GOOD_IP} -all"),
        # Sender verification
        Zone("nullmx.test").add("@", "MX", "0 .").txt("@", "v=spf1 -all"),
        Zone("nomail.test").txt("@", "just a TXT record"),
        Zone("aonly.test").add("@", "A", GOOD_IP),
        # Reverse DNS
        Zone("100.51.198.in-addr.arpa")
        .add("10", "PTR", "mail.good.test.")
        .add("20", "PTR", "mismatch.good.test."),
        Zone("113.0.203.in-addr.arpa").add("66", "PTR", "mx.forwarder.test."),
        Zone("127.in-addr.arpa").add("1.0.0", "PTR", "localhost.good.test."),
    ]
    return zones


def message(from_header: str = "Alice <alice@good.test>", subject: str = "hello",
            body: str = "Hello Bob,\r\nsee you tomorrow.\r\n", extra: str = "") -> bytes:
    return (f"From: {from_header}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n"
            f"Date: Tue, 24 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{abs(hash(subject))}@x>\r\n"
            f"{extra}\r\n{body}").encode()


def sign(raw: bytes, domain: str, selector: str, key: RsaKey | Ed25519Key,
         algorithm: bytes = b"rsa-sha256", length: bool = False) -> bytes:
    private = key.private_pem if isinstance(key, RsaKey) else key.private_b64
    signature = dkim.sign(raw, selector.encode(), domain.encode(), private,
                          signature_algorithm=algorithm, length=length,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + raw


def arc_seal(raw: bytes, sealer: str, key: RsaKey, authserv_id: str, results: str) -> bytes:
    """What a forwarder does: record its Authentication-Results, then seal."""
    with_results = f"Authentication-Results: {authserv_id}; {results}\r\n".encode() + raw
    headers = dkim.arc_sign(with_results, b"arc", sealer.encode(), key.private_pem,
                            authserv_id.encode())
    return b"".join(headers) + with_results
