"""The headers a verdict adds to a delivered message.

``X-Spam-Status`` keeps SpamAssassin's format, so Sieve and procmail rules
written for SpamAssassin (``X-Spam-Status: Yes``, ``X-Spam-Flag: YES``) keep
working. ``required`` is the score from which mail counts as spam: the
add_header threshold (Amavis's tag2_level), so mail delivered as
``add_header`` says ``Yes`` and carries ``X-Spam-Flag: YES``, which the
recipient's Sieve rule files into Junk. With ``[add_header] subject_tag``
such mail also gets the tag before its Subject (:func:`with_tagged_subject`).
"""

from __future__ import annotations

from dataclasses import replace

from gateway import authresults
from gateway.mail import parse_header_block
from gateway.message import DEFAULT_LIMITS, RawContent
from gateway.verdict import Verdict

# Headers the gateway owns. Copies arriving with a message are removed before
# ours are added, so a sender cannot pre-set "X-Spam-Status: No".
OWN_HEADERS = ("X-Spam-Status", "X-Spam-Score", "X-Spam-Flag", "X-Gateway-Symbols")


def verdict_headers(verdict: Verdict) -> list[tuple[str, str]]:
    names = ",".join(sorted(s.name for s in verdict.symbols)) or "none"
    status = (
        f"{'Yes' if verdict.is_spam else 'No'}, score={verdict.score:.1f} "
        f"required={verdict.required:.1f} tests={names}"
    )
    symbols = " ".join(f"{s.name}({s.score:g})" for s in verdict.symbols) or "none"
    headers = [
        ("X-Spam-Status", fold(status)),
        ("X-Spam-Score", f"{verdict.score:.1f}"),
        ("X-Gateway-Symbols", fold(f"action={verdict.action}; {symbols}", sep=" ")),
    ]
    if verdict.is_spam:
        headers.append(("X-Spam-Flag", "YES"))
    return headers


def with_tagged_subject(verdict: Verdict, raw: RawContent) -> Verdict:
    """An add_header verdict with the Subject the milter should set: the
    first Subject field with the tag before it, folding and RFC 2047 words
    kept as sent (``[SPAM] =?utf-8?q?...?=`` is still one encoded word).
    A Subject that already starts with the tag, one cut by ``[limits]
    header_length`` or one that is not UTF-8 is left alone (setting it would
    lose what was cut or sent); a message without one gets the tag alone."""
    tag = verdict.subject_tag
    if verdict.action != "add_header" or not tag:
        return verdict
    limits = DEFAULT_LIMITS
    with raw.open() as stream:
        block = parse_header_block(stream, limits.header_count, limits.header_length)
    subject = next((f for f in block.fields if f.name.lower() == "subject"), None)
    if subject is None:
        return replace(verdict, tagged_subject=tag)
    value = subject.value.replace("\r\n", "\n")
    cut = any(name.lower() == "subject" for name, _length in block.too_long)
    if cut or "\ufffd" in value or value.startswith(tag):
        return verdict
    return replace(verdict, tagged_subject=f"{tag} {value}" if value.strip() else tag)


def authentication_results_header(verdict: Verdict) -> tuple[str, str] | None:
    """Our Authentication-Results, folded; goes at the top of the header."""
    if not verdict.authentication_results:
        return None
    return (authresults.HEADER, fold(verdict.authentication_results, sep=";"))


def fold(value: str, sep: str = ",", width: int = 76) -> str:
    """Fold a long header value after ``sep`` so no line exceeds ``width``."""
    lines, line = [], ""
    for part in _split_keep(value, sep):
        if line and len(line) + len(part) > width:
            lines.append(line.rstrip())
            line = part.lstrip()
        else:
            line += part
    lines.append(line)
    return "\n\t".join(lines)


def _split_keep(value: str, sep: str) -> list[str]:
    pieces = value.split(sep)
    return [p + sep for p in pieces[:-1]] + [pieces[-1]]
