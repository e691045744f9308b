"""Previews of hostile held mail: bounded work in the console and in
``gateway quarantine show`` (issue 23 #2: 58 KiB of ``<a `` took 69 s in
html.parser, a 2 MiB message held a console thread for good), the HTML
trimmed before the sanitizer's parser (gateway.web.boundhtml), and the
worker processes that make previews under a deadline (gateway.web.render).

Times here are generous limits that only a hang can reach; what is asserted
is the behaviour: a page with a truncation notice, a stopped worker, the
same sanitized output."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.config import LimitsSection
from gateway.web.boundhtml import MAX_ATTRIBUTES, MAX_FORMATTING, MAX_OPEN, bound_html
from gateway.web.preview import MAX_HEADERS, analyse, sanitize_html
from gateway.web.render import FAILURE_KEPT, Renderer
from tests.test_web import gateway, login, put_raw
from tests.test_web import web as web  # the fixture

MIB = 1024 * 1024


def html_message(html: str, tag: str = "hostile") -> bytes:
    return (f"From: eve@example.org\r\nTo: bob@example.net\r\nSubject: {tag}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            f"<p>Invoice {tag}</p>{html}").encode()


# What made the old preview, or the sanitizer's parser, quadratic; 2 MiB each.
PATHOLOGICAL = {
    "unclosed a": "<a " * (2 * MIB // 3),
    "distinct attributes": "<a " + " ".join(f"x{i}" for i in range(2 * MIB // 8)) + ">",
    "attributes after <": "<a " + " ".join(f"<x{i}" for i in range(2 * MIB // 8)) + ">",
    "formatting": "".join(f"<b x={i}>t" for i in range(2 * MIB // 10)),
    "nesting": "<div>" * (2 * MIB // 5),
    "paragraph formatting": "".join(f"<p><font color=#{i:06x}></p>" for i in
                                    range(2 * MIB // 30)),
}


def finishes(work, seconds: float = 120.0):
    """work()'s result, or a failure if it has not returned within ``seconds``
    (a hang, not slowness: the bound is a hundred times the usual time)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"still running after {seconds:g} s"
    return result[0]


# -- the HTML trimmed for the parser -------------------------------------------------------

def test_bound_html_passes_ordinary_html_unchanged():
    ordinary = ('<!doctype html><html><head><style>p > b { color: red }</style>'
                '<script>if (a < b && c > d) {}</script></head><body>'
                '<!-- a <b> in a comment --><table><tr><td align="center" title="1 > 0">'
                '<font face=Arial><b>Hi</b></font> <img src="cid:x" alt=\'a > b\'><br/>'
                '</td></tr></table><p>2 < 3 and <3</p></body></html>')
    assert bound_html(ordinary).html == ordinary
    cut = ordinary + '<a href="http://unfinished.example'
    assert bound_html(cut).html == ordinary  # the parser drops a tag cut off by the end


def test_bound_html_caps_open_elements_formatting_and_attributes():
    nested = bound_html("<div>" * (MAX_OPEN + 500) + "deep")
    assert nested.html.count("<div>") == MAX_OPEN and nested.dropped_tags == 500
    assert nested.html.endswith("deep")
    formatting = bound_html("".join(f"<b x={i}>t" for i in range(MAX_FORMATTING + 10)))
    assert formatting.html.count("<b ") == MAX_FORMATTING and formatting.dropped_tags == 10
    closed = bound_html("<b>t</b>" * (MAX_FORMATTING * 4))  # closed ones do not count
    assert closed.dropped_tags == 0
    attributes = bound_html('<a title="x>y" ' + " ".join(f"a{i}=1" for i in range(100)) + ">t")
    assert attributes.cut_attributes == 100 + 1 - MAX_ATTRIBUTES
    assert attributes.html.startswith('<a title="x>y" a0=1') and attributes.html.endswith(">t")
    closing = bound_html("<b>t</b " + " ".join(f"a{i}" for i in range(100)) + ">")
    assert closing.html == "<b>t</b>" and closing.cut_attributes == 100 - MAX_ATTRIBUTES
    images = bound_html('<img src="http://x/1"><img src=data:image/png;base64,AA><img SRC=//y>')
    assert images.remote_images == 2


@pytest.mark.parametrize("kind", sorted(PATHOLOGICAL))
def test_the_sanitizer_output_of_pathological_html_is_bounded(kind):
    html = PATHOLOGICAL[kind][:256 * 1024]
    assert bound_html(html).html != html  # trimmed: what made the parser quadratic is gone
    clean = finishes(lambda: sanitize_html(html))
    assert "x1=" not in clean.html and "color=" not in clean.html.replace('color="#', "")


def test_ordinary_mail_keeps_its_formatting():
    html = ('<p style="color:red">Hello <b>Bob</b></p><a href="https://x.example/">link</a>'
            '<img src="https://tracker.example/p.gif"><script>alert(1)</script>'
            '<table><tr><td><font color="#ff0000">sale</font></td></tr></table>')
    assert bound_html(html).html == html
    clean = sanitize_html(html)
    assert clean.html.startswith('<p style="color:red">Hello <b>Bob</b></p><a rel=')
    assert '<font color="#ff0000">sale</font>' in clean.html
    assert "alert" not in clean.html and "tracker" not in clean.html
    assert clean.blocked_images == 1


