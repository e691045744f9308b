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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select, text

from gateway.checks import BUILTIN, resolve_check
from gateway.checks import declared as declared_module
from gateway.checks.declared import DeclaredCheck, declare, declared_or_resolved
from gateway.config import load_config
from gateway.db import make_engine, migrate, schema_head
from gateway.pipeline import check_classes
from gateway.policy import Judge
from gateway.quarantine.keeper import Keeper
from gateway.quarantine.release import release
from gateway.quarantine.schema import fuzzy_hashes
from gateway.quarantine.store import QuarantineError, QuarantineStore
from gateway.ruleset import Ruleset, load_rules
from gateway.symbolcheck import known_symbols
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


def test_two_nodes_migrate_a_shared_postgresql_in_their_children_at_once(postgres):
    """Each child takes the advisory lock as the milter did: one migrates,
    the other finds the schema current; both name the same head."""
    with ThreadPoolExecutor(2) as pool:
        opened = list(pool.map(lambda node: QuarantineStore(postgres.url, node=node,
                                                            migrate_apart=True),
                               ("node-a", "node-b")))
    try:
        with opened[0].engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")
                                      ).scalar() == schema_head()
        assert put(opened[1], "after the migration")
    finally:
        for store in opened:
            store.close()


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


def test_a_memory_store_is_migrated_in_the_process_that_has_it(tmp_path: Path):
    """A child cannot see a database in memory: that one migrates here."""
    (tmp_path / "plain.toml").write_text("")
    config = load_config(str(tmp_path / "plain.toml"))
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


# -- the checks, declared in a child --------------------------------------------------------


def settings_that_force(tmp_path: Path):
    """A config whose settings change the checks' forced actions."""
    path = tmp_path / "force.toml"
    path.write_text('[clamav]\non_fail = "tempfail"\non_virus = "quarantine"\n'
                    '[auth]\nhelo_forged_action = "reject"\nrequire_tls_action = "tempfail"\n'
                    '[identity]\noutbound = "learn"\n')
    return load_config(str(path))


def test_each_built_in_check_is_declared_as_its_class_says(tmp_path: Path):
    config = settings_that_force(tmp_path)
    declared = declare(config)
    assert set(declared) == set(BUILTIN)
    for name, found in declared.items():
        real = resolve_check(name)
        assert not isinstance(found, str), found
        assert issubclass(found, DeclaredCheck) and found.__name__ == real.__name__
        assert (found.name, dict(found.symbols), found.requires, found.wants, found.io_bound,
                found.section) == (real.name, dict(real.symbols), real.requires, real.wants,
                                   real.io_bound, real.section)
        assert found.catalog() == real.catalog()
        assert found.failure_symbol() == real.failure_symbol()
        assert found.failure_description() == real.failure_description()
        assert found.forced_actions(config) == real.forced_actions(config)
    assert declared["clamav"].forced_actions(config) == {  # type: ignore[union-attr]
        "CLAMAV_VIRUS": "quarantine", "CLAMAV_ERROR": "tempfail"}
    with pytest.raises(TypeError, match="only declared"):
        declared["spf"](config, Ruleset())  # type: ignore[call-arg,operator]


def test_the_milter_judges_by_the_declared_checks_as_by_the_checks(tmp_path: Path,
                                                                     monkeypatch):
    """The policy's forced actions and the known symbols are the same
    whether the checks are imported or declared; only the declaring process
    gets declarations, and building the checks still imports them."""
    config = settings_that_force(tmp_path)
    imported = check_classes(config, [])
    monkeypatch.setattr(declared_module, "_apart", True)
    monkeypatch.setattr(declared_module, "_latest", None)
    declared = check_classes(config, [])
    assert all(issubclass(c, DeclaredCheck) for c in declared)
    assert [c.name for c in declared] == [c.name for c in imported]
    ruleset = load_rules(config.policy.rules)
    assert Judge(config, declared, ruleset).policy.rules.force == \
        Judge(config, imported, ruleset).policy.rules.force
    assert known_symbols(declared) == known_symbols(imported)
    assert not any(issubclass(c, DeclaredCheck)
                   for c in check_classes(config, [], to_build=True))


