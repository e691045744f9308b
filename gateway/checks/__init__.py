"""Checks: one module, one job, symbols out.

A check is a class with a ``name``, a catalog of the ``symbols`` it may emit
(name -> description) and a ``run(message, context)`` method returning
symbols or a :class:`~gateway.symbols.Report`. It knows nothing about the
milter. It is built once per configuration (and in each worker process)
with the config and the rules files' :class:`~gateway.ruleset.Ruleset`,
which it reads instead of the files.

Built-in checks are registered in :data:`gateway.registry.REGISTRY`, by
name, without importing them; :data:`BUILTIN` and the default ``[pipeline]
checks`` come from it. A site's own check is enabled in
gateway.toml as ``"package.module:ClassName"``; its settings, if it declares
a ``section`` (a dataclass of :func:`gateway.schema.setting` fields), are
its ``[check.NAME]`` table, validated with the rest of the configuration
and given to it as ``self.options``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from gateway.config import Config
from gateway.message import Message
from gateway.registry import BUILTIN, SITE_SECTION
from gateway.ruleset import Ruleset, load_rules
from gateway.schema import load_section
from gateway.symbols import (
    PIPELINE_SYMBOLS,
    STAGE_SYMBOLS,
    Report,
    Symbol,
    failure_symbol_name,
)

__all__ = ["BUILTIN", "Check", "CheckContext", "UnknownCheck", "catalog", "check_sections",
           "resolve_check"]


@dataclass(frozen=True)
class CheckContext:
    """What a check may know besides the message: the facts reported by the
    checks it ``requires`` or ``wants`` (keyed by check name; read a built-in
    check's with its class, ``SpfFacts.of(context.facts)``)."""

    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Check:
    """Base class for checks. Subclasses set ``name`` and ``symbols``."""

    name: ClassVar[str]
    symbols: ClassVar[Mapping[str, str]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    # Checks whose facts are used when they are enabled, but not required.
    wants: ClassVar[tuple[str, ...]] = ()
    # Waits on the network (DNS, clamd): may run beside others with
    # [pipeline] parallel = true.
    io_bound: ClassVar[bool] = False
    # A site's own check: the dataclass of its [check.NAME] settings.
    section: ClassVar[type[Any] | None] = None

    def __init__(self, config: Config, ruleset: Ruleset):
        self.config = config
        self.ruleset = ruleset
        # Validated with the configuration (check_sections); a key with a
        # problem would keep its default.
        self.options: Any = self.options_of(config, [])

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """This check with the config's rules files read now: for tests and
        tools. The gateway builds its checks with its configuration
        generation's Ruleset (gateway.pipeline.Pipeline.from_config)."""
        return cls(config, load_rules(config.policy.rules))

    @classmethod
    def options_of(cls, config: Config, problems: list[str]) -> Any:
        """This check's [check.NAME] settings (None without a ``section``);
        their problems go to ``problems``."""
        if cls.section is None:
            return None
        table = config.check.get(cls.name, {})
        return load_section(cls.section, table, f"{config.source}: {SITE_SECTION}.{cls.name}",
                            problems)

    def run(self, message: Message, context: CheckContext) -> Iterable[Symbol] | Report:
        raise NotImplementedError

    def symbol(self, name: str, evidence: str = "", score: float = 0.0) -> Symbol:
        """A symbol from this check's catalog (its description filled in)."""
        return Symbol(name=name, score=score, description=self.symbols[name], evidence=evidence)

    @classmethod
    def failure_symbol(cls) -> str:
        """``<CHECK>_ERROR``: the check did not finish on this message."""
        return failure_symbol_name(cls.name)

    @classmethod
    def failure_description(cls) -> str:
        return f"the {cls.name} check failed or timed out"

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        """Actions this check's own settings force (e.g. [clamav] on_fail);
        a [force] entry in a rules file overrides them."""
        return {}

    @classmethod
    def catalog(cls) -> dict[str, str]:
        """Every symbol this check can emit, its failure symbol included."""
        return {**cls.symbols, cls.failure_symbol(): cls.failure_description()}

    def startup_problems(self) -> list[str]:
        """Problems worth a line at start-up (a peer that does not answer);
        the check still runs and reports per message."""
        return []

    def close(self) -> None:
        """Release connections or files; called when the pipeline shuts down."""


class UnknownCheck(LookupError):
    pass


def resolve_check(spec: str) -> type[Check]:
    """The class for a built-in check name or a ``module:Class`` spec."""
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        known = ", ".join(sorted(BUILTIN))
        raise UnknownCheck(f"unknown check {spec!r} (built-in checks: {known})")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownCheck(f"cannot load check {spec!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Check)):
        raise UnknownCheck(f"{spec!r} is not a gateway Check class")
    return cls


def catalog(check_classes: Iterable[type[Check]]) -> dict[str, str]:
    """Every symbol the given checks can emit, failure symbols included, and
    the pipeline's own."""
    symbols: dict[str, str] = {**PIPELINE_SYMBOLS, **STAGE_SYMBOLS}
    for cls in check_classes:
        symbols.update(cls.catalog())
    return symbols


def check_sections(config: Config, classes: Iterable[type[Check]]) -> list[str]:
    """The problems of the [check.NAME] tables: each must belong to an
    enabled site check that declares a ``section``, and fit it."""
    problems: list[str] = []
    claimed = {cls.name: cls for cls in classes if cls.section is not None}
    for cls in claimed.values():
        cls.options_of(config, problems)
    for name in config.check:
        if name not in claimed:
            known = ", ".join(sorted(claimed)) or "none"
            problems.append(f"{config.source}: {SITE_SECTION}.{name}: no enabled check has "
                            f"settings named {name!r} (enabled checks with settings: {known})")
    return problems
