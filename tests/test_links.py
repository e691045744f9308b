"""The links check (gateway/checks/links.py), the one URL extractor it
shares with the blocklists and the rules (gateway/urls.py), and QR codes in
pictures (gateway/qr.py)."""

from __future__ import annotations

import io
import itertools
import random
import shutil
import smtplib
import uuid
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.checks import CheckContext
from gateway.checks.links import LinksCheck, mixed_script_label, shown_link
from gateway.checks.view import view_of
from gateway.config import Config, LimitsSection, LinksSection
from gateway.facts import DmarcFacts
from gateway.message import Envelope, Message
from gateway.ruleset import Ruleset
from gateway.urls import TEXT_URL, TRAILING, html_urls, parse_link, srcset, text_urls
from tests.test_web import web as web  # the fixture


def qr_png(text: str, scale: int = 6, dark: str = "black", light: str = "white") -> bytes:
    import segno

    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="png", scale=scale, border=4, dark=dark,
                                     light=light)
    return out.getvalue()


def mail(text: str = "Hello.", html: str | None = None,
         pictures: tuple[tuple[str, str, bytes], ...] = (), **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = headers.get("sender", "Alice <alice@example.org>")
    message["To"] = "bob@example.net"
    message["Subject"] = headers.get("subject", "links")
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for name, content_type, data in pictures:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def findings(raw: bytes, config: Config | None = None,
             context: CheckContext | None = None) -> dict[str, str]:
    report = LinksCheck.from_config(config or Config()).run(Message.from_bytes(raw, limits=(
        config or Config()).limits), context or CheckContext())
    return {s.name: s.evidence for s in report.symbols}


# -- one reading of a URL -------------------------------------------------------------------


@pytest.mark.parametrize(("written", "host", "ip"), [
    ("HTTPS://Shop.Example.co.uk./cart", "shop.example.co.uk", False),
    # What browsers read, that a naive split does not:
    ("http:\\\\evil.example\\login", "evil.example", False),
    ("http://3232235777/", "192.168.1.1", True),
    ("http://0xC0A80001/", "192.168.0.1", True),
    ("http://ev\til.exa\nmple/", "evil.example", False),
    ("https://\uff50\uff41\uff59\uff50\uff41\uff4c\uff0ecom/", "paypal.com", False),  # full-width
    ("http://%65vil.example/", "evil.example", False),
    ("https://paypal.com@evil.example/", "evil.example", False),
    ("http://[2001:db8::1]:8080/x", "2001:db8::1", True),
    ("www.plain.example", "www.plain.example", False),
])
def test_a_url_is_read_as_a_browser_reads_it(written, host, ip):
    link = parse_link(written)
    assert link is not None
    assert (link.host, link.ip) == (host, ip)


@pytest.mark.parametrize("written", ["javascript:alert(1)", "mailto:a@b.example", "#top",
                                     "/relative", "http://exa mple.com/", "", "http://"])
def test_what_has_no_host_is_no_link(written):
    assert parse_link(written) is None


def test_html_urls_come_from_every_place_a_browser_loads_or_follows():
    html = """<html><head>
      <meta http-equiv="Refresh" content="5; URL='https://refresh.example/r'">
      <style>body { background: url("https://css.example/bg.png") } @import 'https://imp.example/s.css';</style>
      </head><body background="https://bg.example/b.png">
      <a href="https://target.example/a?x=1&amp;y=2">Sign <b>in</b></a>
      <area href="https://area.example/" alt="map">
      <img src="https://img.example/i.png"
           srcset="https://s1.example/a.png 1x, https://s2.example/b,c.png 2x">
      <form action="https://form.example/post">
        <button formaction="https://button.example/">Go</button></form>
      <div style="background-image:url(https://style.example/x.png)">t</div>
      <a href="javascript:void(document.location='https://js.example/x y')">js</a>
      <a href="https://pic.example/"><img src="cid:logo" alt="PayPal"></a>
      </body></html>"""
    found = html_urls(html).found
    by_where = {(f.where, f.url) for f in found}
    assert {
        ("refresh", "https://refresh.example/r"), ("css", "https://css.example/bg.png"),
        ("css", "https://imp.example/s.css"), ("background", "https://bg.example/b.png"),
        ("href", "https://target.example/a?x=1&y=2"), ("href", "https://area.example/"),
        ("src", "https://img.example/i.png"), ("srcset", "https://s1.example/a.png"),
        ("srcset", "https://s2.example/b,c.png"), ("action", "https://form.example/post"),
        ("action", "https://button.example/"), ("css", "https://style.example/x.png"),
        # whole, never cut at a quote or a space
        ("href", "javascript:void(document.location='https://js.example/x y')"),
    } <= by_where
    texts = {f.url: (f.text, f.alt) for f in found if f.where == "href"}
    assert texts["https://target.example/a?x=1&y=2"] == ("Sign in", "")
    assert texts["https://pic.example/"] == ("PayPal", "PayPal")


def test_relative_links_resolve_against_the_documents_base():
    html = ('<base href="https://evil.example/kit/"><a href="login.php">https://bank.example/</a>'
            '<a href="//cdn.example/x">cdn</a>')
    urls = [f.url for f in html_urls(html).found if f.where == "href"]
    assert urls == ["https://evil.example/kit/login.php", "https://cdn.example/x"]
    assert [f.url for f in html_urls('<a href="//cdn.example/x">x</a>').found] == [
        "https://cdn.example/x"]


def test_srcset_follows_the_html_parsing_rules():
    assert list(srcset("a.png 1x,b.png 2x")) == ["a.png", "b.png"]
    assert list(srcset("data:image/png;base64,AAA= 1x, https://x.example/a.png 2x")) == [
        "data:image/png;base64,AAA=", "https://x.example/a.png"]
    assert list(srcset("  ,, a.png, b.png (max-width: 1px, 2px) 2x, c.png")) == [
        "a.png", "b.png", "c.png"]


def _urls_by_the_regex_alone(text: str) -> list[str]:
    return [url for m in TEXT_URL.finditer(text) if (url := m.group(0).rstrip(TRAILING))]


@given(st.text(alphabet=st.sampled_from("htpsw:/.W\u017f\u212aHx-+9_ )\u00e9\n\u3000"),
               max_size=300))
@settings(derandomize=True, database=None, deadline=None, max_examples=600)
def test_text_urls_are_the_matches_of_the_regex_alone(text):
    assert [f.url for f in text_urls(text)] == _urls_by_the_regex_alone(text)


@pytest.mark.parametrize("text", [
    "a" * 30 + "http://x.y", "ab" * 12 + "://x", "a" * 21 + "://x", "a" * 20 + "://x",
    "\u00e9http://x.y", "\u212aa://x Www.y.z wWw.q", "https://" * 300, "www." * 300,
    ":" * 500 + "//a", "w" * 500 + "ww.a", "x1+.-://a), (www.b.c!", "http://a." * 50])
def test_text_urls_are_the_matches_of_the_regex_alone_at_the_edges(text):
    assert [f.url for f in text_urls(text)] == _urls_by_the_regex_alone(text)


def test_text_urls_leave_the_sentence_its_punctuation():
    text = "See https://a.example/x. Or (www.b.example/y), or ftp://c.example/z!"
    assert [f.url for f in text_urls(text)] == [
        "https://a.example/x", "www.b.example/y", "ftp://c.example/z"]


def test_an_attached_web_page_is_read_for_its_links_and_forms():
    page = (b'<html><form action="https://harvest.example/post.php"><input type=password>'
            b'</form><a href="https://www.paypal.com.evil.example/">https://www.paypal.com/</a>')
    raw = mail(pictures=(("Invoice_0423.html", "application/octet-stream", page),
                         ("drawing.svg", "image/svg+xml",
                          b'<svg xmlns="http://www.w3.org/2000/svg"><a href="https://svg.example/'
                          b'x"><text>open</text></a></svg>')))
    hosts = [link.host for link in view_of(Message.from_bytes(raw)).links]
    assert hosts == ["harvest.example", "www.paypal.com.evil.example", "svg.example"]
    assert "LINK_TEXT_MISMATCH" in findings(raw)


def test_the_view_counts_urls_past_the_limit_and_keeps_the_first():
    html = "".join(f'<a href="https://h{i}.example/">{i}</a>' for i in range(30))
    view = view_of(Message.from_bytes(mail(html=html), limits=LimitsSection(urls=10)))
    assert len(view.links) == 10
    assert view.urls_seen == 30


# -- the symbols ---------------------------------------------------------------------------


def test_a_link_whose_text_shows_another_domain_is_a_mismatch():
    html = ('<p><a href="https://paypal.com.evil.example/x">https://www.paypal.com/login</a>'
            '<a href="https://evil.example/y">www.paypal.com</a>'
            '<a href="https://evil.example/z">paypal.com/signin</a></p>')
    assert findings(mail(html=html))["LINK_TEXT_MISMATCH"] == (
        "text 'https://www.paypal.com/login' shows paypal.com, goes to paypal.com.evil.example; "
        "text 'www.paypal.com' shows paypal.com, goes to evil.example; "
        "text 'paypal.com/signin' shows paypal.com, goes to evil.example")


@pytest.mark.parametrize("anchor", [
    '<a href="https://www.paypal.com/signin">https://paypal.com/login</a>',  # same domain
    '<a href="https://click.example/t?u=1">Dilbert.com</a>',  # a site's name, not an address
    '<a href="https://click.example/t">CNET News.com: Top CIOs</a>',
    '<a href="https://github.example/x/setup.py">setup.py</a>',
    '<a href="https://click.example/t">John.Smith</a>',
    '<a href="mailto:support@paypal.com">support@paypal.com</a>',
    '<a href="https://docs.example/">see the docs</a>',
])
def test_text_that_shows_no_other_address_is_no_mismatch(anchor):
    assert "LINK_TEXT_MISMATCH" not in findings(mail(html=f"<p>{anchor}</p>"))


def test_a_mismatch_shown_by_the_authenticated_author_is_its_own_redirect():
    html = '<a href="https://click.tracker.example/t/1">https://www.example.org/offers</a>'
    passed = CheckContext(facts={"dmarc": DmarcFacts(result="pass",
                                                     from_domain="news.example.org").to_json()})
    failed = CheckContext(facts={"dmarc": DmarcFacts(result="fail",
                                                     from_domain="example.org").to_json()})
    assert "LINK_TEXT_MISMATCH" not in findings(mail(html=html), context=passed)
    assert "LINK_TEXT_MISMATCH" in findings(mail(html=html), context=failed)
    assert "LINK_TEXT_MISMATCH" in findings(mail(html=html))


def test_a_link_to_the_authors_own_domain_is_its_own_click_tracker():
    html = '<a href="https://clickthru.online.com/Click?q=8c">www.buy.com</a>'
    own = mail(html=html, sender="ZDNet <Online#3.1999@newsletter.online.com>")
    other = mail(html=html, sender="ZDNet <alerts@zdnet-news.example>")
    assert "LINK_TEXT_MISMATCH" not in findings(own)
    assert findings(other)["LINK_TEXT_MISMATCH"] == (
        "text 'www.buy.com' shows buy.com, goes to clickthru.online.com")


def test_shown_link_reads_urls_www_names_and_hosts_with_paths():
    assert shown_link("Log in at https://www.paypal.com/login now").domain == "paypal.com"
    assert shown_link("www.PayPal.com").domain == "paypal.com"
    assert shown_link("paypal.com/signin").domain == "paypal.com"
    assert shown_link("\uff30\uff41\uff59\uff30\uff41\uff4c.com/signin").domain == "paypal.com"
    assert shown_link("http://10.0.0.1/admin").host == "10.0.0.1"
    for text in ("PayPal", "Dilbert.com", "www.intranet", "e.g. this", "http://intranet/"):
        assert shown_link(text) is None, text


def test_userinfo_ip_shortener_and_mixed_script_links():
    text = ("https://www.paypal.com@evil.example/login http://3232235777/x "
            "https://bit.ly/3abc https://xn--pypal-4ve.com/ ftp://user:secret@files.example/")
    found = findings(mail(text=text))
    assert found["URL_USERINFO_TRICK"] == ("https://www.paypal.com@evil.example/login goes to "
                                           "evil.example, not www.paypal.com")
    assert found["URL_IP_LITERAL"] == "http://3232235777/x (192.168.1.1)"
    assert found["URL_SHORTENER"] == "https://bit.ly/3abc"
    assert found["URL_PUNYCODE_MIXED_SCRIPT"] == "p\u0430ypal in xn--pypal-4ve.com"


def test_ordinary_links_raise_nothing():
    text = ("https://www.example.org/a https://sub.example.co.uk/b?c=d#e www.example.net "
            "https://xn--bcher-kva.example/ https://xn--fsqu00a.xn--0zwm56d/ "
            "https://user@files.example/")
    assert findings(mail(text=text, html=f"<p>{text}</p>")) == {}


def test_a_sites_own_shorteners_count_too():
    config = Config(links=LinksSection(shorteners=["go.example.org"]))
    assert findings(mail(text="https://go.example.org/x"), config) == {
        "URL_SHORTENER": "https://go.example.org/x"}


@pytest.mark.parametrize(("label", "mixed"), [
    ("xn--pypal-4ve", True),  # Latin and one Cyrillic a
    ("xn--bcher-kva", False),  # bücher: Latin alone
    ("xn--80ak6aa92e", False),  # Cyrillic alone
    ("xn--fsqu00a", False),  # Han
    ("xn--ipad-gi4c4fue", False),  # Latin with Katakana and Han: Japanese
])
def test_mixed_scripts_as_uts39_highly_restrictive(label, mixed):
    assert (mixed_script_label(label + ".example") is not None) is mixed


def test_a_link_to_a_host_imitating_a_brand_or_our_domain_is_a_lookalike():
    text = ("https://paypa1-secure.com/login https://www.rnicrosoft.com/ "
            "https://login.acme-corp.net/ https://paypal.top/x")
    message = Message.from_bytes(mail(text=text), Envelope(rcpt_to=("bob@acme-corp.com",)))
    report = LinksCheck.from_config(Config()).run(message, CheckContext())
    assert {s.name: s.evidence for s in report.symbols}["URL_LOOKALIKE_DOMAIN"] == (
        "paypa1-secure.com imitates paypal.com (brand PayPal): a word added; "
        "rnicrosoft.com imitates microsoft.com (brand Microsoft): a confusable spelling; "
        "acme-corp.net imitates acme-corp.com (our domain): another TLD; and 1 more")


def test_a_lookalike_written_to_deceive_is_crafted_a_name_of_its_own_is_not():
    crafted = findings(mail(text="https://paypall.com/x https://paypal-verify.com/x "
                                 "https://www.paypal.com.login-check.top/x"))
    assert crafted["URL_LOOKALIKE_CRAFTED"] == (
        "paypall.com imitates paypal.com: a slip of the keyboard: l doubled; "
        "paypal-verify.com imitates paypal.com: a bait word after a hyphen; "
        "login-check.top imitates paypal.com: written as its subdomain")
    assert findings(mail(text="https://www.netflix.top/account"))["URL_LOOKALIKE_CRAFTED"] == (
        "netflix.top imitates netflix.com: its name under .top, a generic TLD other than "
        ".com, .net and .org")
    # The corpus's ham links to these: a sponsor's product, a company and a
    # mail server named one letter from a brand's. Then the same name under
    # .org or a country's code, where brands keep sites of their own, and a
    # short name under a new TLD (ups.shop: power supplies as likely as
    # parcels): lookalikes, not crafted ones.
    for text in ("https://www.outlooksecure.com/", "http://www.lindows.com/",
                 "http://www.qmail.org/", "https://paypal.org/", "https://paypal.ch/",
                 "https://www.ups.shop/"):
        found = findings(mail(text=text))
        assert "URL_LOOKALIKE_DOMAIN" in found and "URL_LOOKALIKE_CRAFTED" not in found, text


@pytest.mark.parametrize("text", [
    "https://www.paypal.com/signin https://login.microsoftonline.com/",  # the brands' own
    "https://fonts.gstatic.com/s/roboto.woff2 https://connect.facebook.net/sdk.js",
    "https://www.mail.com/ https://www.gmx.net/",  # freemail is nobody's lookalike
    "https://www.yahoo.com.au/ https://www.google.de/",  # brands' country sites
    "https://www.ebay.at/ https://www.amazon.com.be/",  # as brands.toml lists them
    "https://com.com/ https://www.shop.com.be/",  # amazon.com.be is Amazon's, com.be is not
    "https://paypa1-secure.example/",  # no such top-level domain: nowhere to go
])
def test_what_is_no_lookalike_link(text):
    assert "URL_LOOKALIKE_DOMAIN" not in findings(mail(text=text))


def test_a_brands_label_under_a_country_it_does_not_list_is_a_lookalike():
    # brands.toml lists the countries of a brand's sites (country_tlds): the
    # same label under another country's code is no country site of its.
    found = findings(mail(text="https://paypal.co/login https://www.ebay.tk/signin"))
    assert found["URL_LOOKALIKE_DOMAIN"] == (
        "paypal.co imitates paypal.com (brand PayPal): another TLD; "
        "ebay.tk imitates ebay.com (brand eBay): another TLD")


def test_the_authors_own_domain_is_left_to_the_identity_check():
    raw = mail(text="https://www.paypa1-secure.com/login",
               sender="PayPal <service@paypa1-secure.com>")
    assert "URL_LOOKALIKE_DOMAIN" not in findings(raw)


def test_a_link_speaking_as_a_brand_that_goes_elsewhere_is_a_brand_mismatch():
    html = ('<p><a href="https://login.evil-host.com/a">Sign in to Microsoft 365</a>'
            '<a href="https://evil-host.com/b"><img src="cid:logo" alt="PayPal"></a></p>')
    assert findings(mail(html=html))["URL_BRAND_MISMATCH"] == (
        "text 'Sign in to Microsoft 365' speaks as Microsoft, goes to login.evil-host.com; "
        "picture 'PayPal' speaks as PayPal, goes to evil-host.com")


@pytest.mark.parametrize("anchor", [
    '<a href="https://www.deskmod.com/z">Zoom</a>',  # a brand's name alone is a word
    '<a href="https://news.example.com/x">Microsoft ships a new Xbox</a>',  # a headline
    '<a href="https://account.microsoft.com/">Sign in to Microsoft 365</a>',  # the brand's
    '<a href="https://www.paypal.com/"><img alt="PayPal"></a>',
])
def test_what_is_no_brand_mismatch(anchor):
    assert "URL_BRAND_MISMATCH" not in findings(mail(html=f"<p>{anchor}</p>"))


# -- QR codes ------------------------------------------------------------------------------


def test_a_qr_code_in_an_attached_picture_is_a_link_named_in_the_evidence():
    raw = mail(text="Scan to pay.", pictures=(
        ("invoice.png", "image/png", qr_png("https://paypa1-secure.example/login?id=7")),))
    found = findings(raw)
    assert found["QR_CODE_URL"] == "invoice.png: https://paypa1-secure.example/login?id=7"
    view = view_of(Message.from_bytes(raw))
    assert [link.host for link in view.links] == ["paypa1-secure.example"]


def test_qr_codes_are_found_however_the_picture_comes():
    from PIL import Image, ImageOps

    png = qr_png("https://one.example/")
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(qr_png("https://two.example/", scale=10))).convert("RGB").save(
        jpeg, "JPEG", quality=85)
    inverted = io.BytesIO()
    ImageOps.invert(Image.open(io.BytesIO(qr_png("https://three.example/"))).convert(
        "L")).save(inverted, "PNG")
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(qr_png("https://four.example/")
                                                           ).decode()
    raw = mail(html=f'<p><img src="{data_url}" alt="scan"></p>', pictures=(
        ("a.png", "image/png", png),
        ("b.jpg", "image/jpeg", jpeg.getvalue()),
        ("c.png", "image/png", inverted.getvalue()),
        # A picture declared as something else is still a picture.
        ("d.pdf", "application/pdf", qr_png("https://five.example/")),
    ))
    hosts = {link.host for link in view_of(Message.from_bytes(raw)).links}
    assert {"one.example", "two.example", "three.example", "four.example",
            "five.example"} <= hosts