def test_a_reload_declares_the_checks_under_its_own_settings(tmp_path: Path, monkeypatch):
    """The forced actions follow the configuration a generation is built
    from, not the first one declared."""
    monkeypatch.setattr(declared_module, "_apart", True)
    monkeypatch.setattr(declared_module, "_latest", None)
    (tmp_path / "plain.toml").write_text("")
    first, reloaded = load_config(str(tmp_path / "plain.toml")), settings_that_force(tmp_path)
    clamav = declared_or_resolved("clamav", first)
    assert clamav.forced_actions(first) == {"CLAMAV_VIRUS": "reject", "CLAMAV_ERROR": "tempfail"}
    clamav = declared_or_resolved("clamav", reloaded)
    assert clamav.forced_actions(reloaded) == {"CLAMAV_VIRUS": "quarantine",
                                               "CLAMAV_ERROR": "tempfail"}
    assert declared_or_resolved("clamav", reloaded) is clamav  # asked once per configuration


def test_a_child_that_cannot_declare_leaves_the_milter_importing_the_checks(
        tmp_path: Path, monkeypatch, caplog):
    config = settings_that_force(tmp_path)
    monkeypatch.setattr(declared_module, "_apart", True)
    monkeypatch.setattr(declared_module, "_latest", None)
    monkeypatch.setattr(declared_module, "MODULE", "gateway.no_such_module")
    with caplog.at_level(logging.WARNING, logger="gateway.checks"):
        found = declared_or_resolved("spf", config)
    assert found is resolve_check("spf")
    assert [r.getMessage() for r in caplog.records] == [
        "checks: could not declare them in a child process (the child declaring the checks "
        "ended with status 1: /usr/bin/python3: No module named gateway.no_such_module); the "
        "milter imports them itself".replace("/usr/bin/python3", sys.executable)]


# What only the workers, the migration or the labelling paths use; the
# milter started with worker processes must not hold any of it.
NOT_IN_THE_MILTER = ("numpy", "alembic", "mako", "pygments", "icu", "rapidfuzz", "dkim", "spf",
                     "dns", "gateway.lookalike", "gateway.checks.fuzzy", "gateway.checks.spf",
                     "gateway.checks.identity", "gateway.classifier.model", "gateway.fuzzyhash",
                     "gateway.commands.classifier", "gateway.commands.web")

STARTED_MILTER = '''
import json, sys
import gateway.milter
from gateway.correspondents import observations
from gateway.decider import Decision
from gateway.facts import IdentityFacts
from gateway.message import Envelope
from gateway.verdict import Verdict

def serve(runtime):
    # Where libmilter would serve: every part is built. What the milter does
    # with each message beside the workers: the correspondent memory learns
    # an outbound message's recipients by their registrable domains.
    facts = IdentityFacts(direction="outbound", author="ann@ours.example",
                          recipients=("bob@mail.partner.example",))
    verdict = Verdict(action="accept", score=0.0, required=4.0, symbols=(), failed_checks=(),
                      reason="test", facts={"identity": facts.to_json()})
    learned = observations(Envelope(mail_from="ann@ours.example",
                                    rcpt_to=("bob@mail.partner.example",)),
                           Decision(verdict, "accept", notes={}))
    print(json.dumps({"domains": [o.via for o in learned], "modules": sorted(sys.modules)}))

gateway.milter.serve = serve
from gateway.cli import main
main(["--config", sys.argv[1], "run", "--no-supervisor"])
'''


@pytest.mark.slow
def test_a_milter_with_workers_starts_without_what_only_the_workers_use(tmp_path: Path):
    """``gateway run``'s milter process as it starts (every default check
    on, a worker, a quarantine it migrates), up to where it would serve, and
    the correspondent memory's reading of a message it learns from."""
    path = tmp_path / "gateway.toml"
    path.write_text(milter_config(tmp_path / "m.sock", "[pipeline]\nworkers = 1\n"))
    done = subprocess.run([sys.executable, "-c", STARTED_MILTER, str(path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["domains"] == ["partner.example"]
    modules = set(found["modules"])
    assert "gateway.checks.declared" in modules and "gateway.workers" in modules
    held = sorted(name for name in modules if name in NOT_IN_THE_MILTER
                  or name.split(".")[0] in NOT_IN_THE_MILTER)
    assert held == []
