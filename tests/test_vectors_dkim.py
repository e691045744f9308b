"""dkimpy's own test vectors (DKIM with RSA and ed25519, ARC) through the
gateway's DKIM and ARC checks, with the keys served by a real authoritative
DNS server (knotd) on loopback.

dkimpy's tests (dkim/tests/test_*.py in its source distribution) mostly sign
a message with dkimpy and verify it at once, answering key lookups from a
dict. Here each of them is one message through the gateway's pipeline
(``dkim`` and ``arc`` checks, the shared ``gateway.dns.Resolver``), the keys
published in DNS zones, and the expectation is the gateway's per-signature
result, not dkimpy's True/False. Where dkimpy's dict had two keys under one
name (its tests never run together), the signed-here vectors use a selector
of their own; the pre-signed messages keep their names. The vectors and their
licence: tests/vectors/README.md; the figures: docs/auth-vectors.md.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from gateway.config import AuthSection, Config, DnsSection, PipelineSection
from gateway.evaluator import LocalEvaluator
from gateway.lab.dns import KnotServer, Zone
from gateway.message import Envelope, Message
from gateway.verdict import Verdict

DATA = Path(__file__).parent / "vectors" / "dkimpy"
CANONICALIZATIONS = [(h, b) for h in (b"simple", b"relaxed") for b in (b"simple", b"relaxed")]


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def text(name: str) -> str:
    return data(name).decode().strip()


# -- keys ------------------------------------------------------------------------------
# Inline in dkimpy's tests rather than in its data folder:

# test_dkim.py, test_dkim_signature_canonicalization: a 512-bit RSA key.
RSA512_PRIVATE = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIIBOwIBAAJBANmBe10IgY+u7h3enWTukkqtUD5PR52Tb/mPfjC0QJTocVBq6Za/
PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQJAYFUKsD+uMlcFu1D3YNaR
EGYGXjJ6w32jYGJ/P072M3yWOq2S1dvDthI3nRT8MFjZ1wHDAYHrSpfDNJ3v2fvZ
cQIhAPgRPmVYn+TGd59asiqG1SZqh+p+CRYHW7B8BsicG5t3AiEA4HYNOohlgWan
8tKgqLJgUdPFbaHZO1nDyBgvV8hvWZUCIQDDdCq6hYKuKeYUy8w3j7cgJq3ih922
2qNWwdJCfCWQbwIgTY0cBvQnNe0067WQIpj2pG7pkHZR6qqZ9SE+AjNTHX0CIQCI
Mgq55Y9MCq5wqzy141rnxrJxTwK9ABo3IAFMWEov3g==
-----END RSA PRIVATE KEY-----
"""
RSA512_RECORD = ("k=rsa; s=email;p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBANmBe10IgY+u7h3enWTukkqtUD5"
                 "PR52Tb/mPfjC0QJTocVBq6Za/PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQ==")
# dnsfunc6 in test_dkim.py: the same key with one character dropped ("hvcNAQ" -> "hvNAQ").
RSA512_CORRUPT = ("k=rsa; p=MFwwDQYJKoZIhvNAQEBBQADSwAwSAJBANmBe10IgY+u7h3enWTukkqtUD5PR52T"
                  "b/mPfjC0QJTocVBq6Za/PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQ==")
# 20120113._domainkey.gmail.com, for test2.message (degenerate folding).
GMAIL_2012 = (
    "k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA1Kd87/UeJjenpabgbFwh"
    "+eBCsSTrqmwIYYvywlbhbqoo2DymndFkbjOVIPIldNs/m40KF+yzMn1skyoxcTUGCQ"
    "s8g3FgD2Ap3ZB5DekAo5wMmk4wimDO+U8QzI3SD07y2+07wlNWwIt8svnxgdxGkVbb"
    "hzY8i+RQ9DpSVpPbF7ykQxtKXkv/ahW3KjViiAH+ghvvIhkx4xYSIc9oSwVmAl5Oct"
    "MEeWUwg8Istjqz8BZeTWbf41fbNhte7Y+YqZOwq1Sd0DbvYAD9NOZK9vlfuac0598H"
    "Y+vtSBczUiKERHv1yRbcaQtZFh5wtiRrN04BLUTD21MycBX5jYchHjPY/wIDAQAB")
