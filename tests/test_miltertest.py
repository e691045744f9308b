"""The milter driven by OpenDKIM's ``miltertest`` (Debian package), the way
an MTA other than Postfix would: whole sessions, aborts, several messages on
one connection, an old protocol version, an MTA that offers no header or
quarantine actions, one that may add headers but not change them. The
scripts are in tests/miltertest/."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.lab.milter_process import MilterProcess
from gateway.paths import DEFAULT_RULES
from tests.helpers import PROJECT_ROOT

SCRIPTS = Path(__file__).parent / "miltertest"

pytestmark = pytest.mark.skipif(shutil.which("miltertest") is None,
                                reason="miltertest is not installed (see .ci/run)")


@pytest.fixture(scope="module")
def milter(tmp_path_factory):
    root = tmp_path_factory.mktemp("miltertest")
    rules = root / "local.toml"
    rules.write_text('[force]\nMISSING_DATE = "quarantine"\n')
    process = MilterProcess(root, (
        f'[milter]\nsocket = "unix:{root}/milter.sock"\nsocket_group = ""\n'
        '[pipeline]\nchecks = ["limits", "headers", "size", "lists"]\nworkers = 1\n'
        '[lists]\nblock_senders = ["spammer.example"]\n'
        f'[policy]\nrules = ["{DEFAULT_RULES}", "{rules}"]\n'
        '[quarantine]\nurl = ""\n[metrics]\nlisten = ""\n'),
        env={"PYTHONPATH": str(PROJECT_ROOT)})
    process.start()
    yield process
    process.stop()


@pytest.mark.parametrize("script", ["full_session", "several_messages", "old_protocol",
                                    "missing_actions", "no_header_changes"])
def test_miltertest_script(milter, script):
    result = subprocess.run(
        ["miltertest", "-s", str(SCRIPTS / f"{script}.lua"),
         "-D", f"SOCKET=unix:{milter.socket_path}", "-D", f"DIR={SCRIPTS}"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr + milter.log()[-2000:]
    assert "451" not in milter.log()
