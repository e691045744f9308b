"""The naive-Bayes spam classifier as a check: one BAYES_* band symbol.

The band symbol's evidence names the tokens that pushed the probability
most toward spam (+) and toward ham (-), with their share of the log-odds:
``p=0.9731, model nb-...; + "click here" +0.41, url:example.biz +0.30; -
list-id: debian-user -0.52``; the ``tokens`` fact has them for the JSON.

The model in use is the ``[classifier] model`` folder if set, else the
model store's current model, else the shipped ``models/default``; its
probability is placed at ``[classifier] target_fpr`` on the ham it carries
(see :mod:`gateway.classifier.thresholds`). A watcher
thread looks for a newly promoted model every ``reload_interval`` seconds
and swaps it in atomically: a message is scored by one model from start to
end, connections are never dropped, and a corrupt or mismatched model is
refused with one log line while the old one keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.checks import Check, CheckContext
from gateway.classifier.features import TextStats
from gateway.classifier.names import BAND_DESCRIPTIONS, BANDS, ModelError, band
from gateway.classifier.store import ModelStore
from gateway.config import Config
from gateway.forkshare import shared_model
from gateway.mail import Authors
from gateway.message import Message
from gateway.paths import MODELS_DIR
from gateway.ruleset import Ruleset
from gateway.schema import ConfigError
from gateway.symbols import Report

if TYPE_CHECKING:
    from gateway.classifier.model import SpamModel

log = logging.getLogger("gateway.classifier")

SHIPPED_MODEL = MODELS_DIR / "default"


def model_location(config: Config) -> Path:
    """The model folder the config selects (explicit, store's current, shipped)."""
    if config.classifier.model:
        return Path(config.classifier.model)
    current = ModelStore(config.classifier.store).current_path()
    if current is not None and current.exists():
        return current
    return SHIPPED_MODEL


def load_model_dir(location: Path) -> SpamModel:
    """The model in a folder. The model's code (and numpy) is imported here:
    the milter finds the model's folder (model_location) with this module
    and never loads one."""
    from gateway.classifier.model import load_model

    return load_model(location)


def decision_probability(scores: dict[str, float], quarantine: float) -> float:
    """The lowest spam probability whose band alone reaches the quarantine
    threshold under these scores (1.0 if no band does)."""
    lower = 0.0
    for upper, name in BANDS:
        if scores.get(name, 0.0) >= quarantine:
            return lower
        lower = upper
    return 1.0


class ModelHolder:
    """The model in use, swapped atomically when the selected folder changes."""

    def __init__(self, config: Config):
        self.config = config
        # The signature first, then the model of its folder: a promotion in
        # between shows to the watcher as a change. (Read the other way
        # round, a worker started during a promotion recorded the new
        # signature beside the old model, and kept that model for good.)
        self._signature = self._current_signature()
        self.location = Path(self._signature[0])
        try:
            self.model: SpamModel = self._load(self.location, self._signature)
        except ModelError as exc:
            raise ConfigError([f"classifier: {exc}"]) from None
        self._refused: tuple | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watch_failing = False
        log.info("classifier: using model %s from %s%s", self.model.version, self.location,
                 placement_text(self.model))

    def _load(self, location: Path, signature: tuple | None = None) -> SpamModel:
        # The fork server's copy when it is this model (gateway.forkshare).
        shared = shared_model(signature) if signature is not None else None
        return (shared or load_model_dir(location)).placed(self.config.classifier.target_fpr)

    def start_watching(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="model-watch", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def _current_signature(self) -> tuple:
        location = model_location(self.config)
        try:
            real = os.path.realpath(location)
            meta = Path(real) / "model.json"
            return (real, meta.stat().st_mtime_ns)
        except OSError:
            return (str(location), None)

    def _watch(self) -> None:
        while not self._stop.wait(self.config.classifier.reload_interval):
            try:
                self.check_for_update()
            except Exception as exc:  # a watcher that ended would keep this model for good
                if not self._watch_failing:
                    log.warning("classifier: cannot look for a new model (still using %s): "
                                "%s: %s", self.model.version, type(exc).__name__, exc)
                self._watch_failing = True
            else:
                if self._watch_failing:
                    log.info("classifier: looking for new models again")
                self._watch_failing = False

    def check_for_update(self) -> bool:
        """Load the selected model if it changed; True if a new one is in use."""
        signature = self._current_signature()
        if signature == self._signature or signature == self._refused:
            return False
        location = Path(signature[0])
        try:
            model = self._load(location)
        except ModelError as exc:
            self._refused = signature
            log.error("classifier: refusing new model: %s; still using %s",
                      exc, self.model.version)
            return False
        previous = self.model.version
        self.model, self.location, self._signature = model, location, signature
        self._refused = None
        log.info("classifier: now using model %s (was %s)%s", model.version, previous,
                 placement_text(model))
        return True


def placement_text(model: SpamModel) -> str:
    """'; BAYES_95 from log-odds 9.48: ...' for the log line ('' unplaced)."""
    if model.placement is None:
        return "; bands at the model's own calibration (it carries no ham scores)"
    return "; " + model.placement.describe()


def same_from_reading(message: Message) -> Authors | None:
    """The message's one reading of its From (``Message.authors``, which
    other checks make anyway) when the parsed view the classifier reads has
    the very same From values, so the reading would be the same made again;
    None when they differ (a field in obs-syntax, which only the raw
    header block has; 8-bit bytes the two decode apart)."""
    if message.headers("From") != [str(v) for v in message.email.get_all("From", [])]:
        return None
    return message.authors


class BayesCheck(Check):
    name = "bayes"
    symbols = {
        **BAND_DESCRIPTIONS,
        "URLS_TOO_MANY": "more URLs than [limits] urls; the classifier read the first ones",
        "TEXT_TRUNCATED": "more text than [limits] text_bytes; the classifier read the start",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.holder = ModelHolder(config)
        self.holder.start_watching()

    def run(self, message: Message, context: CheckContext) -> Report:
        model = self.holder.model  # one model for the whole message
        stats = TextStats()
        limits = message.limits
        explanation = model.score_explained(message.email, limits, stats,
                                            authors=same_from_reading(message))
        probability, log_odds = explanation.probability, explanation.log_odds
        found = [self.symbol(band(probability), explanation.evidence(model.version))]
        if stats.urls > limits.urls:
            found.append(self.symbol("URLS_TOO_MANY", f"{stats.urls} URLs, read {limits.urls}"))
        if stats.truncated:
            found.append(self.symbol("TEXT_TRUNCATED", f"read the first {limits.text_bytes} "
                                     "characters of text"))
        return Report(
            symbols=tuple(found),
            facts={
                "spam_probability": probability,
                "log_odds": log_odds,
                "model_version": model.version,
                "tokens": explanation.facts(),
            },
        )

    def close(self) -> None:
        self.holder.stop()
