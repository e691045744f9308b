"""Hostile mail against the gateway (issue 9): the parsers stay bounded, no
check fails on content, and no hostile shape lets a spoofed p=reject author
through. Messages come from tests/hostile.py."""

from __future__ import annotations

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