# RFC 8463 appendix A.2: the ed25519 key of RFC 8032 7.1 test 1.
BRISBANE = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
ED25519_TEST = "v=DKIM1; k=ed25519; p=yi50DjK5O9pqbFpNHklsv9lqaS0ArSYu02qp1S0DW1Y="


def key_records() -> dict[str, str]:
    """Every key the vectors need, by DNS name."""
    return {
        # test_dkim.py
        "test._domainkey.example.com": text("test.txt"),
        "implicit-k._domainkey.example.com": text("test2.txt"),          # was dnsfunc2
        "bad-version._domainkey.example.com": text("badversion.txt"),    # was dnsfunc3
        "unknown-k._domainkey.example.com": text("badk.txt"),            # was dnsfunc4
        "tlsrpt._domainkey.example.com": text("test_tlsrpt.txt"),        # test_dkim_tlsrpt.py
        "example._domainkey.canonical.com": RSA512_RECORD,
        "example1024._domainkey.canonical.com": text("test.txt"),
        "test._domainkey.football.example.com": text("test.txt"),        # RFC 8463 A.2
        "brisbane._domainkey.football.example.com": BRISBANE,            # RFC 8463 A.2
        "20120113._domainkey.gmail.com": GMAIL_2012,
        # test.message.baddomain signs as d=legitimate.com(.attacker.com: if the key were
        # ever looked up, it would be found, and the signature would pass.
        "test._domainkey.legitimate.com(.attacker.com": text("test.txt"),
        # test_dkim_ed25519.py
        "test._domainkey.example.net": ED25519_TEST,
        "example-ed25519._domainkey.canonical.com": text("ed25519test.dns"),
        "sed._domainkey.test.ex": text("eximtest.dns"),                  # Exim's signature
        # test_dkim_rsavariants.py (its test..test5 selectors)
        "spki1024._domainkey.example.com": text("1024_testkey_wo_markers.pub.txt"),
        "rsapublickey1024._domainkey.example.com": text("1024_testkey_wo_markers.pub.rsa.txt"),
        "spki2048._domainkey.example.com": text("2048_testkey_wo_markers.pub.txt"),
        "rsapublickey2048._domainkey.example.com": text("2048_testkey_wo_markers.pub.rsa.txt"),
        "pkcs8-2048._domainkey.example.com": text("2048_testkey_PKCS8.key.pub.txt"),
    }


# kitterman.com: message.mbox arrives signed by it (2011, selector 2007-00); its key
# is not published here, as it would not be for a recipient today.
ORIGINS = ("example.com", "example.net", "canonical.com", "gmail.com", "test.ex",
           "attacker.com", "kitterman.com")


def zones(records: dict[str, str]) -> list[Zone]:
    built = {origin: Zone(origin) for origin in ORIGINS}
    for name, record in records.items():
        origin = next(o for o in ORIGINS if name.endswith("." + o))
        owner = name.removesuffix("." + origin).replace("(", "\\(")
        built[origin].txt(owner, record)
    return list(built.values())


def knot_or_skip(root: Path, records: dict[str, str]) -> KnotServer:
    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (see .ci/run)")
    return KnotServer(root, zones(records)).start()


class Gateway:
    """The gateway's dkim and arc checks, asking one DNS server."""

    def __init__(self, port: int):
        self.evaluator = LocalEvaluator(Config(
            pipeline=PipelineSection(checks=["dkim", "arc"], budget=5.0),
            dns=DnsSection(nameservers=("127.0.0.1",), port=port, timeout=0.5, lifetime=1.0),
            auth=AuthSection(authserv_id="mx.vectors.test")))

    def check(self, raw: bytes) -> Verdict:
        envelope = Envelope(mail_from="sender@example.com", rcpt_to=("rcpt@example.net",),
                            client_ip="192.0.2.1", helo="mail.example.com")
        return self.evaluator.evaluate_message(Message.from_bytes(raw, envelope))


@pytest.fixture(scope="module")
def gateway(lab_dir: Path):
    server = knot_or_skip(lab_dir / "knot-dkim-vectors", key_records())
    yield Gateway(server.port)
    server.stop()


