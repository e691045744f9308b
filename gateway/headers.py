"""The headers a verdict adds to a delivered message.

``X-Spam-Status`` keeps SpamAssassin's format, so Sieve and procmail rules
written for SpamAssassin (``X-Spam-Status: Yes``, ``X-Spam-Flag: YES``) keep
working.
"""

from __future__ import annotations

from gateway import authresults
from gateway.policy import Verdict

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
