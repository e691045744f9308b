"""gateway.confusables and gateway.lookalike: one key per spelling a reader
cannot tell apart, and which domain or brand a name imitates."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.confusables import (
    MAX_TEXT,
    confusable,
    fold,
    mixed_script,
    name_keys,
    name_tokens,
    skeleton,
)
from gateway.lookalike import (
    DEFAULT_BRANDS,
    DEFAULT_FREEMAIL,
    HOST_CACHE,
    DomainIndex,
    compare,
    is_freemail,
    keyboard_slip,
    load_brands,
    load_freemail,
    registrable,
)
from gateway.schema import ConfigError

# -- confusables ------------------------------------------------------------------------------


def test_skeleton_is_uts39s():
    # confusables.txt: DIGIT ONE -> l, CYRILLIC SMALL LETTER A -> a, m -> rn
    assert skeleton("paypa1") == "paypal"
    assert skeleton("p\u0430ypal") == "paypal"
    assert skeleton("microsoft") == skeleton("rnicrosoft")
    assert skeleton("IBM") != skeleton("ibm")  # the standard keeps case


@pytest.mark.parametrize("spelling", [
    "PayPal", "PAYPAL", "p\u0430ypal", "paypa1", "\uff30\uff41\uff59\uff50\uff41\uff4c",
    "pay\u200bpal", "pay\u00adpal", "PayPa\u217c",
])
def test_fold_gives_one_key_to_every_spelling(spelling):
    assert fold(spelling) == fold("paypal")
    assert confusable(spelling, "paypal")


def test_fold_keeps_different_names_apart():
    assert not confusable("paypal", "paypai")
    assert fold("google") != fold("goggle")


def test_name_tokens_split_words_camel_case_and_drop_accents():
    assert name_tokens("Jos\u00e9  SMITH") == ("jose", fold("smith"))
    assert name_tokens("PayPalSecurity") == ("pay", "pal", "security")
    assert name_tokens("J. Smith (CEO)") == ("j", fold("smith"), "ceo")
    assert name_tokens("") == ()


def test_name_keys_meet_across_case_and_homoglyphs():
    assert name_keys("John Smith") & name_keys("j\u043ehn  SM\u0456TH!")
    assert name_keys("IBM") & name_keys("lBM")  # capital I looks like l
    assert name_keys("IBM") & name_keys("ibm")
    assert not name_keys("John Smith") & name_keys("Joan Smith")


def test_mixed_script():
    assert mixed_script("p\u0430ypal")  # Latin and Cyrillic
    assert not mixed_script("paypal")
    assert not mixed_script("b\u00fccher")
    assert not mixed_script("\u6771\u4eactokyo")  # Han with Latin is allowed


def test_hostile_text_is_bounded():
    huge = "\u0430" * 2_000_000
    started = time.process_time()
    assert len(fold(huge)) <= MAX_TEXT * 2
    name_keys(huge + " x")
    name_tokens("a " * 1_000_000)
    mixed_script(huge)
    assert time.process_time() - started < 5  # generous: bounded, not fast


# -- domains ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "technique"), [
    ("p\u0430ypal.com", "confusable"),
    ("xn--pypal-4ve.com", "confusable"),  # the same, as it arrives in A-labels
    ("paypa1.com", "confusable"),
    ("paypall.com", "typo"),
    ("paypa.com", "typo"),
    ("pyapal.com", "typo"),  # swapped neighbours: distance 1
    ("pay-pal.com", "hyphen"),
    ("paypal-secure.com", "affix"),
    ("paypal-alerts.example", "affix"),
    ("securepaypal.net", "affix"),
    ("paypa1-alerts.example", "affix"),
    ("paypal.co", "tld"),
    ("paypal.com.account-check.example", "subdomain"),
    ("paypal-com.net", "dots"),
    ("paypalcom.info", "dots"),
])
def test_lookalike_techniques(host, technique):
    found = compare(host, "paypal.com")
    assert found is not None and found.technique == technique, found
    assert found.imitates == "paypal.com"
    assert "imitates paypal.com" in found.describe()


@pytest.mark.parametrize("host", [
    "paypal.com", "mail.paypal.com", "PAYPAL.COM.", "example.org", "paypalace.org",
    "zoom-dental.com", "1.2.3.4", "", "." * 600, "a." * 400 + "com",
])
def test_not_lookalikes(host):
    assert compare(host, "paypal.com") is None
    assert compare(host, "zoom.us") is None


def test_typo_distance_depends_on_length():
    assert compare("ibn.com", "ibm.com") is None  # 3 letters: no typo distance at all
    assert compare("apple.com", "ample.com") is not None  # 5: one edit
    assert compare("apxle2.com", "apple.com") is None  # 5: not two
    assert compare("rnicrosotf.com", "microsoft.com") is not None  # skeleton + swap
    assert compare("micrsft.com", "microsoft.com") is not None  # 9: two edits
    assert compare("nmrc.ie", "hmrc.gov.uk") is None  # 4 letters, though its skeleton has 5


def test_index_names_the_owner_and_prefers_the_listed_domain():
    index = DomainIndex({"acme-widgets.com": "our domain", "paypal.com": "brand PayPal",
                         "paypal.de": "brand PayPal"})
    found = index.match("paypal.net")
    assert found is not None and found.imitates == "paypal.com"
    assert found.owner == "brand PayPal"
    assert index.owner("www.acme-widgets.com") == "our domain"
    assert index.match("acme-widgets.com") is None
    lookalike = index.match("acme-wldgets.com")
    assert lookalike is not None and lookalike.owner == "our domain"


def test_registrable_reads_a_labels_and_public_suffixes():
    assert registrable("mail.paypal.co.uk") == "paypal.co.uk"
    assert registrable("XN--PYPAL-4VE.com.") == "p\u0430ypal.com"
    assert registrable("") == ""


# -- brands and freemail ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def brands():
    return load_brands([DEFAULT_BRANDS])


def test_shipped_brands(brands):
    assert len(brands.brands) >= 30
    paypal = brands.owner("www.paypal.com")
    assert paypal is not None and paypal.title == "PayPal"
    assert brands.owner("paypa1.com") is None
    found = DomainIndex(brands.domains()).match("micros0ft-support.com")
    assert found is not None and found.owner == "brand Microsoft"


@pytest.mark.parametrize(("name", "brand"), [
    ("PayPal", "paypal"), ("PayPal Security", "paypal"), ("P a y P a l", "paypal"),
    ("P\u0410YPAL Team", "paypal"), ("Microsoft 365 Alerts", "microsoft"),
    ("Amazon.com", "amazon"), ("Apple Support", "apple"), ("Bank of America Alerts",
                                                          "bankofamerica"),
    ("Chase Miller", None), ("Tom via LinkedIn", None), ("John Smith", None),
    ("Groups", None), ("Pineapple Express", None), ("", None),
])
def test_display_names_speaking_as_a_brand(brands, name, brand):
    found = brands.speaking_as(name)
    assert (found.brand.key if found else None) == brand


def test_brand_mentioned_in_a_subject(brands):
    found = brands.mentioned_in("Your PayPal account is limited")
    assert found is not None and found.brand.key == "paypal"
    assert brands.mentioned_in("Pineapple recipes") is None
    both = brands.mentions("PayPal or Microsoft? PAYPAL, again")
    assert [m.brand.key for m in both] == ["paypal", "microsoft"]


def test_sites_add_and_replace_brands(tmp_path, brands):
    own = tmp_path / "brands.toml"
    own.write_text('[brand.acmepay]\nnames = ["AcmePay"]\ndomains = ["acmepay.example"]\n'
                   '[brand.paypal]\nenabled = false\n')
    merged = load_brands([DEFAULT_BRANDS, own])
    assert merged.speaking_as("AcmePay Billing") is not None
    assert merged.speaking_as("PayPal") is None
    assert len(merged.brands) == len(brands.brands)


def test_bad_brands_files_say_where(tmp_path):
    bad = tmp_path / "brands.toml"
    bad.write_text('[brand.x]\nnames = "X"\ndomains = ["x.example"]\ncolour = 1\n[other]\n')
    with pytest.raises(ConfigError) as raised:
        load_brands([bad, tmp_path / "missing.toml"])
    text = "\n".join(raised.value.problems)
    assert "brand.x.names" in text and "brand.x.colour: unknown key" in text
    assert "[other]: unknown section" in text and "missing.toml: brands file not found" in text


def test_freemail(tmp_path):
    freemail = load_freemail([DEFAULT_FREEMAIL], extra=["Mail.Example.net"])
    assert len(freemail) > 4000
    assert is_freemail("gmail.com", freemail) and is_freemail("eu.gmx.net", freemail)
    assert is_freemail("example.net", freemail)  # a site's addition
    assert not is_freemail("paypal.com", freemail) and not is_freemail("", freemail)
    with pytest.raises(ConfigError, match="freemail list not found"):
        load_freemail([tmp_path / "none.txt"])


# -- the public suffix list's reading of the brands' domains ---------------------------------


def test_every_shipped_brand_domain_is_read_by_the_public_suffix_list(brands):
    import tomllib

    from gateway.mail import is_public_suffix

    shipped = tomllib.loads(DEFAULT_BRANDS.read_text(encoding="utf-8"))["brand"]
    registrables = set()
    for key, table in shipped.items():
        for domain in table["domains"]:
            assert not is_public_suffix(domain), f"brand.{key}: {domain} is a public suffix"
            owner = brands.owner(domain)
            assert owner is not None and owner.key == key, (key, domain)
            parent = registrable(domain)
            if parent == domain:
                registrables.add(domain)
                continue
            # A name under someone else's registrable domain is the brand's
            # alone: its parent is nobody's here, and nothing imitates it.
            assert brands.owner(parent) is None, f"brand.{key}: {domain} claims {parent}"
            assert not any(parent == d or d.endswith("." + parent) for d in table["domains"]
                           if d != domain), f"brand.{key}: {domain} is under a listed domain"
    # Only registrable domains are imitated: a name's first label is compared.
    assert set(DomainIndex(brands.domains(), brands=brands).owners) == registrables
    assert brands.owner("amazon.com.be").key == "amazon"
    assert brands.owner("www.amazon.com.be").key == "amazon"


@pytest.mark.parametrize("host", ["com.com", "com.be", "shop.com.be", "com.co", "co.com"])
def test_no_bare_second_level_label_is_a_brands_or_imitates_one(brands, host):
    # amazon.com.be read as its registrable com.be once made com.com a
    # lookalike of Amazon (another TLD), and every name under com.be Amazon's.
    assert brands.owner(host) is None
    assert DomainIndex(brands.domains(), brands=brands).match(host) is None


def test_a_listed_name_is_owned_with_its_subdomains_never_its_parent(tmp_path):
    own = tmp_path / "brands.toml"
    own.write_text('[brand.acme]\nnames = ["Acme"]\n'
                   'domains = ["acme.example", "acme.com.be", "shop.partner.example"]\n')
    brands = load_brands([own])
    assert [brands.owner(h) is not None for h in (
        "acme.example", "mail.acme.example", "acme.com.be", "www.acme.com.be",
        "shop.partner.example", "com.be", "other.com.be", "partner.example")] == [
        True, True, True, True, True, False, False, False]
    index = DomainIndex(brands.domains(), brands=brands)
    assert index.match("acme.com.be") is None and index.match("shop.partner.example") is None
    assert index.match("com.com") is None and index.match("partner.net") is None
    assert index.match("acme-secure.com").imitates == "acme.example"


def test_a_public_suffix_is_no_brands_domain(tmp_path):
    own = tmp_path / "brands.toml"
    own.write_text('[brand.x]\nnames = ["X"]\ndomains = ["x.example", "co.uk", "github.io"]\n'
                   '[brand.y]\nnames = ["Y"]\ndomains = ["y.example", "-"]\n'
                   'country_tlds = ["de", "germany"]\n')
    with pytest.raises(ConfigError) as raised:
        load_brands([own])
    assert raised.value.problems == [
        f"{own}: brand.x.domains: co.uk is a public suffix: anyone registers names under it; "
        "list the brand's own domains",
        f"{own}: brand.x.domains: github.io is a public suffix: anyone registers names under "
        "it; list the brand's own domains",
        f"{own}: brand.y.country_tlds: expected country-code TLDs such as [\"de\", \"uk\"], "
        "or [\"*\"] for every one"]


# -- a brand's country sites -------------------------------------------------------------------


@pytest.mark.parametrize(("host", "brand"), [
    ("www.google.de", "google"), ("google.com.au", "google"), ("google.co.jp", "google"),
    ("ebay.at", "ebay"), ("www.ebay.com.sg", "ebay"), ("yahoo.com.au", "yahoo"),
    ("amazon.be", "amazon"),
    # Not its country sites: a country it does not list, a generic TLD, a
    # suffix a company runs (anyone's blog), another label.
    ("ebay.tk", None), ("paypal.co", None), ("paypal.top", None), ("google.blogspot.com", None),
    ("ebay-secure.de", None), ("g00gle.de", None),
])
def test_a_brands_country_sites_are_its_own(brands, host, brand):
    owner = brands.owner(host)
    assert (owner.key if owner else None) == brand
    found = DomainIndex(brands.domains(), brands=brands).match(host)
    assert (found is None) is (brand is not None), found
    if brand is None and host.count(".") == 1 and "-" not in host and "0" not in host:
        assert found.technique == "tld"


def test_country_site_reads_registry_suffixes_only():
    from gateway.lookalike import country_site

    assert country_site("www.yahoo.com.au") == ("yahoo", "au")
    assert country_site("google.de") == ("google", "de")
    assert country_site("paypal.com") is None
    assert country_site("x.github.io") is None  # github.io: a company's suffix
    assert country_site("yahoo.xn--p1ai") is None


# -- freemail providers imitate no one -------------------------------------------------------


@pytest.fixture(scope="module")
def indexes():
    """The lookalike indexes of both checks: ours and the brands' (no memory)."""
    from gateway.checks.identity import IdentityCheck
    from gateway.checks.links import LinksCheck
    from gateway.config import Config
    from gateway.correspondents import Snapshot

    org = frozenset({"acme.example"})
    identity = IdentityCheck.from_config(Config())
    yield {"identity": identity._domains(org, Snapshot())[0],
           "links": LinksCheck.from_config(Config()).index(org)}
    identity.close()


