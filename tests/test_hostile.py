"""Hostile mail against the gateway (issue 9): the parsers stay bounded, no
check fails on content, and no hostile shape lets a spoofed p=reject author
through. Messages come from tests/hostile.py."""

from __future__ import annotations

import pytest

from gateway import mime
from gateway.message import Message
from tests import hostile

# -- regressions found by the builders -------------------------------------------------


def test_obs_syntax_from_on_the_first_line_is_a_field_not_an_mbox_separator():
    message = Message.from_bytes(hostile.header_obs_from())
    assert message.headers("From") == [hostile.SPOOFED]
    mbox = Message.from_bytes(b"From ceo@good.test Tue Nov 24 09:00:00 2026\r\n"
                              + hostile.message())
    assert mbox.headers("From") == [hostile.SPOOFED]
    assert mbox.fields.fields[0].name == "From"


@pytest.mark.parametrize(("build", "leaf"), [
    (hostile.ctype_rfc2231_mixed_sections, "text/plain"),
    (hostile.ctype_rfc2231_long_section, "text/plain"),
    (hostile.ctype_rfc2231_odd, "application/octet-stream"),
])
def test_rfc2231_parameters_the_stdlib_cannot_decode_do_not_break_the_parse(build, leaf):
    """'name*' beside 'name*0' (TypeError in decode_params) and a section
    number past int()'s 4,300 digits (ValueError) made every get_param raise,
    the parser's own get_boundary included: limits and bayes failed."""
    parsed = mime.parse_bytes(build())
    assert parsed.is_multipart()
    for part in parsed.walk():
        part.get_params()
        part.get_params(header="content-disposition")
        part.get_filename()
        part.get_content_charset()
        part.get_boundary()
    assert [p.get_content_type() for p in parsed.get_payload()] == [leaf]


def test_rfc2231_parameters_that_decode_are_kept():
    raw = hostile.mime_message(
        "multipart/mixed; boundary=a",
        "--a\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; "
        "filename*0*=utf-8''%E2%82%AC; filename*1=.txt\r\n\r\nx\r\n--a--\r\n")
    assert [p.get_filename() for p in mime.parse_bytes(raw).walk()] == [None, "€.txt"]