@pytest.fixture(scope="module")
def gateway_with_corrupt_key(lab_dir: Path):
    """test_catch_bad_key's DNS: the pre-signed message's key name holds a broken key."""
    records = {**key_records(), "test._domainkey.football.example.com": RSA512_CORRUPT}
    server = knot_or_skip(lab_dir / "knot-dkim-corrupt-key", records)
    yield Gateway(server.port)
    server.stop()


# -- the vectors -----------------------------------------------------------------------

@dataclass(frozen=True)
class Vector:
    origin: str                      # dkimpy's test it comes from
    make: Callable[[], bytes]        # the message, signed here or pre-signed
    results: tuple[str, ...]         # the gateway's result per signature, in header order
    partial_body: bool = False       # a signature with l= that covers less than the body
    server: str = "gateway"          # the fixture answering its key lookups
    known_miss: str = ""             # why the gateway does not pass it (xfail)


# A d= that cannot be a DNS name: no key can be published for it. dkimpy answers "no
# key" (its get_txt returns None for a name that is not ASCII); the gateway should say
# permerror (no key) or neutral (malformed signature), never "try again later".
NO_SUCH_NAME = "permerror|neutral"


def signed(message: bytes | str, selector: str, domain: bytes, key: bytes | str,
           **options) -> Callable[[], bytes]:
    """A vector's message: signed by dkimpy when the test runs, as in dkimpy's tests."""

    def make() -> bytes:
        raw = data(message) if isinstance(message, str) else message
        private = data(key) if isinstance(key, str) else key
        return dkim.sign(raw, selector.encode(), domain, private, **options) + raw

    return make


def presigned(name: str) -> Callable[[], bytes]:
    return lambda: data(name)


def with_extra_from(make: Callable[[], bytes], where: str) -> Callable[[], bytes]:
    """test_multiple_from_fails: a header added after signing: X-Foo or a
    second From at the end of the header, or a second From in front of it."""

    def changed() -> bytes:
        raw = make()
        head, body = raw.split(b"\n\n", 1)
        if where == "x-foo":
            head += b"\r\nX-Foo: bar"
        elif where == "from at end":
            head += b'\r\nFrom: "Resident Evil" <sales@spammer.com>'
        else:
            head = b'From: "Resident Evil" <sales@spammer.com>\r\n' + head
        return head + b"\n\n" + body

    return changed


def appended(make: Callable[[], bytes], extra: bytes) -> Callable[[], bytes]:
    return lambda: make() + extra


# test_dkim_signature_canonicalization's message.
CANONICAL_MSG = (b"From: mbp@canonical.com\nTo: scottk@example.com\nSubject: this is my\n"
                 b"    test message\n").replace(b"\n", b"\r\n")


def sign_header(selector: bytes, key: bytes, mode: bytes, **options) -> Callable[[], bytes]:
    return lambda: dkim.sign(CANONICAL_MSG, selector, b"canonical.com", key,
                             canonicalize=(mode, b"relaxed"), **options)


def all_headers_signed(selector: str, domain: bytes, key: str, canonicalize,
                       **options) -> Callable[[], bytes]:
    """test_extra_headers: message.mbox signed over all its headers,
    Received (repeated) included."""

    def make() -> bytes:
        message = data("message.mbox")
        signer = dkim.DKIM(message)
        signer.should_not_sign.remove(b"received")
        header = signer.sign(selector.encode(), domain, data(key),
                             include_headers=signer.all_sign_headers(),
                             canonicalize=canonicalize, **options)
        return header + message

    return make


def folded_b(make_header: Callable[[], bytes], tab: bool) -> Callable[[], bytes]:
    """test_dkim_signature_canonicalization: the DKIM-Signature folded again
    (FWS inside b=), the last fold a tab when ``tab``."""

    def make() -> bytes:
        header = dkim.fold(make_header())
        if tab:
            pos = header.rindex(b"\r\n ")
            header = header[:pos] + b"\r\n\t" + header[pos + 3:]
        return header + CANONICAL_MSG

    return make


def c_id(canonicalize: tuple[bytes, bytes]) -> str:
    return "/".join(part.decode() for part in canonicalize)


