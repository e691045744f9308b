"""The store's migrations in a short-lived child process.

alembic, and mako and pygments with it (12 MB and 150 modules), is needed
once, to bring the schema to the newest migration at start; a process that
imported it keeps it for as long as it runs. The milter, which runs for
months, migrates through this child instead (``python -m
gateway.quarantine.migrator``), so it never holds alembic.

The child reads the store's URL on stdin (never in its arguments, which
``ps`` shows with the password) and answers one JSON line on stdout: the
schema head it migrated to, or the error as one line, and the log lines
the migration wrote (a schema newer than this gateway's), which the parent
logs as its own.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from gateway.db import MigrationFailed, first_line, make_engine, migrate, schema_head

MODULE = "gateway.quarantine.migrator"


def migrate_apart(url: str) -> str:
    """Bring the store at ``url`` to the newest migration in a child
    process; the schema head it is at then. Raises MigrationFailed."""
    # -P: like the milter itself, never a gateway/ folder where it stands.
    child = subprocess.run([sys.executable, "-P", "-m", MODULE], input=url,
                           capture_output=True, text=True, check=False)
    try:
        answer = json.loads(child.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        said = child.stderr.strip().splitlines()
        raise MigrationFailed(f"the migration process ended with status {child.returncode}"
                              + (f": {said[-1]}" if said else "")) from None
    for name, level, line in answer.get("log", []):
        logging.getLogger(name).log(level, "%s", line)
    if "error" in answer:
        raise MigrationFailed(answer["error"])
    return str(answer["head"])


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, record.levelno, record.getMessage()))


def main() -> int:
    url = sys.stdin.read()
    collected = _Collect()
    logging.getLogger().addHandler(collected)
    logging.getLogger().setLevel(logging.INFO)
    # As in the milter's own log (gateway.logs): alembic's problems, not its narration.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    answer: dict[str, object]
    try:
        engine = make_engine(url, pool_size=1)
        try:
            migrate(engine)
        finally:
            engine.dispose()
        answer = {"head": schema_head()}
    except Exception as exc:  # one line for the parent to say
        answer = {"error": first_line(exc)}
    answer["log"] = collected.lines
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
