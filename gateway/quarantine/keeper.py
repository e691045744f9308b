"""What the milter needs from the quarantine: keep a message, durably.

The database is opened on first use and again after a failure, so a
quarantine that is down when the gateway starts (or goes down later) costs
the affected messages a 4xx, never the gateway, and never a message.
"""

from __future__ import annotations

import logging
import threading

from gateway.config import Config
from gateway.message import Envelope, RawContent
from gateway.policy import Verdict
from gateway.quarantine.store import QuarantineError, QuarantineStore

log = logging.getLogger("gateway.quarantine")


class Keeper:
    def __init__(self, config: Config):
        self.settings = config.quarantine
        self._store: QuarantineStore | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def store(self) -> QuarantineStore:
        with self._lock:
            if self._store is None:
                self._store = QuarantineStore(self.settings.url, self.settings.node or None)
            return self._store

    def hold(self, envelope: Envelope, raw: RawContent, verdict: Verdict) -> str:
        """Store a quarantined message; raises QuarantineError if it is not
        committed (the milter then answers 4xx and Postfix keeps the mail)."""
        return self.store().put(envelope, raw, verdict, "quarantine")

    def keep_rejected(self, envelope: Envelope, raw: RawContent, verdict: Verdict) -> str | None:
        """A recoverable copy of a rejected message, when configured. The
        sender keeps the original either way, so a failure is only logged."""
        if self.settings.keep_rejected_days <= 0:
            return None
        try:
            return self.store().put(envelope, raw, verdict, "reject")
        except QuarantineError as exc:
            log.error("quarantine: could not keep a copy of rejected message %s: %s",
                      envelope.queue_id or "-", exc)
            return None

    def start_purging(self) -> None:
        threading.Thread(target=self._purge_loop, name="quarantine-purge", daemon=True).start()

    def _purge_loop(self) -> None:
        while not self._stop.wait(self.settings.purge_interval):
            try:
                counts = self.store().purge(self.settings.retention_days(),
                                            self.settings.keep_rejected_days)
                if any(counts.values()):
                    log.info("quarantine: purged: %s expired, %s records removed",
                             counts["expired"], counts["removed"])
            except QuarantineError as exc:
                log.error("quarantine: purge failed: %s", exc)
            except Exception:
                log.exception("quarantine: purge failed")

    def close(self) -> None:
        self._stop.set()
        if self._store is not None:
            self._store.close()
