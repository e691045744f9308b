"""Prometheus metrics and a health check, on ``[metrics] listen``.

``/metrics`` in Prometheus' text format (``prometheus_client``): messages
by action, scores, per-check latency and failures, messages accepted with a
failed check, quarantine size by state and releases (read from the store
at scrape time, so every node and the CLI's releases count), the model in
use with its validation figures, SMTP sessions in flight, reloads, and the
memory of the milter and its workers. ``/health`` answers 200 only while
the milter serves and what it depends on answers (workers alive, clamd,
the quarantine store), 503 with the reason otherwise: a load balancer or
monitor can act on it. ``gateway_database_up`` says whether the node's
heartbeat reaches the shared database (see :mod:`gateway.nodes`).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from gateway.decider import Decision
from gateway.message import Envelope

log = logging.getLogger("gateway.metrics")

# Counters' *_created series double the output for nothing a dashboard uses.
if hasattr(prometheus_client, "disable_created_metrics"):
    prometheus_client.disable_created_metrics()

ACTIONS = ("accept", "add_header", "quarantine", "reject", "tempfail")
FAILURE_KINDS = ("dns_temperror", "clamd", "budget_exceeded", "content")
SCORE_BUCKETS = (-10, -5, -1, 0, 1, 2, 4, 6, 8, 10, 15, 20, 30, 50)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                   10)


def failure_kind(symbol: str) -> str | None:
    """What kind of failure a symbol reports, for gateway_check_failures_total."""
    if symbol == "BUDGET_EXCEEDED":
        return "budget_exceeded"
    if symbol == "CLAMAV_ERROR":
        return "clamd"
    if symbol.endswith("_TEMPERROR") or symbol == "SENDER_DOMAIN_TEMPFAIL":
        return "dns_temperror"
    if symbol.endswith("_ERROR"):
        return "content"
    return None


class Metrics:
    def __init__(self, node: str = "") -> None:
        self.registry = CollectorRegistry()
        labels = {"node": node or os.uname().nodename}
        self.node = labels["node"]
        self.messages = Counter("gateway_messages_total", "Messages by final action",
                                ["node", "action"], registry=self.registry)
        self.scores = Histogram("gateway_message_score", "Score of each message",
                                ["node"], buckets=SCORE_BUCKETS, registry=self.registry)
        self.decide_seconds = Histogram(
            "gateway_message_seconds", "Time from end of message to the verdict",
            ["node"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.check_seconds = CheckLatency(self.node, LATENCY_BUCKETS)
        self.registry.register(self.check_seconds)
        self.failures = Counter(
            "gateway_check_failures_total",
            "Checks that did not give a result, by kind: dns_temperror, clamd, "
            "budget_exceeded, content (a check that raised on the message)",
            ["node", "kind"], registry=self.registry)
        self.accepted_with_failure = Counter(
            "gateway_accepted_with_failed_check_total",
            "Messages delivered although a check failed on them", ["node"],
            registry=self.registry)
        self.sessions = Gauge("gateway_milter_sessions", "SMTP sessions in flight",
                              ["node"], registry=self.registry)
        self.reloads = Counter("gateway_reloads_total", "Configuration reloads",
                               ["node", "outcome"], registry=self.registry)
        self.model = Gauge("gateway_model_info", "The spam model in use (1), with its version",
                           ["node", "version"], registry=self.registry)
        for action in ACTIONS:
            self.messages.labels(self.node, action)
        for outcome in ("ok", "refused"):
            self.reloads.labels(self.node, outcome)
        # Each series' child once: labels() per message was a third of the cost.
        self._by_action = {action: self.messages.labels(self.node, action) for action in ACTIONS}
        self._by_failure = {kind: self.failures.labels(self.node, kind) for kind in FAILURE_KINDS}
        self._score = self.scores.labels(self.node)
        self._decide_seconds = self.decide_seconds.labels(self.node)
        self._accepted_with_failure = self.accepted_with_failure.labels(self.node)
        self._model_version = ""
        self._labels = labels
        self.store_counts: Callable[[], dict[str, int]] | None = None
        self.released: Callable[[], int] | None = None
        self.model_figures: Callable[[], dict[str, float]] | None = None
        self.processes: Callable[[], list[int]] = lambda: [os.getpid()]
        self.registry.register(_LiveCollector(self))

    # -- recording -------------------------------------------------------------

    def observe(self, envelope: Envelope, decision: Decision, seconds: float) -> None:
        verdict = decision.verdict
        action = "tempfail" if decision.outcome == "tempfail" else verdict.action
        self._by_action[action].inc()
        self._score.observe(verdict.score)
        self._decide_seconds.observe(seconds)
        self.check_seconds.observe(verdict.check_millis)
        failed = False
        for symbol in verdict.symbols:
            kind = failure_kind(symbol.name)
            if kind is not None:
                self._by_failure[kind].inc()
                failed = failed or kind in ("content", "budget_exceeded", "clamd")
        if failed and decision.outcome == "accept":
            self._accepted_with_failure.inc()
        version = verdict.facts.get("bayes", {}).get("model_version")
        if version and version != self._model_version:
            from gateway.nodes import model_seen

            model_seen(version)  # the node registry shows what scored the mail
            if self._model_version:
                self.model.remove(self.node, self._model_version)
            self._model_version = version
            self.model.labels(self.node, version).set(1)

    def session(self, delta: int) -> None:
        self.sessions.labels(self.node).inc(delta)

    def reload(self, outcome: str, _why: str = "") -> None:
        self.reloads.labels(self.node, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CheckLatency:
    """``gateway_check_seconds{check}``: a latency histogram per check, as
    prometheus_client's Histogram shows it, filled a message at a time
    under one lock (its Histogram took a labels() look-up and two locks
    per check, twenty checks a message)."""

    def __init__(self, node: str, buckets: tuple[float, ...]):
        self.node = node
        self.bounds = [*buckets, math.inf]
        self._counts: dict[str, list[int]] = {}  # per bucket, not cumulative
        self._sums: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(self, millis_by_check: Mapping[str, float]) -> None:
        with self._lock:
            for check, millis in millis_by_check.items():
                seconds = millis / 1000
                counts = self._counts.get(check)
                if counts is None:
                    counts = self._counts[check] = [0] * len(self.bounds)
                    self._sums[check] = 0.0
                counts[bisect.bisect_left(self.bounds, seconds)] += 1  # le: value <= bound
                self._sums[check] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("gateway_check_seconds", "Time each check took",
                                       labels=["node", "check"])
        with self._lock:
            taken = {check: (list(counts), self._sums[check])
                     for check, counts in self._counts.items()}
        for check, (counts, total) in taken.items():
            running, buckets = 0, []
            for bound, count in zip(self.bounds, counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))
            family.add_metric([self.node, check], buckets, total)
        yield family


class _LiveCollector:
    """Figures read when scraped: the store, the model card, memory."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        node = self.metrics.node
        memory = GaugeMetricFamily("gateway_process_resident_bytes",
                                   "Resident memory of the milter and its workers",
                                   labels=["node", "process"])
        for index, pid in enumerate(self.metrics.processes()):
            memory.add_metric([node, "milter" if index == 0 else f"worker{index}"],
                              _rss_bytes(pid))
        yield memory
        if self.metrics.store_counts is not None:
            size = GaugeMetricFamily("gateway_quarantine_messages",
                                     "Messages in the quarantine by state",
                                     labels=["node", "state"])
            try:
                for state, count in self.metrics.store_counts().items():
                    size.add_metric([node, state], count)
            except Exception as exc:  # a store that is down must not break the scrape
                log.warning("metrics: cannot read the quarantine: %s", exc)
            yield size
        if self.metrics.released is not None:
            released = GaugeMetricFamily("gateway_quarantine_released",
                                         "Messages released from the quarantine (all nodes)",
                                         labels=["node"])
            try:
                released.add_metric([node], self.metrics.released())
            except Exception as exc:
                log.warning("metrics: cannot read the quarantine: %s", exc)
            yield released
        yield from _database_metrics(node)
        yield from _door_metrics(node)
        if self.metrics.model_figures is not None:
            figures = GaugeMetricFamily("gateway_model_validation",
                                        "Validation figures of the model in use",
                                        labels=["node", "figure"])
            try:
                for name, value in self.metrics.model_figures().items():
                    figures.add_metric([node, name], value)
            except Exception as exc:
                log.warning("metrics: cannot read the model card: %s", exc)
            yield figures


