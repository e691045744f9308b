"""The running gateway's configuration, swapped whole on reload.

A :class:`Generation` is everything built from one configuration: the
config itself, the rules files read once into a Ruleset (handed to the
checks, the policy and every worker process, so a file edited on disk
changes nothing until the next reload), the evaluator (worker pool or
in-process pipeline with its lists and model) and the decider. The milter takes the current
generation when a message starts (MAIL FROM) and holds it until the
message is answered, so a message is judged from start to end under one
configuration.

:meth:`Service.reload` builds a new generation from the config file first
(new workers start while the old ones keep serving), and only when that
succeeds makes it current; a broken config is refused with one log line and
the running generation keeps serving. A replaced generation is closed when
its last message is answered. No SMTP session sees a 4xx because of a
reload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.classifier.autolearn import Autolearner
from gateway.config import Config, load_config
from gateway.decider import Decider, Observer
from gateway.door import build_door
from gateway.evaluator import Evaluator, build_evaluator
from gateway.logs import setup_logging
from gateway.nodes import Heartbeat
from gateway.pipeline import check_classes
from gateway.quarantine.keeper import Keeper
from gateway.quarantine.store import QuarantineError
from gateway.ruleset import Ruleset, load_rules
from gateway.schema import ConfigError
from gateway.symbolcheck import known_symbols

log = logging.getLogger("gateway.service")

# Settings that take a restart: the listening socket is opened once.
RESTART_ONLY = ("milter",)


@dataclass(eq=False)
class Generation:
    config: Config
    ruleset: Ruleset
    evaluator: Evaluator
    decider: Decider
    keeper: Keeper | None
    number: int
    _users: int = 0
    _retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _on_idle: Callable[[Generation], None] | None = None

    @property
    def users(self) -> int:
        return self._users

    def acquire(self) -> Generation:
        with self._lock:
            self._users += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            idle = self._retired and self._users == 0
        if idle:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            idle = self._users == 0
        if idle:
            self._close()

    def _close(self) -> None:
        threading.Thread(target=self._close_now, name=f"close-generation-{self.number}",
                         daemon=True).start()

    def _close_now(self) -> None:
        try:
            self.decider.close(close_keeper=False)
        except Exception:
            log.exception("closing configuration generation %d failed", self.number)
        log.info("configuration generation %d closed", self.number)


def build_generation(config: Config, number: int, keeper: Keeper | None = None,
                     observer: Observer | None = None) -> tuple[Generation, list[str]]:
    """Everything one configuration needs; raises ConfigError when it is
    unusable. ``keeper`` is reused when the quarantine settings did not change.
    The rules files are read here, once for the generation."""
    problems: list[str] = []
    classes = check_classes(config, problems)
    try:
        ruleset = load_rules(config.policy.rules, known_symbols(classes))
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    evaluator = build_evaluator(config, ruleset)
    problems = evaluator.startup_problems()
    if keeper is None and config.quarantine.url:
        keeper = Keeper(config)
        try:
            keeper.store()
        except QuarantineError as exc:  # messages to quarantine get 4xx until it works
            problems.append(f"quarantine: {exc}; quarantined mail is answered 4xx until "
                            "it works")
        keeper.start_purging()
    from gateway.correspondents import learner_for

    autolearner = Autolearner(config, keeper.store, ruleset) \
        if keeper is not None and config.classifier.autolearn != "off" else None
    decider = Decider(evaluator, keeper, config.milter.threads, observer, learner_for(config),
                      door=build_door(config, ruleset=ruleset), autolearner=autolearner)
    return Generation(config, ruleset, evaluator, decider, keeper, number), problems


class Service:
    """The current generation, and reloads from the config file."""

    def __init__(self, config: Config, config_path: str | None,
                 load: Callable[[str | None], Config] = load_config,
                 observer: Observer | None = None):
        self._load = load
        self._observer = observer
        self.config_path = config_path
        self._reload_lock = threading.Lock()
        self.reloads = {"ok": 0, "refused": 0}
        self.listeners: list[Callable[[str, str], None]] = []
        generation, problems = build_generation(config, 1, observer=observer)
        for problem in problems:
            log.warning("%s", problem)
        self._current = generation
        self._heartbeat: Heartbeat | None = None
        self._beat_with(generation.keeper)

    @property
    def current(self) -> Generation:
        return self._current

    def reload(self) -> bool:
        """Build a generation from the config file and make it current; True
        if it is now serving."""
        with self._reload_lock:
            old = self._current
            try:
                config = self._load(self.config_path)
                for section in RESTART_ONLY:
                    if getattr(config, section) != getattr(old.config, section):
                        log.warning("reload: [%s] changed; it takes effect at the next "
                                    "restart", section)
                        config = _keep_section(config, old.config, section)
                keeper = old.keeper if config.quarantine == old.config.quarantine else None
                if keeper is not None:
                    keeper.replay = config.replay
                    keeper.classifier = config.classifier
                generation, problems = build_generation(config, old.number + 1, keeper,
                                                        self._observer)
            except ConfigError as exc:
                self._refused("; ".join(exc.problems))
                return False
            except Exception as exc:  # never let a reload take the milter down
                self._refused(f"{type(exc).__name__}: {exc}")
                return False
            for problem in problems:
                log.warning("%s", problem)
            if config.log != old.config.log:
                setup_logging(config.log.level, config.log.format)
                log.info("reload: [log] now level %s, format %s", config.log.level,
                         config.log.format)
            self._current = generation
            old.retire()
            self._beat_with(generation.keeper)
            if keeper is None and old.keeper is not None:
                old.keeper.close()
            self.reloads["ok"] += 1
            log.info("reload: configuration generation %d from %s now serving",
                     generation.number, self.config_path or "the embedded defaults")
            self._notify("ok", "")
            return True

    def _refused(self, why: str) -> None:
        self.reloads["refused"] += 1
        log.error("reload refused, still serving the previous configuration: %s", why)
        self._notify("refused", why)

    def _notify(self, outcome: str, why: str) -> None:
        for listener in self.listeners:
            listener(outcome, why)

    def drain(self, timeout: float, clock: Callable[[], float] = time.monotonic,
              pause: Callable[[float], None] = time.sleep) -> int:
        """Wait until no message holds a generation (each holds one from MAIL
        FROM until its session ends), for at most ``timeout`` seconds; the
        number still in flight then."""
        deadline = clock() + timeout
        while (busy := self._current.users) and clock() < deadline:
            pause(0.05)
        return busy

    def _beat_with(self, keeper: Keeper | None) -> None:
        """Every node says in the registry that it runs (gateway.nodes), in
        the database of its quarantine, for as long as the service runs: a
        new quarantine gets a new heartbeat, started before the old one stops
        so that the node is never marked stopped by a reload."""
        running = self._heartbeat
        if running is not None and keeper is not None and running.store == keeper.store:
            return
        self._heartbeat = Heartbeat(keeper.store).start() if keeper is not None else None
        if running is not None:
            running.stop()

    def close(self) -> None:
        generation = self._current
        if self._heartbeat is not None:
            self._heartbeat.stop()  # its last beat says the node stopped on purpose
            self._heartbeat = None
        generation.decider.close(close_keeper=False)
        if generation.keeper is not None:
            generation.keeper.close()


def _keep_section(config: Config, running: Config, section: str) -> Config:
    from dataclasses import replace

    return replace(config, **{section: getattr(running, section)})