def test_pictures_past_the_limits_are_named_never_decoded():
    from PIL import Image

    bomb, noise = io.BytesIO(), io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, "PNG")  # a few KB, 144 megapixels
    Image.frombytes("L", (200, 200), random.Random(1).randbytes(40000)).save(noise, "PNG")
    pictures = (("bomb.png", "image/png", bomb.getvalue()),
                ("big.png", "image/png", noise.getvalue()),
                *((f"p{i}.png", "image/png", qr_png(f"https://p{i}.example/")) for i in range(3)))
    limits = LimitsSection(image_pixels=100_000_000, image_bytes=20_000, images=2)
    config = Config(limits=limits)
    found = findings(mail(pictures=pictures), config)
    assert found["QR_SCAN_LIMIT"] == (
        "bomb.png: 12000x12000 pixels, past [limits] image_pixels (100000000); "
        f"big.png: {len(pictures[1][2])} bytes, past [limits] image_bytes (20000); "
        "p2.png: past [limits] images (2)")
    assert found["QR_CODE_URL"] == "p0.png: https://p0.example/; p1.png: https://p1.example/"


def test_decoding_stops_when_its_time_is_spent():
    from gateway import qr

    ticks = itertools.count()
    pictures = [(f"p{i}.png", qr_png(f"https://p{i}.example/")) for i in range(4)]
    # Each look at the clock is one second later: the first picture starts at
    # 1 s, the second at 2 s, which is the limit.
    scan = qr.scan(pictures, LimitsSection(image_seconds=2.0), clock=lambda: float(next(ticks)))
    assert [code.text for code in scan.codes] == ["https://p0.example/"]
    assert scan.skipped == [f"p{i}.png: past [limits] image_seconds (2s)" for i in (1, 2, 3)]