def _database_metrics(node: str):
    """Whether this node reaches the store's database (its heartbeat, see
    gateway.nodes): a node that does not keeps serving on its last good
    model and lists, and these say since when."""
    import sys

    nodes = sys.modules.get("gateway.nodes")  # no heartbeat, no database figures
    if nodes is None:
        return
    local = nodes.LOCAL
    up = GaugeMetricFamily("gateway_database_up", "1 while this node's heartbeat reaches the "
                           "store's database; 0: serving on its last good state",
                           labels=["node"])
    up.add_metric([node], 1.0 if local.database_ok else 0.0)
    yield up
    if local.last_contact:
        age = GaugeMetricFamily("gateway_database_last_contact_seconds",
                                "Seconds since the database last took this node's heartbeat",
                                labels=["node"])
        age.add_metric([node], max(0.0, time.time() - local.last_contact))
        yield age


def _door_metrics(node: str):
    """Greylisting's and the rate limits' outcomes (gateway.door), since start."""
    import sys

    from prometheus_client.core import CounterMetricFamily

    door, ratelimit = sys.modules.get("gateway.door"), sys.modules.get("gateway.ratelimit")
    if door is not None:
        greylist = CounterMetricFamily(
            "gateway_greylist", "Greylisting by outcome: greylisted, passed (a retry after "
            "the delay), known (passed before), exempt, known_sender, clean (not "
            "suspicious), failopen (no database: let through)", labels=["node", "outcome"])
        for (kind, outcome), value in sorted(door.counts().items()):
            if kind == "greylist":
                greylist.add_metric([node, outcome], value)
        yield greylist
    if ratelimit is not None:
        limits = CounterMetricFamily(
            "gateway_ratelimit", "Rate limits by limit and outcome: admitted, refused, "
            "local (counted without the database), and tempfail, quarantine or score for "
            "mail over the limit", labels=["node", "limit", "outcome"])
        for (name, outcome), value in sorted(ratelimit.counts().items()):
            limits.add_metric([node, name, outcome], value)
        yield limits


