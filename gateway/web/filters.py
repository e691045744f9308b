"""The quarantine list's query string: its filters read into the store's
Filters (a value that cannot be read is dropped, with a line saying why),
and links that keep them while one changes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from gateway.quarantine.store import SORTS, STATES, Filters

FILTER_FIELDS = ("sender", "recipient", "subject", "symbol", "min_score", "max_score", "since",
                 "until", "state", "action", "node", "sort", "order", "page")


def bounded_int(value: str | None, default: int, low: int, high: int) -> int:
    """``value`` as a number between ``low`` and ``high``; ``default`` if it is none."""
    try:
        return min(max(int(value or default), low), high)
    except ValueError:
        return default


def _float(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{value!r} is not a number")
    return number


def _date(value: str | None, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if end and len(value) <= 10:
        parsed += timedelta(days=1)  # "until 2026-12-01" includes that day
    return parsed


def read_filters(args: Mapping[str, str], page_size: int
                 ) -> tuple[Filters, list[str], dict[str, str]]:
    """The Filters, the problems to show, and the form's values as read."""
    form = {k: args.get(k, "").strip()[:200] for k in FILTER_FIELDS if args.get(k, "").strip()}
    problems = []
    values: dict[str, Any] = {}
    for name in ("min_score", "max_score"):
        try:
            values[name] = _float(form.get(name))
        except ValueError as exc:
            problems.append(f"{name.replace('_', ' ')}: {exc}")
            form.pop(name)
    for name, end in (("since", False), ("until", True)):
        try:
            values[name] = _date(form.get(name), end)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            form.pop(name)
    state = form.get("state") if form.get("state") in STATES else None
    action = form.get("action") if form.get("action") in ("quarantine", "reject") else None
    sort = form["sort"] if form.get("sort") in SORTS else "created"
    page = bounded_int(form.get("page"), 1, 1, 100000)
    filters = Filters(sender=form.get("sender"), recipient=form.get("recipient"),
                      subject=form.get("subject"), symbol=form.get("symbol"),
                      state=state, action=action, node=form.get("node"), sort=sort,
                      descending=form.get("order", "desc") != "asc", limit=page_size,
                      offset=(page - 1) * page_size, **values)
    return filters, problems, form


def page_link(form: dict[str, str], **changes: Any) -> str:
    """The list's address with ``form``'s filters, ``changes`` applied (None drops one)."""
    merged = {**form, **{k: v for k, v in changes.items()}}
    query = {k: v for k, v in merged.items() if v not in (None, "")}
    return "/quarantine" + ("?" + urlencode(query) if query else "")