def test_broken_pictures_are_counted_not_raised():
    from gateway import qr

    png = qr_png("https://x.example/")
    broken = [("cut.png", png[:len(png) // 2]), ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50),
              ("gif.gif", b"GIF89a" + bytes(range(256)))]
    scan = qr.scan(broken, LimitsSection())
    assert scan.codes == [] and scan.unreadable == 3 and scan.skipped == []


# -- the blocklists read the same links -------------------------------------------------------


@pytest.fixture(scope="module")
def blocklist(lab_dir):
    from gateway.lab.dns import KnotServer, Zone

    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (see .ci/run)")
    zones = [Zone("dbl.test").add("phish.example", "A", "127.0.1.4")
             .add("formgrab.example", "A", "127.0.1.4")]
    with KnotServer(lab_dir / "knot-links", zones) as server:
        yield server


def test_qr_targets_and_form_actions_feed_the_url_blocklists(tmp_path, blocklist):
    from gateway.checks.dnsbl import DnsblCheck
    from gateway.config import DnsSection, PolicySection

    rules = tmp_path / "lists.toml"
    rules.write_text('[[dnsbl]]\nname = "TEST_DBL"\nzone = "dbl.test"\nlookup = "url_host"\n'
                     'codes = { "127.0.1.4" = 4.5 }\n')
    check = DnsblCheck.from_config(Config(
        dns=DnsSection(nameservers=("127.0.0.1",), port=blocklist.port),
        policy=PolicySection(rules=[str(rules)])))
    raw = mail(html='<form action="https://formgrab.example/p"><input name="pw"></form>',
               pictures=(("scan.png", "image/png", qr_png("https://login.phish.example/x")),))
    report = check.run(Message.from_bytes(raw), CheckContext())
    assert {s.name: s.evidence for s in report.symbols} == {
        "TEST_DBL": "formgrab.example (127.0.1.4); phish.example (127.0.1.4) in dbl.test"}


# -- through Postfix ------------------------------------------------------------------------


def _held(url: str, subject: str):
    from gateway.quarantine.store import Filters, QuarantineStore
    from tests.helpers import wait_until

    store = QuarantineStore(url)
    return wait_until(lambda: [r for r in store.records(Filters(subject=subject))],
                      what=f"the message {subject!r} in the quarantine")


def test_a_qr_code_phish_is_held_naming_its_target_through_postfix(
        postfix, sink, gateway_milter, tmp_path):
    from tests.helpers import send

    url = f"sqlite:///{tmp_path}/quarantine.db"
    gateway_milter(f'[pipeline]\nchecks = ["headers", "links"]\n[quarantine]\nurl = "{url}"\n')
    tag = uuid.uuid4().hex
    target = "https://paypa1-secure.com/login?case=8812"
    raw = mail(text="Your mailbox is full. Scan the attached code to keep your messages.",
               subject=f"mailbox {tag}",
               pictures=(("scan.png", "image/png", qr_png(target)),))
    send(postfix, raw)
    (record,) = _held(url, f"mailbox {tag}")
    assert sink.find(tag, timeout=1) is None
    evidence = {s["name"]: s["evidence"] for s in record.symbols}
    assert evidence["QR_CODE_URL"] == f"scan.png: {target}"
    assert evidence["URL_LOOKALIKE_DOMAIN"] == ("paypa1-secure.com imitates paypal.com (brand "
                                                "PayPal): a word added")


def test_a_lying_link_is_named_through_postfix(postfix, sink, gateway_milter, tmp_path):
    from tests.helpers import send

    url = f"sqlite:///{tmp_path}/quarantine.db"
    gateway_milter(f'[pipeline]\nchecks = ["headers", "links"]\n[quarantine]\nurl = "{url}"\n')
    tag = uuid.uuid4().hex
    html = ('<p>Please confirm your details at <a href="https://secure-check.example/u/77">'
            'https://portal.acme-corp.com/signin</a></p>')
    send(postfix, mail(html=html, subject=f"confirm {tag}"))
    (record,) = _held(url, f"confirm {tag}")
    assert {s["name"]: s["evidence"] for s in record.symbols}["LINK_TEXT_MISMATCH"] == (
        "text 'https://portal.acme-corp.com/signin' shows acme-corp.com, goes to "
        "secure-check.example")
    # Showing a brand's address as well, it is refused.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(postfix, mail(html=html.replace("portal.acme-corp.com", "www.paypal.com"),
                           subject=f"brand {tag}"))
    assert refused.value.smtp_code == 550
    # The same message with an honest link is delivered, the symbol not named.
    honest = html.replace("https://secure-check.example/u/77",
                          "https://portal.acme-corp.com/signin")
    send(postfix, mail(html=honest, subject=f"honest {tag}"))
    delivery = sink.find(f"honest {tag}")
    assert delivery is not None
    assert "LINK_TEXT_MISMATCH" not in delivery.header("X-Spam-Status")


