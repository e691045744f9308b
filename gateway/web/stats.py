"""The dashboard's figures, read from the store's database (every node's mail)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select

from gateway.config import Config
from gateway.quarantine.schema import messages, symbols
from gateway.quarantine.store import QuarantineStore


def held_per_day(store: QuarantineStore, days: int = 14, at: datetime | None = None
                 ) -> tuple[list[str], dict[str, list[int]]]:
    """Messages kept per day (UTC) and action, oldest day first."""
    at = at or datetime.now(UTC)
    first = (at - timedelta(days=days - 1)).date()
    labels = [(first + timedelta(days=i)).isoformat() for i in range(days)]
    series = {"quarantine": [0] * days, "reject": [0] * days}
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    with store.engine.connect() as connection:
        rows = connection.execute(select(messages.c.created, messages.c.action)
                                  .where(messages.c.created >= start))
        for created, action in rows:
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
            index = (created.astimezone(UTC).date() - first).days
            if 0 <= index < days and action in series:
                series[action][index] += 1
    return labels, series


def top_symbols(store: QuarantineStore, days: int = 7, limit: int = 10,
                at: datetime | None = None) -> list[tuple[str, int]]:
    since = (at or datetime.now(UTC)) - timedelta(days=days)
    query = (select(symbols.c.name, func.count().label("n"))
             .select_from(symbols.join(messages, messages.c.id == symbols.c.message))
             .where(and_(messages.c.created >= since, symbols.c.score > 0))
             .group_by(symbols.c.name).order_by(func.count().desc(), symbols.c.name)
             .limit(limit))
    with store.engine.connect() as connection:
        return [(name, int(n)) for name, n in connection.execute(query)]


def nodes(store: QuarantineStore) -> list[str]:
    with store.engine.connect() as connection:
        return sorted(n for (n,) in connection.execute(select(messages.c.node).distinct()))


def model_in_use(config: Config) -> dict[str, Any]:
    """The model the gateway uses, with its cross-validation figures."""
    from gateway.checks.bayes import model_location
    from gateway.classifier.model import META_FILE

    try:
        path = model_location(config)
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        return {"problem": str(exc)}
    figures = (meta.get("cross_validation") or {}).get("figures") or {}
    data = meta.get("data") or {}
    shown = []
    for key, label in (("auc", "ROC AUC"), ("recall_at_fpr_0.001", "recall at FPR ≤ 0.1%"),
                       ("recall_at_fpr_0.0025", "recall at FPR ≤ 0.25%"),
                       ("precision", "precision"), ("recall", "recall")):
        if key in figures:
            value = figures[key]
            shown.append({"label": label, "mean": float(value["mean"]),
                          "low": float(value["low"]), "high": min(float(value["high"]), 1.0)})
    from gateway.classifier.site import dashboard_summary

    return {"version": meta.get("version", path.name), "path": str(path),
            "site": dashboard_summary(config),
            "created": meta.get("created"), "ham": data.get("ham"), "spam": data.get("spam"),
            "learned": data.get("learned", 0), "figures": shown,
            "fpr": float(figures["fpr"]["mean"]) if "fpr" in figures else None}


def fleet(store: QuarantineStore) -> list[Any]:
    """The registered nodes, stale ones marked (see gateway.nodes)."""
    from gateway.nodes import fleet as registered

    with store.engine.connect() as connection:
        return registered(connection)
