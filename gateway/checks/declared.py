"""The built-in checks as the milter knows them: declared, not imported.

With worker processes the milter never runs a check. It needs each one's
declaration only: its name, its symbols (which rules files may score), the
checks it needs, its failure symbol and the actions its settings force (the
policy's defaults). Importing the checks for that brought their libraries
into the milter for as long as it runs: numpy (the model, the fuzzy
hashes), PyICU and rapidfuzz (the lookalike tables), dkimpy, pyspf and
dnspython: 31 MB of the milter's RSS at start that only the workers use.

So the milter asks a short-lived child (``python -m
gateway.checks.declared``, given the configuration) to import the built-in
checks and describe them; each becomes a :class:`Check` subclass with the
same attributes and answers and no ``run``, which cannot be built. The
fork server imports the checks themselves, as before, for the workers.
A child that fails leaves the milter importing the checks, with a warning:
mail is checked either way. The child takes about 1.2 s of CPU, at start
and at each reload.
"""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import threading
from typing import Any

from gateway.checks import BUILTIN, Check, UnknownCheck, resolve_check
from gateway.config import Config

log = logging.getLogger("gateway.checks")

MODULE = "gateway.checks.declared"
_CARRIED = ("symbols", "requires", "wants", "io_bound")
# Set once by the milter with worker processes (gateway.commands.run).
_apart = False
# The declarations of the latest configuration asked about (a reload asks
# again: the forced actions follow the settings).
_latest: tuple[Config, dict[str, type[Check] | str]] | None = None
_lock = threading.Lock()


def declare_apart() -> None:
    """From now on this process declares the built-in checks, not imports them."""
    global _apart
    _apart = True


def declared_or_resolved(spec: str, config: Config | None) -> type[Check]:
    """The class for ``spec`` (resolve_check), or in a process that
    declares them apart, a built-in check's declaration under ``config``
    (None: any configuration's, for what does not depend on it, the
    symbols). Raises UnknownCheck as resolve_check does."""
    if not _apart or spec not in BUILTIN:
        return resolve_check(spec)
    declared = _declarations(config)
    if declared is None:
        return resolve_check(spec)
    found = declared[spec]
    if isinstance(found, str):
        raise UnknownCheck(found)
    return found


def _declarations(config: Config | None) -> dict[str, type[Check] | str] | None:
    global _latest
    with _lock:
        if _latest is not None and (config is None or _latest[0] == config):
            return _latest[1]
        if config is None:
            return None
        try:
            declared = declare(config)
        except (OSError, ValueError) as exc:
            log.warning("checks: could not declare them in a child process (%s); the milter "
                        "imports them itself", exc)
            return None
        _latest = (config, declared)
        return declared


class DeclaredCheck(Check):
    """A built-in check as declared by its class in the child: never run here."""

    forced: dict[str, str] = {}
    failure: str = ""

    def __init__(self, config: Config, ruleset: Any):
        raise TypeError(f"the {self.name} check is only declared in this process; "
                        "gateway.pipeline.check_classes(..., to_build=True) imports it")

    @classmethod
    def forced_actions(cls, config: Config) -> dict[str, str]:
        return dict(cls.forced)

    @classmethod
    def failure_description(cls) -> str:
        return cls.failure


def declare(config: Config) -> dict[str, type[Check] | str]:
    """Each built-in check by name: its declaration, or why it cannot load
    (the line resolve_check would raise). Raises OSError or ValueError when
    the child cannot answer."""
    child = subprocess.run([sys.executable, "-P", "-m", MODULE], input=pickle.dumps(config),
                           capture_output=True, check=False)
    try:
        answer = json.loads(child.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        said = child.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"the child declaring the checks ended with status "
                         f"{child.returncode}" + (f": {said[-1]}" if said else "")) from None
    found: dict[str, type[Check] | str] = {}
    for name, described in answer.items():
        if isinstance(described, str):
            found[name] = described
            continue
        attributes = {key: described[key] for key in _CARRIED}
        attributes["requires"] = tuple(attributes["requires"])
        attributes["wants"] = tuple(attributes["wants"])
        found[name] = type(described["class"], (DeclaredCheck,), {
            "name": described["name"], "forced": described["forced"],
            "failure": described["failure"], "__module__": described["module"],
            **attributes})
    return found


def describe(config: Config) -> dict[str, Any]:
    """In the child: every built-in check's declaration, under this config."""
    described: dict[str, Any] = {}
    for name in BUILTIN:
        try:
            cls = resolve_check(name)
        except Exception as exc:  # the milter says it as resolve_check would
            described[name] = str(exc)
            continue
        described[name] = {
            "class": cls.__name__, "module": cls.__module__, "name": cls.name,
            "symbols": dict(cls.symbols), "requires": list(cls.requires),
            "wants": list(cls.wants), "io_bound": cls.io_bound,
            "forced": cls.forced_actions(config), "failure": cls.failure_description()}
    return described


def main() -> int:
    config = pickle.loads(sys.stdin.buffer.read())  # from the parent process, never a peer
    print(json.dumps(describe(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