def test_a_crafted_lookalike_link_is_held_a_near_one_delivered_through_postfix(
        postfix, sink, gateway_milter, tmp_path):
    from tests.helpers import send

    url = f"sqlite:///{tmp_path}/quarantine.db"
    gateway_milter(f'[pipeline]\nchecks = ["headers", "links"]\n[quarantine]\nurl = "{url}"\n')
    tag = uuid.uuid4().hex
    html = '<p>Your statement is ready: <a href="{}">view it</a></p>'

    def dated(raw: bytes) -> bytes:  # a well-formed message: only the link is in question
        return (b"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <" +
                uuid.uuid4().hex.encode() + b"@example.org>\r\n" + raw)

    send(postfix, dated(mail(html=html.format("https://www.paypall.com/statement?id=4411"),
                             subject=f"slip {tag}")))
    (record,) = _held(url, f"slip {tag}")
    assert sink.find(f"slip {tag}", timeout=1) is None
    assert {s["name"]: s["evidence"] for s in record.symbols}["URL_LOOKALIKE_CRAFTED"] == (
        "paypall.com imitates paypal.com: a slip of the keyboard: l doubled")
    send(postfix, dated(mail(html=html.format("https://netflix.top/billing"),
                             subject=f"generic {tag}")))
    (record,) = _held(url, f"generic {tag}")
    assert "URL_LOOKALIKE_CRAFTED" in {s["name"] for s in record.symbols}
    # A company's own name one letter from a brand's is marked, not held.
    send(postfix, dated(mail(html=html.format("http://www.lindows.com/news"),
                             subject=f"near {tag}")))
    delivery = sink.find(f"near {tag}")
    assert delivery is not None
    status = delivery.header("X-Spam-Status")
    assert "URL_LOOKALIKE_DOMAIN" in status and "URL_LOOKALIKE_CRAFTED" not in status