@pytest.mark.parametrize("check", ["identity", "links"])
@pytest.mark.parametrize("host", ["mail.com", "email.com", "gmx.de", "yahoo.com.au",
                                  "hotmail.co.uk", "outlook.de"])
def test_a_freemail_provider_imitates_no_other(indexes, check, host):
    # mail.com is one letter from gmail.com: anyone can have an address at both.
    index = indexes[check]
    assert index.match(host) is None
    assert index.match("gmial.com").imitates == "gmail.com"  # not on the list: a typo


def test_a_freemail_provider_imitates_no_known_correspondents_provider(brands):
    freemail = load_freemail([DEFAULT_FREEMAIL])
    index = DomainIndex({"gmx.com": "a known correspondent's domain"}, brands=brands,
                        freemail=freemail)
    assert index.match("gmx.net") is None and index.match("gmx.de") is None
    assert index.match("gmx-mail.com").imitates == "gmx.com"


@pytest.mark.parametrize(("written", "meant", "slip"), [
    ("paypl", "paypal", "a left out"),
    ("paypall", "paypal", "l doubled"),
    ("paypaol", "paypal", "o struck beside its neighbour"),  # o is beside l
    ("papyal", "paypal", "yp swapped"),
    ("paypak", "paypal", "k for its neighbour l"),
    ("lindows", "windows", ""),  # l is nowhere near w: a name chosen
    ("qmail", "gmail", ""),
    ("paypxal", "paypal", ""),  # x beside neither p nor a
    ("paypal", "paypal", ""),
    ("ppayal", "paypal", ""),  # two edits
])
def test_keyboard_slips_are_the_typosquatters_typos(written, meant, slip):
    assert keyboard_slip(written, meant) == (f"a slip of the keyboard: {slip}" if slip else "")


