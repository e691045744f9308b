"""The site's own mail as the classifier sees it: where a promotion places
the bands, and how ``gateway doctor`` and the dashboard measure a model on
the site's labels (cold start).

The site's mail, from the store's database:

- the learned training set: labels people gave (``gateway learn``, the
  reviewed feedback queue) and accepted autolearn candidates;
- released mail: held messages someone released (ham), while the
  quarantine keeps them;
- autolearn ham candidates still waiting (accepted mail from authenticated
  known correspondents).

A model that trained on a label scored it with that label in mind; its
out-of-fold score (``learned_out_of_fold`` in model.json, from training) is
used instead, so that a model is never measured on what it learned.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.checks.bayes import model_location
from gateway.classifier.corpus import content_key
from gateway.classifier.model import META_FILE, ModelError, SpamModel, load_model
from gateway.classifier.store import ModelStore, StoreError
from gateway.classifier.thresholds import PLACED_PROBABILITY, HamScores
from gateway.classifier.train import tokenize
from gateway.classifier.trainingset import LABELS
from gateway.config import Config
from gateway.db import read_only_engine
from gateway.quarantine.schema import feedback, feedback_mail, messages, training_messages
from gateway.quarantine.store import QuarantineError

# Newest messages of each label read from each source, at most.
LIMIT = 5000
SITE_SOURCE = "site ham"


class SiteError(Exception):
    """The site's mail cannot be read, as one line."""


@dataclass(frozen=True)
class SiteMessage:
    key: str
    raw: bytes
    label: int  # 1 = spam
    origin: str  # label, autolearn, released, candidate


@dataclass
class SiteMail:
    messages: list[SiteMessage] = field(default_factory=list)

    def count(self, label: int, origin: str | None = None) -> int:
        return sum(1 for m in self.messages
                   if m.label == label and (origin is None or m.origin == origin))

    def origins(self, label: int) -> dict[str, int]:
        found: dict[str, int] = {}
        for m in self.messages:
            if m.label == label:
                found[m.origin] = found.get(m.origin, 0) + 1
        return found


def site_mail(config: Config, labels_only: bool = False, limit: int = LIMIT) -> SiteMail:
    """The site's labelled mail (and, unless ``labels_only``, its released
    mail and waiting autolearn ham); a label wins over the other sources."""
    from sqlalchemy.exc import SQLAlchemyError

    url = config.classifier.training_set_url(config.quarantine.url)
    if not url:
        raise SiteError("no store database ([quarantine] url) to read the site's mail from")
    found = SiteMail()
    if not _exists(url):  # no store yet, so no mail of the site's: never create one here
        return found
    seen: set[str] = set()

    def add(raw: bytes, label: int, origin: str) -> None:
        key = content_key(raw)
        if key not in seen:
            seen.add(key)
            found.messages.append(SiteMessage(key, raw, label, origin))

    try:
        for raw, label, origin in _labels(url, limit):
            add(raw, label, origin)
        if not labels_only and config.quarantine.url and _exists(config.quarantine.url):
            for raw, origin in _unlabelled_ham(config.quarantine.url, limit):
                add(raw, 0, origin)
    except QuarantineError as exc:
        raise SiteError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise SiteError(f"the store's database: {type(exc).__name__}: "
                        f"{str(getattr(exc, 'orig', exc)).splitlines()[0]}") from None
    return found


@contextlib.contextmanager
def _reading(url: str) -> Iterator[Any]:
    """A connection that changes nothing: SQLite opened read-only (no WAL
    switch, no file modes touched), PostgreSQL as it is; no migration."""
    engine = read_only_engine(url)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _exists(url: str) -> bool:
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).exists()
    return True


def _labels(url: str, limit: int) -> Iterator[tuple[bytes, int, str]]:
    """The learned training set's newest ``limit`` messages of each label
    (read as they are: reading never migrates a database)."""
    from sqlalchemy import select

    with _reading(url) as connection:
        found = {label: connection.execute(
            select(training_messages.c.raw, training_messages.c.who)
            .where(training_messages.c.label == label)
            .order_by(training_messages.c.id.desc()).limit(limit)).all() for label in LABELS}
    for label, rows in found.items():
        for row in rows:
            yield (bytes(row.raw), LABELS[label],
                   "autolearn" if row.who == "autolearn" else "label")