def common_vectors(message: str, domain: bytes, key: str, **algorithm) -> dict[str, Vector]:
    """The tests test_dkim.py and test_dkim_ed25519.py both have, for one
    message and key (selector "test")."""
    v: dict[str, Vector] = {}
    for c in CANONICALIZATIONS:
        cid = c_id(c)
        sign = {"canonicalize": c, **algorithm}
        v[f"verifies {cid}"] = Vector(
            "test_verifies", signed(message, "test", domain, key, **sign), ("pass",))
        v[f"SHOULD headers signed {cid}"] = Vector(
            "test_simple_signature", signed(message, "test", domain, key,
                                            include_headers=(b"from", *dkim.DKIM.SHOULD),
                                            **sign), ("pass",))
        v[f"all headers signed, Received repeated {cid}"] = Vector(
            "test_extra_headers", all_headers_signed("test", domain, key, c, **algorithm),
            ("pass", "permerror"))
        base = signed(message, "test", domain, key, **sign)
        v[f"X-Foo added {cid}"] = Vector(
            "test_multiple_from_fails", with_extra_from(base, "x-foo"), ("pass",))
        v[f"second From at end {cid}"] = Vector(
            "test_multiple_from_fails", with_extra_from(base, "from at end"), ("fail",))
        v[f"second From in front {cid}"] = Vector(
            "test_multiple_from_fails", with_extra_from(base, "from in front"), ("fail",))
    v["signature with l= verifies"] = Vector(
        "test_add_body_length", signed(message, "test", domain, key, length=True, **algorithm),
        ("pass",))
    v["altered body"] = Vector(
        "test_altered_body_fails", appended(signed(message, "test", domain, key, **algorithm),
                                            b"foo"), ("fail",))
    v["d= not ASCII"] = Vector(
        "test_badly_encoded_domain_fails", signed(message, "test", domain + b"\xe9", key,
                                                  **algorithm),
        (NO_SUCH_NAME,))
    return v


def rsa_vectors() -> dict[str, Vector]:
    """test_dkim.py, test_dkim_rsavariants.py, test_dkim_tlsrpt.py."""
    v = common_vectors("test.message", b"example.com", "test.private")
    for c in CANONICALIZATIONS:
        cid = c_id(c)
        v[f"rfc6376 message verifies {cid}"] = Vector(
            "test_double_verifies", signed("rfc6376.msg", "test", b"football.example.com",
                                           "test.private", canonicalize=c), ("pass",))
        v[f"windows-1258 message verifies {cid}"] = Vector(
            "test_non_utf8", signed("rfc6376.w1258.msg", "test", b"football.example.com",
                                    "test.private", canonicalize=c), ("pass",))
        for name, selector, origin, result, options in (
                ("lf line endings", "test", "test_verifies_lflinesep", "pass",
                 {"linesep": b"\n"}),
                ("key without k=", "implicit-k", "test_implicit_k", "pass", {}),
                ("key with a bad v=", "bad-version", "test_bad_version", "permerror", {}),
                ("key with an unknown k=", "unknown-k", "test_unknown_k", "permerror", {}),
                ("include_headers as str", "test", "test_string_include", "pass",
                 {"include_headers": ("from",)}),
                ("key for tlsrpt only (s=tlsrpt)", "tlsrpt",
                 "test_dkim_tlsrpt.py test_ignores_tlsrptsvc", "fail", {})):
            v[f"{name} {cid}"] = Vector(
                origin, signed("test.message", selector, b"example.com", "test.private",
                               canonicalize=c, **options), (result,))
        # dkimpy verifies it; the gateway says policy: the added text is not
        # signed, and a signature must not vouch for it (docs/auth.md).
        v[f"l= and text added {cid}"] = Vector(
            "test_l_verify", appended(signed("test.message", "test", b"example.com",
                                             "test.private", length=True, canonicalize=c),
                                      b"added more text\n"), ("policy",), partial_body=True)
        for selector, key, origin in (
                ("spki1024", "1024_testkey.key", "test_verifies_SubjectPublicKeyInfo1024"),
                ("rsapublickey1024", "1024_testkey.key", "test_verifies_RSAPublicKey1024"),
                ("spki2048", "2048_testkey.key", "test_verifiesSubjectPublicKeyInfo2048"),
                ("rsapublickey2048", "2048_testkey.key", "test_verifiesRSAPublicKey2048"),
                ("pkcs8-2048", "2048_testkey_PKCS8.key",
                 "test_verifies_RSAPublicKey2048PKCS8")):
            v[f"{selector} key {cid}"] = Vector(
                f"test_dkim_rsavariants.py {origin}",
                signed("test.message", selector, b"example.com", key, canonicalize=c),
                ("pass",))
    v["RFC 8463 message, RSA signature without t="] = Vector(
        "test_no_t", presigned("rfc6376.signed.no_t.msg"), ("fail",))
    v["RFC 8463 message, corrupt RSA key"] = Vector(
        "test_catch_bad_key", presigned("rfc6376.signed.rsa.msg"), ("permerror",),
        server="gateway_with_corrupt_key")
    v["d= with a parenthesis, signed here"] = Vector(
        "test_invalid_domain_sign", signed("test.message", "test",
                                           b"legitimate.com(.attacker.com", "test.private"),
        ("neutral",))
    v["d= with a parenthesis, pre-signed"] = Vector(
        "test_invalid_domain_verify", presigned("test.message.baddomain"), ("neutral",))
    v["degenerate folding (gmail.com)"] = Vector(
        "test_degenerate_folding", presigned("test2.message"), ("pass",))
    for mode in (b"relaxed", b"simple"):
        for tab in (False, True):
            fold = f"{mode.decode()}/relaxed, b= refolded" + (" with a tab" if tab else "")
            v[f"512-bit key, {fold}"] = Vector(
                "test_dkim_signature_canonicalization",
                folded_b(sign_header(b"example", RSA512_PRIVATE, mode), tab), ("permerror",))
            v[f"1024-bit key, {fold}"] = Vector(
                "test_dkim_signature_canonicalization, with a key the gateway accepts",
                folded_b(sign_header(b"example1024", data("test.private"), mode), tab),
                ("pass",))
    return v


