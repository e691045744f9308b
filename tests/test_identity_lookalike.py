"""gateway.confusables and gateway.lookalike: one key per spelling a reader
cannot tell apart, and which domain or brand a name imitates."""

from __future__ import annotations

import time

import pytest

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
    DomainIndex,
    compare,
    is_freemail,
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