def test_a_picture_too_large_for_pillow_is_named_not_counted_unreadable():
    from gateway import qr
    from tests.hostile import png

    scan = qr.scan([("huge.png", png(100_000, 100_000, b"\0" * 1000))], LimitsSection())
    assert scan.unreadable == 0
    assert scan.skipped == ["huge.png: more than 178956970 pixels, past [limits] image_pixels "
                            "(40000000)"]


def test_our_domains_and_brands_come_from_the_identity_settings(tmp_path):
    from gateway.config import IdentitySection

    brands = tmp_path / "brands.toml"
    brands.write_text('[brand.acmebank]\nnames = ["Acme Bank"]\ndomains = ["acmebank.com"]\n')
    config = Config(identity=IdentitySection(org_domains=["example-corp.com"],
                                             brands=[str(brands)]))
    text = "https://examp1e-corp.com/hr https://acmebank-secure.com/ https://paypa1.com/"
    assert findings(mail(text=text), config)["URL_LOOKALIKE_DOMAIN"] == (
        "examp1e-corp.com imitates example-corp.com (our domain): a confusable spelling; "
        "acmebank-secure.com imitates acmebank.com (brand Acme Bank): a word added")


def test_a_link_imitating_a_known_correspondents_domain_is_a_lookalike():
    from gateway.correspondents import Snapshot

    class Memory:  # the identity check's memory as a worker reads it
        def snapshot(self):
            return Snapshot(known_domains=frozenset({"mueller-logistik.de", "gmail.com"}),
                            read=True)

        def close(self):
            pass

    check = LinksCheck(Config(), Ruleset(), reader=Memory())
    raw = mail(text="https://mueller-logistlk.de/invoice https://www.mueller-logistik.de/ "
                    "https://gmall.com/")
    report = check.run(Message.from_bytes(raw), CheckContext())
    assert {s.name: s.evidence for s in report.symbols} == {
        "URL_LOOKALIKE_DOMAIN": "mueller-logistlk.de imitates mueller-logistik.de (a known "
                                "correspondent's domain): a typo (edit distance 1); "
                                "gmall.com imitates gmail.com (brand Google): a typo (edit "
                                "distance 1)"}