def ed25519_vectors() -> dict[str, Vector]:
    """test_dkim_ed25519.py."""
    ed = {"signature_algorithm": b"ed25519-sha256"}
    v = common_vectors("ed25519test.msg", b"example.net", "ed25519test.key", **ed)
    for c in CANONICALIZATIONS:
        v[f"RFC 8032 key signs the RFC 6376 message {c_id(c)}"] = Vector(
            "test_rfc8032_verifies", signed("rfc6376.msg", "brisbane", b"football.example.com",
                                            "rfc8032_7_1.key", canonicalize=c, **ed), ("pass",))
    v["Exim's signature"] = Vector(
        "test_verify_third_party", presigned("ed25519test2.msg"), ("pass",))
    for mode in (b"relaxed", b"simple"):
        for tab in (False, True):
            fold = f"{mode.decode()}/relaxed, b= refolded" + (" with a tab" if tab else "")
            v[fold] = Vector(
                "test_dkim_signature_canonicalization",
                folded_b(sign_header(b"example-ed25519", data("ed25519test.key"), mode, **ed),
                         tab), ("pass",))
    return v


RFC8463 = {
    "RFC 8463 A.3: ed25519 and RSA signatures": Vector(
        "test_rfc8032_previous_verifies, test_double_previous_verifies",
        presigned("rfc6376.signed.msg"), ("pass", "pass")),
}

SETS = {"rsa": rsa_vectors(), "ed25519": ed25519_vectors(), "rfc8463": RFC8463}


def params():
    return [pytest.param(vector, id=f"{group}: {name}", marks=[
        pytest.mark.xfail(reason=vector.known_miss, raises=AssertionError, strict=True)]
        if vector.known_miss else [])
        for group, vectors in SETS.items() for name, vector in vectors.items()]


@pytest.mark.parametrize("vector", params())
def test_dkimpy_vector(request, vector: Vector):
    gateway: Gateway = request.getfixturevalue(vector.server)
    verdict = gateway.check(vector.make())
    signatures = verdict.facts["dkim"]["signatures"]
    assert len(signatures) == len(vector.results), (vector.origin, signatures)
    for signature, expected in zip(signatures, vector.results, strict=True):
        assert signature["result"] in expected.split("|"), (vector.origin, signature)
    assert [s["partial_body"] for s in signatures] == \
        [vector.partial_body] * len(vector.results)