def _unlabelled_ham(url: str, limit: int) -> Iterator[tuple[bytes, str]]:
    """Released mail and waiting autolearn ham candidates, newest first."""
    from sqlalchemy import and_, select

    with _reading(url) as connection:
        released = connection.execute(
            select(messages.c.raw).where(and_(messages.c.state == "released",
                                              messages.c.raw.is_not(None)))
            .order_by(messages.c.updated.desc()).limit(limit)).scalars().all()
        candidates = feedback_mail.join(feedback, feedback.c.id == feedback_mail.c.feedback)
        waiting = connection.execute(
            select(feedback_mail.c.raw).select_from(candidates)
            .where(and_(feedback.c.source == "autolearn", feedback.c.state == "pending",
                        feedback.c.label == "ham"))
            .order_by(feedback.c.id.desc()).limit(limit)).scalars().all()
    for raw in released:
        yield bytes(raw), "released"
    for raw in waiting:
        yield bytes(raw), "candidate"


@dataclass(frozen=True)
class SiteScores:
    ham: np.ndarray
    spam: np.ndarray
    out_of_fold: int  # scores that came from training, out of fold

    def held(self, model: SpamModel) -> tuple[int, int]:
        """(ham, spam) in BAYES_95 or above (the default rules hold them alone)."""
        return (sum(model.probability_of(s) >= PLACED_PROBABILITY for s in self.ham),
                sum(model.probability_of(s) >= PLACED_PROBABILITY for s in self.spam))


def site_scores(model: SpamModel, mail: SiteMail) -> SiteScores:
    """The model's log-odds of the site's mail (out of fold where it learned it)."""

    learned = model.meta.get("learned_out_of_fold") or {}
    scores: tuple[list[float], list[float]] = ([], [])
    out_of_fold = 0
    for message in mail.messages:
        if message.key in learned:
            score = float(learned[message.key])
            out_of_fold += 1
        else:
            try:
                score = model.log_odds(tokenize(message.raw))
            except Exception:  # one unreadable message must not stop a promotion
                continue
        scores[message.label].append(score)
    return SiteScores(np.array(scores[0]), np.array(scores[1]), out_of_fold)


def site_ham(scores: SiteScores) -> HamScores | None:
    return HamScores.of(scores.ham, SITE_SOURCE) if len(scores.ham) else None


def with_site_ham(model_dir: Path, ham: HamScores, origins: dict[str, int], out: Path) -> str:
    """A copy of a model folder whose bands are placed on this site's ham:
    the same weights under the version ``<base>-site<digest>``; returns it."""
    meta = json.loads((model_dir / META_FILE).read_text())
    base = meta.get("base_version") or meta["version"]
    thresholds = dict(meta.get("thresholds") or {})
    thresholds["site_ham"] = ham.to_json()
    meta.update({
        "thresholds": thresholds,
        "base_version": base,
        "version": f"{base}-site{ham.digest()[:6]}",
        "site_placed": {"time": datetime.now(UTC).isoformat(timespec="seconds"),
                        "ham": origins},
    })
    out.mkdir(parents=True)
    for path in model_dir.iterdir():
        if path.is_file() and path.name != META_FILE and not path.name.startswith("."):
            shutil.copy2(path, out / path.name)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return str(meta["version"])


@dataclass(frozen=True)
class ColdStart:
    """How much of the site the model in use has learned, and how it does on
    the site's labels beside its card (the training mail's figures)."""

    version: str
    trained_on: int  # messages the model was trained on
    learned: int  # of them, from this site's learned set
    labels: dict[str, int]  # the site's labels now: ham, spam, autolearned
    ham_held: int  # the site's ham labels in BAYES_95 and above
    spam_held: int
    card_fpr: float | None  # the card's false-positive rate at the decision probability
    card_recall: float | None
    problem: str = ""  # why the site's labels could not be read

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "trained_on": self.trained_on,
                "learned": self.learned, "labels": self.labels, "ham_held": self.ham_held,
                "spam_held": self.spam_held, "card_fpr": self.card_fpr,
                "card_recall": self.card_recall, "problem": self.problem}

    def describe(self) -> str:
        text = (f"{self.version} has learned {self.learned:,} of this site's messages "
                f"(trained on {self.trained_on:,})")
        card = ""
        if self.card_fpr is not None and self.card_recall is not None:
            card = f"the card: {self.card_fpr:.2%} of ham held, {self.card_recall:.1%} of spam"
        if self.problem:
            return f"{text}; the site's labels cannot be read ({self.problem})"
        ham, spam = self.labels["ham"], self.labels["spam"]
        if not ham and not spam:
            return (f"{text}; no labels from this site yet, so {card or 'the card'} is all "
                    "there is to go by: label mistakes (gateway learn) or accept autolearn "
                    "candidates (gateway feedback accept --autolearn)")
        measured = []
        if ham:
            measured.append(f"{self.ham_held} of {ham:,} ham held ({self.ham_held / ham:.2%})")
        if spam:
            measured.append(f"{self.spam_held} of {spam:,} spam ({self.spam_held / spam:.1%})")
        return (f"{text}; on the site's labels ({self.labels['autolearned']:,} autolearned, "
                f"the model's out-of-fold scores where it learned them), BAYES_95 and above: "
                f"{' and '.join(measured)}" + (f"; {card}" if card else ""))