@pytest.mark.parametrize(("host", "crafted"), [
    ("paypa1.com", True),  # confusable
    ("pay-pal.com", True),  # hyphens inserted
    ("paypal-com.net", True),  # its dots as hyphens
    ("paypal.com.evil.top", True),  # inside another domain
    ("paypal-secure.com", True),  # a bait word after a hyphen
    ("securepaypal.com", False),  # a word run into the name: product names are made so
    ("paypall.com", True),  # a keyboard slip
    ("payp4l.com", True),  # the digit 4 for a
    ("payp9l.com", False),  # a digit like no a
    ("paypol.com", False),  # a near spelling, no slip
    ("paypal.top", True),  # its name under a generic TLD brands keep no sites under
    ("paypal.info", True),
    ("paypal.org", False),  # under .com, .net, .org and countries' codes brands own many
    ("paypal.co", False),
    ("paypal.co.uk", False),
    ("paypal.xn--p1ai", False),  # an internationalised TLD: some are countries' codes
])
def test_crafted_forms(host, crafted):
    found = compare(host, "paypal.com")
    assert found is not None and bool(found.crafted) is crafted


def test_a_brands_site_under_a_generic_tld_is_its_own_a_short_name_there_is_near(brands):
    index = DomainIndex(brands.domains(), brands=brands)
    for host in ("www.amazon.jobs", "netflix.shop", "dropbox.tech"):  # listed as theirs
        assert index.match(host) is None, host
    assert index.match("netflix.top").crafted
    ups = index.match("ups.shop")
    assert ups is not None and ups.technique == "tld" and not ups.crafted