# -- ARC (test_arc.py) -----------------------------------------------------------------

# test_signs_and_verifies: what dkimpy's arc_sign must produce for test.message.
ARC_SEALED = [
    b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=test; t=12345;\r\n"
    b" b=iSKjTQ93xUC6gt4yutHrOf0F/qb4E5voEeuucd66VhM4n/7ifBMMHqYwncgz9sefduM6C\r\n"
    b" UthuUSzqE2YamkGXQgKPIG9t4ZCOrx1OXGE34WF9ZeI/E0csrN+wK7sq/RjgN3z4qxLPMsp\r\n"
    b" lW+BUUHCNuCIvxcZ55Ky6evIb/Saj2o=\r\n",
    b"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    b" d=example.com; s=test; t=12345; h=message-id : date : from : to :\r\n"
    b" subject : from; bh=wE7NXSkgnx9PGiavN4OZhJztvkqPDlemV3OGuEnLwNo=;\r\n"
    b" b=a0f6qc3k9eECTSR155A0TQS+LjqPFWfI/brQBA83EUz00SNxj1wmWykvs1hhBVeM0r1kE\r\n"
    b" Qc6CKbzRYaBNSiFj4q8JBpRIujLz1qLyGmPuAI6ddu/Z/1hQxgpVcp/odmI1UMV2R+d+yQ7\r\n"
    b" tUp3EQxF/GYNt22rV4rNmDmANZVqJ90=\r\n",
    b"ARC-Authentication-Results: i=1; lists.example.org;\r\n arc=none;\r\n"
    b" spf=pass smtp.mfrom=jqd@d1.example;\r\n dkim=pass header.i=@d1.example;\r\n"
    b" dmarc=pass\r\n",
]
# test_fails_h_in_as: an ARC-Seal with h=, which RFC 8617 4.1.3 forbids.
ARC_H_IN_SEAL = [
    b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=test; t=12345;\r\n"
    b" h=message-id : date : from : to : subject : from;\r\n"
    b" b=mIurIuLl0/wAxWhA4DBS1wsUE15IBnmJ7o3sH15hIuesdD4smz1cCLXVhRtxQE\r\n"
    b" rVtVLv4OgNCgdFsB5zbSOUao2bSSYP6y0BGyCWvr+hU4tai5axIc1Kfwbtv/0Mqg\r\n"
    b" waiGJPreOAAeZOJ4vPfdaAbSXlN5MI4PHW89U82FSIBKI=\r\n",
    b"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
    b" d=example.com; s=test; t=12345; h=message-id :\r\n"
    b" date : from : to : subject : from;\r\n"
    b" bh=wE7NXSkgnx9PGiavN4OZhJztvkqPDlemV3OGuEnLwNo=;\r\n"
    b" b=a0f6qc3k9eECTSR155A0TQS+LjqPFWfI/brQBA83EUz00SNxj\r\n"
    b" 1wmWykvs1hhBVeM0r1kEQc6CKbzRYaBNSiFj4q8JBpRIujLz1qL\r\n"
    b" yGmPuAI6ddu/Z/1hQxgpVcp/odmI1UMV2R+d+yQ7tUp3EQxF/GY\r\n"
    b" Nt22rV4rNmDmANZVqJ90=\r\n",
    b"ARC-Authentication-Results: i=1; lists.example.org; arc=none;\r\n"
    b"  spf=pass smtp.mfrom=jqd@d1.example;\r\n"
    b"  dkim=pass (1024-bit key) header.i=@d1.example;\r\n  dmarc=pass\r\n",
]


def test_arc_sealed_by_dkimpy_passes(gateway):
    message = data("test.message")
    sealed = dkim.arc_sign(message, b"test", b"example.com", data("test.private"),
                           b"lists.example.org", timestamp="12345")
    assert sealed == ARC_SEALED  # dkimpy's own expectation: the vector is what it was
    arc = gateway.check(b"".join(sealed) + message).facts["arc"]
    assert (arc["result"], arc["sealer"], arc["instances"]) == ("pass", "example.com", 1)


def test_arc_seal_with_h_fails(gateway):
    arc = gateway.check(b"".join(ARC_H_IN_SEAL) + data("test.message")).facts["arc"]
    assert arc["result"] == "fail"