# -- what a preview reads ------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(PATHOLOGICAL))
def test_a_2_mib_pathological_message_is_analysed_in_bounded_work(kind):
    shown = finishes(lambda: analyse(html_message(PATHOLOGICAL[kind])))
    assert shown.html is not None and shown.html_truncated
    assert len(shown.html) == shown.html_bytes == 256 * 1024
    assert "Invoice hostile" in shown.text and shown.text_from_html


def test_a_message_with_more_header_fields_than_the_table_shows_is_previewed():
    """Past MAX_HEADERS fields the table ends with a line saying how many
    more there are; counting them raised TypeError (len of an iterator), so
    the console showed no preview and ``gateway quarantine show`` a traceback."""
    fields = b"".join(b"X-Filler-%d: v\r\n" % i for i in range(MAX_HEADERS + 48))
    shown = analyse(fields + b"From: eve@example.org\r\nSubject: many\r\n\r\nthe body\r\n")
    assert len(shown.headers) == MAX_HEADERS + 1
    assert shown.headers[-1] == ("…", "50 more fields")
    assert "the body" in shown.text


def test_the_preview_reads_what_the_checks_read():
    raw = (b"From: eve@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain\r\n\r\nfirst https://one.example/a\r\n--b\r\n"
           b"Content-Type: text/plain\r\n\r\nsecond\r\n--b\r\n"
           b"Content-Type: text/html\r\n\r\n<a href='https://two.example/B'>x</a><script>"
           b"var u='https://no.example/'</script>\r\n--b\r\n"
           b"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
           b"filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n\r\n%PDF-1.4\r\n--b--\r\n")
    shown = analyse(raw)
    assert shown.text.strip() == "first https://one.example/a"
    assert shown.html is not None and "two.example" in shown.html
    assert shown.urls == ["https://one.example/a", "https://two.example/B"]
    assert [(a.index, a.name, a.detected) for a in shown.attachments] == [
        (1, "part-2", "text/plain"), (3, "résumé.pdf", "application/pdf")]
    limited = analyse(raw, LimitsSection(text_bytes=10))
    assert limited.text_truncated


# -- worker processes under a deadline -----------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_preview_past_its_deadline_is_stopped_and_the_next_one_works():
    clock = Clock()
    renderer = Renderer(LimitsSection(), deadline=0.1, clock=clock)
    try:
        # 16 MiB of HTML: parsing alone is far more than 0.1 s of work anywhere.
        huge = html_message("<div>x</div>" * (16 * MIB // 12))
        stopped = finishes(lambda: renderer.render("huge", huge))
        assert stopped.preview is None and "took longer than 0.1 s" in stopped.problem
        assert renderer.render("huge", b"") is stopped  # kept for a while, not redone
        clock.now += FAILURE_KEPT
        renderer.deadline = 60.0
        small = renderer.render("small", html_message("<b>hello</b>", "small"))
        assert small.problem is None and "Invoice small" in small.preview.text
        assert "<b>hello</b>" in small.sanitized.html
        assert renderer.render("small", b"") is small  # the page and its frame: one render
    finally:
        renderer.close()


# -- through the console and the command line ----------------------------------------------

@pytest.mark.slow
def test_the_console_shows_a_2_mib_pathological_message_with_a_truncation_notice(web):
    app, store, _ = web
    identifier = put_raw(store, html_message(PATHOLOGICAL["unclosed a"]
                                             + PATHOLOGICAL["formatting"][:MIB]))
    client = app.test_client()
    login(client, "ann")
    page = finishes(lambda: client.get(f"/quarantine/{identifier}"))
    assert page.status_code == 200
    assert "Only the first 256 KiB of the HTML body are shown" in page.text
    assert "Invoice hostile" in page.text
    frame = finishes(lambda: client.get(f"/quarantine/{identifier}/html"))
    assert frame.status_code == 200 and "Invoice hostile" in frame.text
    source = client.get(f"/quarantine/{identifier}/raw")
    assert "Only the first 2048 KiB are shown" in source.text
    assert len(source.data) < 5 * MIB  # 2 MiB, escaped; the message is 3 MiB (7 escaped)


@pytest.mark.slow
def test_quarantine_show_prints_a_2_mib_pathological_message(tmp_path: Path):
    from gateway.quarantine.store import QuarantineStore

    url = f"sqlite:///{tmp_path}/q.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[quarantine]\nurl = "{url}"\n')
    store = QuarantineStore(url)
    identifier = put_raw(store, html_message(PATHOLOGICAL["unclosed a"]))
    store.close()
    shown = gateway(config, "quarantine", "show", identifier)
    assert shown.returncode == 0, shown.stderr
    assert "Invoice hostile" in shown.stdout
