"""``gateway demo`` offline, and the lab's milter process leaving nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.lab.milter_process import MilterProcess, group_members
from tests.helpers import PROJECT_ROOT, SPINE_CHECKS


@pytest.mark.postfix
def test_the_demo_shows_accept_quarantine_and_reject_without_internet_dns():
    if os.geteuid() != 0:
        pytest.skip("the demo's private Postfix needs root")
    missing = [p for p in ("postfix", "clamd", "knotd")
               if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (see .ci/run)")
    result = subprocess.run([sys.executable, "-m", "gateway", "demo"], capture_output=True,
                            text=True, cwd=PROJECT_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    answers = dict(re.findall(r"^== (\S+).*\n   (.*)$", result.stdout, re.MULTILINE))
    assert answers["01-ham.eml"] == "SMTP answer: 250 accepted and delivered; the gateway added:"
    assert answers["02-no-date-no-message-id.eml"].startswith(
        "SMTP answer: 250 accepted, then held in the quarantine as ")
    assert answers["03-blocklisted-sender.eml"].startswith(
        "SMTP answer: 550 5.7.1 Rejected: envelope sender is on the local block list")
    assert answers["04-forged-spam-header.eml"].startswith("SMTP answer: 250 accepted and")
    assert answers["05-eicar-in-a-zip"].startswith(
        "SMTP answer: 550 5.7.1 Rejected: virus found by ClamAV")
    assert "NXDOMAIN" not in result.stdout  # the lab's DNS answered for the sample domains
    assert "X-Spam-Status: No, score=-50" not in result.stdout  # the forged header is gone


@pytest.mark.slow
def test_stopping_the_milter_ends_every_process_it_started(tmp_path: Path):
    socket = tmp_path / "milter.sock"
    config = (f'[milter]\nsocket = "unix:{socket}"\n{SPINE_CHECKS}workers = 2\n'
              '[quarantine]\nurl = ""\n[metrics]\nlisten = ""\n')
    milter = MilterProcess(tmp_path, config, env={"PYTHONPATH": str(PROJECT_ROOT)}).start()
    group = milter.process.pid
    assert len(group_members(group)) >= 4  # supervisor, milter, forkserver, workers
    milter.stop()
    assert group_members(group) == []


@pytest.mark.slow
def test_a_killed_gateway_leaves_no_workers_either(tmp_path: Path):
    socket = tmp_path / "milter.sock"
    config = (f'[milter]\nsocket = "unix:{socket}"\n{SPINE_CHECKS}workers = 2\n'
              '[quarantine]\nurl = ""\n[metrics]\nlisten = ""\n')
    milter = MilterProcess(tmp_path, config, env={"PYTHONPATH": str(PROJECT_ROOT)}).start()
    group = milter.process.pid
    milter.process.kill()  # the supervisor dies at once; its children do not notice
    milter.process.wait()
    assert group_members(group)
    milter.stop()
    assert group_members(group) == []
