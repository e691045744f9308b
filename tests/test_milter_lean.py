"""The milter process keeps only what it uses: alembic migrates in a child,
numpy and the fuzzy check's hashing load on the paths that label mail.

Each lazy path still works (a migration, a failing one as one line, a
release and a label recording their fuzzy hashes), and the modules of a
running milter stay lean, so that a later import does not bring them back
quietly."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text

from gateway.config import load_config
from gateway.db import make_engine, migrate, schema_head
from gateway.quarantine.keeper import Keeper
from gateway.quarantine.release import release
from gateway.quarantine.schema import fuzzy_hashes
from gateway.quarantine.store import QuarantineError, QuarantineStore
from tests.helpers import PROJECT_ROOT, milter_config
from tests.test_quarantine import put
from tests.test_release import listener  # noqa: F401  (a fixture)


def run_python(code: str) -> dict:
    """``code`` in a fresh interpreter, as the milter is one; its last
    stdout line, JSON."""
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_milters_store_is_migrated_in_a_child_that_keeps_alembic(tmp_path: Path):
    url = f"sqlite:///{tmp_path}/state/store.db"
    found = run_python(
        "import json, sys\n"
        "from gateway.config import load_config\n"
        "from gateway.db import schema_head\n"
        "from gateway.quarantine.keeper import Keeper\n"
        f"path = {str(tmp_path / 'g.toml')!r}\n"
        f"open(path, 'w').write({milter_config(tmp_path / 'm.sock', store=url)!r})\n"
        "keeper = Keeper(load_config(path))\n"
        "keeper.store()\n"
        "print(json.dumps({'head': schema_head(), "
        "'alembic': sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako'))}))\n")
    assert found == {"head": schema_head(), "alembic": []}
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")
                                      ).scalar() == schema_head()
    finally:
        engine.dispose()


def test_a_migration_failing_in_the_child_is_one_line(tmp_path: Path):
    broken = tmp_path / "store.db"
    broken.write_bytes(b"this is no database, " * 400)
    with pytest.raises(QuarantineError) as raised:
        QuarantineStore(f"sqlite:///{broken}", migrate_apart=True)
    assert str(raised.value) == f"quarantine.url sqlite:///{broken}: file is not a database"


def test_the_childs_warnings_reach_the_milters_log(tmp_path: Path, caplog):
    """A schema newer than this gateway's (another node upgraded first): the
    child's warning is logged by the milter, under the same logger."""
    url = f"sqlite:///{tmp_path}/store.db"
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_later'"))
    engine.dispose()
    with caplog.at_level(logging.WARNING, logger="gateway.quarantine"):
        QuarantineStore(url, migrate_apart=True).close()
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("gateway.quarantine", f"the store's schema is at 9999_later, newer than this "
                               f"gateway's {schema_head()}: using it as it is; upgrade this node")]


def test_a_memory_store_is_migrated_in_the_process_that_has_it():
    """A child cannot see a database in memory: that one migrates here."""
    config = load_config(None)
    config = dataclasses.replace(config, quarantine=dataclasses.replace(
        config.quarantine, url="sqlite:///:memory:"))
    keeper = Keeper(config)
    try:
        assert put(keeper.store(), "in memory")  # its tables are there
    finally:
        keeper.close()


def test_a_release_still_records_the_fuzzy_hashes_of_the_released_mail(
        tmp_path: Path, listener):  # noqa: F811
    """Released mail is ham to the fuzzy check, whose hashing the release
    now imports only when it records them."""
    store = QuarantineStore(f"sqlite:///{tmp_path}/q.db", node="node-a")
    try:
        identifier = put(store, "released")
        release(store, identifier, listener.address, "ann")
        with store.engine.connect() as connection:
            rows = connection.execute(select(fuzzy_hashes.c.label, fuzzy_hashes.c.source)).all()
    finally:
        store.close()
    assert rows and set(rows) == {("ham", f"released:{identifier}")}