def test_a_known_correspondent_sending_a_link_trick_is_not_discounted():
    from gateway.paths import DEFAULT_RULES
    from gateway.policy import Policy
    from gateway.ruleset import load_rules
    from gateway.symbols import Symbol
    from gateway.verdict import PipelineResult

    policy = Policy(load_rules([DEFAULT_RULES]))

    def decide(*names: str):
        symbols = tuple(Symbol(n, 0.0) for n in names)
        return policy.decide(PipelineResult(symbols=symbols, runs=()))

    tricked = decide("BAYES_00", "KNOWN_CORRESPONDENT", "URL_USERINFO_TRICK")
    (meta,) = [s for s in tricked.symbols if s.name == "LINK_TRICK_FROM_KNOWN_SENDER"]
    assert meta.score == 2.0
    assert tricked.action == "quarantine"  # -2.0 - 2.0 + 8.0 + 2.0
    assert "LINK_TRICK_FROM_KNOWN_SENDER" not in {
        s.name for s in decide("KNOWN_CORRESPONDENT", "URL_SHORTENER").symbols}


# -- the console lists every link, text beside target ------------------------------------


LYING = ("<html><head><meta http-equiv='refresh' content='9; url=https://refresh.example/r'>"
         "<style>p { background: url(https://css.example/bg.png) }</style></head><body>"
         "<p><a href='https://evil-host.com/x'>https://www.paypal.com/signin</a> "
         "<img srcset='https://img.example/a.png 1x, https://img.example/b.png 2x'>"
         "<form action='https://harvest.example/post'></form>"
         "<a href=\"javascript:location='https://js.example/a b c'\">open</a></p></body></html>")


