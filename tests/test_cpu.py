"""gateway.cpu: the machine's idle share, also where /proc/stat is hidden
(systemd's ProcSubset=pid mounts /proc with subset=pid)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gateway.cpu import IdleShare, load_idle_share
from tests.helpers import PROJECT_ROOT

READ = ("import json; from gateway.cpu import IdleShare, load_idle_share; "
        "gauge = IdleShare(window=0); share = gauge.share(); "
        "print(json.dumps({'source': gauge.source, 'share': share, "
        "'implied': load_idle_share()}))")


def test_proc_stat_is_read_where_it_can_be():
    gauge = IdleShare(window=0)
    assert gauge.source == "/proc/stat"
    assert 0.0 <= gauge.share() <= 1.0
    implied = load_idle_share()
    assert implied is not None and 0.0 <= implied <= 1.0


def test_the_load_average_stands_in_where_proc_stat_is_hidden():
    # Before, the reading was 1.0 ("all cores spare") whatever the load.
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private /proc with subset=pid needs root and unshare")
    script = f"mount -t proc -o subset=pid proc /proc && test ! -e /proc/stat && " \
             f"exec {sys.executable} -c \"{READ}\""
    result = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)
    assert reading["source"] == "load average"
    # The same reading as sysinfo(2) gives at that moment (the kernel updates
    # the load average every 5 s, so two calls a moment apart agree).
    assert reading["share"] == pytest.approx(reading["implied"], abs=0.05)