def cold_start(config: Config, model: SpamModel) -> ColdStart:
    data = model.meta.get("data") or {}
    figures = ((model.meta.get("cross_validation") or {}).get("figures") or {})
    card_fpr = figures.get("fpr", {}).get("mean")
    card_recall = figures.get("recall", {}).get("mean")
    found = {"version": model.version,
             "trained_on": int(data.get("train_ham", data.get("ham", 0)) or 0)
             + int(data.get("train_spam", data.get("spam", 0)) or 0),
             "learned": int(data.get("learned", 0) or 0),
             "card_fpr": card_fpr, "card_recall": card_recall}
    try:
        mail = site_mail(config, labels_only=True)
    except SiteError as exc:
        return ColdStart(labels={"ham": 0, "spam": 0, "autolearned": 0}, ham_held=0,
                         spam_held=0, problem=str(exc), **found)
    held = site_scores(model, mail).held(model)
    labels = {"ham": mail.count(0), "spam": mail.count(1),
              "autolearned": mail.count(0, "autolearn") + mail.count(1, "autolearn")}
    return ColdStart(labels=labels, ham_held=int(held[0]), spam_held=int(held[1]), **found)


_summaries: dict[tuple[Any, ...], dict[str, Any]] = {}


def dashboard_summary(config: Config, labels_limit: int = 500) -> dict[str, Any]:
    """The console's lines about the model at this site: where its bands
    are, the last promotion's before/after, and the cold start figures (on
    the newest ``labels_limit`` labels of each kind; kept per model and
    label count, so a busy dashboard does not score them on every view)."""
    from sqlalchemy import func, select

    try:
        location = model_location(config)
        meta = json.loads((location / META_FILE).read_text())
    except (OSError, ValueError, StoreError) as exc:
        return {"problem": str(exc)}
    url = config.classifier.training_set_url(config.quarantine.url)
    count = 0
    if url and _exists(url):
        try:
            with _reading(url) as connection:
                count = connection.execute(
                    select(func.count()).select_from(training_messages)).scalar_one()
        except Exception:  # the figures below say what is wrong
            count = -1
    key = (meta.get("version"), count, config.classifier.target_fpr)
    if key not in _summaries:
        try:
            model = load_model(location).placed(config.classifier.target_fpr)
        except ModelError as exc:
            return {"problem": str(exc)}
        summary: dict[str, Any] = {
            "bands": model.placement.describe() if model.placement else
            "the model's own calibration (it carries no ham scores)",
            "site": cold_start(config, model).describe()}
        try:
            history = ModelStore(config.classifier.store).history()
        except (StoreError, OSError, QuarantineError):
            history = []
        promoted = [e for e in history if e.get("action") == "promote" and e.get("thresholds")]
        if promoted:
            last = promoted[-1]["thresholds"]
            summary["last_promotion"] = {
                "version": promoted[-1].get("version"), "time": promoted[-1].get("time"),
                "before": _anchor_text(last.get("before")),
                "after": _anchor_text(last.get("after")),
                "site_held": last.get("site_held")}
        _summaries.clear()  # one model and label count at a time
        _summaries[key] = summary
    return _summaries[key]


def _anchor_text(placement: dict[str, Any] | None) -> str:
    if not placement:
        return "the model's own calibration"
    return (f"BAYES_95 from log-odds {placement['anchor_log_odds']:.2f} "
            f"({placement['ham_above']} of {placement['reference_n']:,} "
            f"{placement['reference']} above)")
