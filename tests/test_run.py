"""``gateway run`` as an admin starts it: the supervisor and its milter
child, without Postfix (a milter socket nobody connects to is enough)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import PROJECT_ROOT, milter_config, wait_until


def start_gateway(tmp_path: Path, cwd: Path, extra: str = "") -> subprocess.Popen[str]:
    """``gateway run`` as the installed entry point runs it: its own folder,
    not the working directory, on sys.path (``-P``)."""
    socket = tmp_path / "milter.sock"
    config = tmp_path / "gateway.toml"
    config.write_text(milter_config(socket, '[pipeline]\nchecks = ["headers"]\nworkers = 0\n'
                                    + extra))
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "gateway", "run", "--config", str(config)],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    return output


def test_a_gateway_folder_in_the_working_directory_does_not_replace_the_milter(tmp_path):
    shadow = tmp_path / "admin-home"
    (shadow / "gateway").mkdir(parents=True)
    marker = tmp_path / "shadow-ran"
    (shadow / "gateway" / "__init__.py").write_text("")
    (shadow / "gateway" / "__main__.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n")
    process = start_gateway(tmp_path, cwd=shadow)
    try:
        wait_until(lambda: (tmp_path / "milter.sock").exists() or process.poll() is not None,
                   timeout=60, what="the milter's socket")
        assert process.poll() is None, stop(process)
        assert (tmp_path / "milter.sock").exists()
    finally:
        stop(process)
    assert not marker.exists()
