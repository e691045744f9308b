"""Shared fixtures: a real Postfix on loopback relaying to a sink, and the
gateway milter as a child process attached to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.lab.clamd import ClamdInstance
from gateway.lab.milter_process import MilterProcess
from gateway.lab.postfix import PostfixInstance, free_port
from gateway.lab.sink import Sink
from tests.helpers import PROJECT_ROOT, milter_config
from tests.lab.postgres import PostgresInstance, postgres_bin
from tests.markers import markers_for


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # postfix, postgres and browser, from the fixtures each test uses (tests/markers.py)
    for item in items:
        for marker in sorted(markers_for(item)):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def lab_dir() -> Iterator[Path]:
    """A folder the postfix user can reach (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gateway-lab-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture(scope="session")
def milter_socket(lab_dir: Path) -> Path:
    return lab_dir / "milter" / "milter.sock"


@pytest.fixture(scope="session")
def postfix(lab_dir: Path, sink: Sink, milter_socket: Path) -> Iterator[PostfixInstance]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    if shutil.which("postfix") is None:
        pytest.skip("postfix is not installed (see .ci/run)")
    instance = PostfixInstance(lab_dir / "postfix", relay_port=sink.port,
                               milter=f"unix:{milter_socket}", reinject_port=free_port())
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def clamd(lab_dir: Path) -> Iterator[ClamdInstance]:
    """A real clamd with the project's test signatures, shared by the session."""
    if shutil.which("clamd") is None:
        pytest.skip("clamd is not installed (see .ci/run)")
    with ClamdInstance(lab_dir / "clamd") as running:
        yield running


@pytest.fixture
def own_clamd(lab_dir: Path, request) -> Iterator[ClamdInstance]:
    """A clamd of the test's own, free to be killed."""
    if shutil.which("clamd") is None:
        pytest.skip("clamd is not installed (see .ci/run)")
    instance = ClamdInstance(lab_dir / f"clamd-{request.node.name[:40]}")
    with instance:
        yield instance


@pytest.fixture(scope="session")
def keys():
    from tests.authlab import make_keys

    return make_keys()


@pytest.fixture(scope="session")
def knot(lab_dir: Path, keys):
    """A real authoritative DNS server (knotd) with the test zones."""
    from gateway.lab.dns import KnotServer
    from tests.authlab import build_zones

    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (see .ci/run)")
    with KnotServer(lab_dir / "knot", build_zones(keys)) as server:
        yield server


@pytest.fixture
def milter_store(lab_dir: Path) -> str:
    """The quarantine database of the test's ``gateway_milter`` (a URL): one
    per test, so that no test sees another's held mail, list entries or
    greylisting, whatever ran before it."""
    return f"sqlite:///{tempfile.mkdtemp(prefix='store-', dir=lab_dir)}/quarantine.db"


@pytest.fixture
def gateway_milter(
    lab_dir: Path, milter_socket: Path, milter_store: str, postfix: PostfixInstance
) -> Iterator[Callable[[str], MilterProcess]]:
    """Start the gateway milter on the socket Postfix uses, with extra TOML
    (and ``milter_store`` as its quarantine, unless that TOML names one)."""
    started: list[MilterProcess] = []

    def start(extra_toml: str = "") -> MilterProcess:
        for running in started:
            running.stop()
        process = MilterProcess(
            lab_dir / "milter",
            milter_config(milter_socket, extra_toml, milter_store),
            env={"PYTHONPATH": str(PROJECT_ROOT)},
        )
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def postgres(lab_dir: Path, request) -> Iterator[PostgresInstance]:
    """A private PostgreSQL cluster of the test's own (the store's database
    for several nodes)."""
    if postgres_bin() is None or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL server is not installed (see .ci/run)")
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL cluster runs as the postgres user: needs root")
    with PostgresInstance(lab_dir / f"pg-{request.node.name[:30]}") as instance:
        yield instance