def test_brands_own_their_static_and_short_domains(brands):
    # Every HTML newsletter loads Google's fonts from fonts.gstatic.com, one
    # key from Booking's bstatic.com; Facebook's and Apple's own short and
    # script hosts are theirs too, not lookalikes of facebook.com, apple.com.
    for host, key in (("fonts.gstatic.com", "google"), ("connect.facebook.net", "meta"),
                      ("fb.me", "meta"), ("apple.co", "apple"), ("res-1.cdn.office.net",
                                                                 "microsoft")):
        owner = brands.owner(host)
        assert owner is not None and owner.key == key, host



def test_the_host_caches_stay_within_their_size():
    """A stream of new host names (spam's throwaway domains) fills each
    process's host caches up to HOST_CACHE, no further: at 65,536 they grew
    a worker by 40 MB."""
    from gateway import lookalike, mail

    for index in range(HOST_CACHE + 500):
        lookalike.registrable(f"host{index}.stream{index}.example")
        lookalike.country_site(f"host{index}.example")
    for cached in (lookalike.unicode_host, lookalike.registrable, lookalike.country_site,
                   mail.registrable_domain):
        assert cached.cache_info().currsize <= HOST_CACHE, cached
    assert lookalike.registrable.cache_info().currsize == HOST_CACHE


@given(st.lists(st.one_of(st.text(alphabet="abcxyz019-_", min_size=0, max_size=70),
                          st.sampled_from(["xn--pypal-4ve", "xn--", "xn--zz-", "xn--80ak6aa92e",
                                           "-a", "a-", "ab--cd", ""])),
                min_size=1, max_size=6).map(".".join))
@settings(derandomize=True, database=None, deadline=None, max_examples=600)
def test_a_lower_case_ascii_host_reads_as_idna_reads_it(host):
    import idna

    from gateway.hosts import ascii_host

    def through_idna(written: str) -> str:  # ascii_host before its fast path
        try:
            return idna.encode(written, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return written

    for written in (host, host.upper(), f"{host}.", f"{host}.\u0440"):
        assert ascii_host(written) == through_idna(written)