def _rss_bytes(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


# -- the HTTP side ------------------------------------------------------------------


class MetricsServer:
    """/metrics and /health on one listening address, in a thread."""

    def __init__(self, listen: str, metrics: Metrics,
                 health: Callable[[], list[str]]):
        host, _, port = listen.rpartition(":")
        self.metrics = metrics
        self.health = health
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    self._answer(200, server.metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path.split("?")[0] == "/health":
                    problems = server.checked_health()
                    body = json.dumps({"ok": not problems, "problems": problems}).encode()
                    self._answer(503 if problems else 200, body, "application/json")
                else:
                    self._answer(404, b"not found: try /metrics or /health\n", "text/plain")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:
                pass  # scrapes every few seconds would drown the mail log

        self._server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)),
                                           Handler)
        self._server.daemon_threads = True
        self._health_cache: tuple[float, list[str]] = (0.0, [])
        self._lock = threading.Lock()
        self.address = self._server.server_address

    def checked_health(self) -> list[str]:
        """Health at most every two seconds: a monitor hammering /health must
        not hammer clamd and the store."""
        with self._lock:
            checked, problems = self._health_cache
            if time.monotonic() - checked > 2.0:
                try:
                    problems = self.health()
                except Exception as exc:
                    problems = [f"health check failed: {type(exc).__name__}: {exc}"]
                self._health_cache = (time.monotonic(), problems)
            return problems

    def start(self) -> MetricsServer:
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
