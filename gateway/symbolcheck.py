"""The symbols the checks can emit, which rules files may score and force.

Rules files that name symbols no check emits are refused: a misspelt
``BAYES_99X = 3`` would silently score nothing (gateway.ruleset.load_rules
says which, given these). Used by ``gateway config check``, ``doctor``,
``replay``, and by ``gateway run`` at start and on reload (a rules file with
an unknown symbol is refused like any other broken config)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from gateway.checks import BUILTIN, Check, UnknownCheck, catalog
from gateway.checks.declared import declared_or_resolved


def known_symbols(enabled: Iterable[type[Check]]) -> dict[str, str]:
    """Every symbol a check could emit: the enabled checks and all built-in
    ones (a rules file may well score the symbols of a check that is off).
    In the milter with worker processes, from the checks' declarations
    (gateway.checks.declared)."""
    classes = list(enabled)
    for name in BUILTIN:
        with contextlib.suppress(UnknownCheck):  # a built-in always resolves
            classes.append(declared_or_resolved(name, None))
    return catalog(classes)