def test_the_console_preview_lists_each_link_with_its_text_and_marks():
    from gateway.web.preview import analyse

    raw = mail(html=LYING)
    shown = {j.found.url: j for j in analyse(raw).links}
    lying = shown["https://evil-host.com/x"]
    assert lying.found.text == "https://www.paypal.com/signin"
    assert lying.link is not None and lying.link.host == "evil-host.com"
    assert {name for name, _ in lying.marks} == {"LINK_TEXT_MISMATCH", "URL_BRAND_MISMATCH"}
    assert {j.found.where for j in shown.values()} >= {"refresh", "css", "srcset", "action"}
    assert "javascript:location='https://js.example/a b c'" in shown  # whole, never cut
    assert shown["https://harvest.example/post"].marks == ()


def test_the_message_page_shows_text_beside_target_and_marks_mismatches(web):
    from tests.test_web import login, put_raw

    app, store, _ = web
    identifier = put_raw(store, mail(html=LYING, subject="lying links"))
    client = app.test_client()
    login(client, "ann")
    page = client.get(f"/quarantine/{identifier}").text
    assert ('<li class="marked"><span class="shows">https://www.paypal.com/signin</span> → '
            '<code>https://evil-host.com/x</code>') in page
    assert 'title="text &#39;https://www.paypal.com/signin&#39; shows paypal.com, goes to ' \
           'evil-host.com">LINK_TEXT_MISMATCH</span>' in page
    assert "javascript:location=&#39;https://js.example/a b c&#39;" in page
