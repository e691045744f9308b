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

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gateway.classifier.corpus import content_key
from gateway.classifier.model import META_FILE, SpamModel
from gateway.classifier.thresholds import PLACED_PROBABILITY, HamScores
from gateway.config import Config

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

    from gateway.classifier.trainingset import TrainingSet, TrainingSetError
    from gateway.quarantine.store import QuarantineError

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
        training = TrainingSet(url)
        try:
            counts = [0, 0]
            for item in _newest(training.labelled()):
                if counts[item.label] < limit:
                    counts[item.label] += 1
                    add(item.raw, item.label,
                        "autolearn" if "(autolearn feedback #" in item.source else "label")
        finally:
            training.close()
        if not labels_only and config.quarantine.url and _exists(config.quarantine.url):
            for raw, origin in _unlabelled_ham(config.quarantine.url, limit):
                add(raw, 0, origin)
    except (TrainingSetError, QuarantineError) as exc:
        raise SiteError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise SiteError(f"the store's database: {type(exc).__name__}: "
                        f"{str(getattr(exc, 'orig', exc)).splitlines()[0]}") from None
    return found


def _exists(url: str) -> bool:
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).exists()
    return True


def _newest(items: Iterator[Any]) -> list[Any]:
    return list(items)[::-1]


def _unlabelled_ham(url: str, limit: int) -> Iterator[tuple[bytes, str]]:
    """Released mail and waiting autolearn ham candidates, newest first."""
    from sqlalchemy import and_, select

    from gateway.quarantine.schema import feedback, feedback_mail, messages
    from gateway.quarantine.store import QuarantineStore

    store = QuarantineStore(url)
    try:
        with store.engine.connect() as connection:
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
    finally:
        store.close()
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
    from gateway.classifier.train import tokenize

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
