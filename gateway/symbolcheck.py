"""Rules files that name symbols no check emits: a misspelt ``BAYES_99X = 3``
would silently score nothing. Used by ``gateway config check``, ``doctor``,
and by ``gateway run`` at start and on reload (a rules file with an unknown
symbol is refused like any other broken config)."""

from __future__ import annotations

import contextlib
import difflib
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from gateway.checks import BUILTIN, Check, UnknownCheck, catalog, resolve_check
from gateway.symbols import SYMBOL_NAME


def known_symbols(enabled: Iterable[type[Check]]) -> dict[str, str]:
    """Every symbol a check could emit: the enabled checks and all built-in
    ones (a rules file may well score the symbols of a check that is off)."""
    classes = list(enabled)
    for name in BUILTIN:
        with contextlib.suppress(UnknownCheck):  # a built-in always resolves
            classes.append(resolve_check(name))
    return catalog(classes)


def unknown_symbols(paths: Iterable[str | Path], known: Mapping[str, str]) -> list[str]:
    """A line for each symbol a rules file scores or forces that no check
    emits and no rules file defines (its [rule.*] and [[dnsbl]] symbols),
    with the closest known name."""
    from gateway.policy import load_rules
    from gateway.schema import ConfigError

    paths = list(paths)
    with contextlib.suppress(ConfigError):  # load_rules reports its own problems
        known = {**known, **load_rules(paths).defined}
    problems = []
    for path in map(Path, paths):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue  # load_rules says why
        for section in ("scores", "force"):
            table = data.get(section)
            if not isinstance(table, Mapping):
                continue
            for name in table:
                if SYMBOL_NAME.match(name) and name not in known:
                    problems.append(f"{path}: {section}.{name}: unknown symbol"
                                    f"{_did_you_mean(name, known)}")
    return problems


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]}?)"
    return " (gateway symbols --all lists them)"


# -- the quarantine's URL ------------------------------------------------------------------
