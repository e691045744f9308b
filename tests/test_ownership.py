"""What a command run as root leaves in the state directories belongs to
the gateway's user (gateway.ownership), so the next job as that user works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, PROJECT_ROOT

NOBODY = 65534  # nobody/nogroup, standing in for the gateway's user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")

# Train as root, then as the gateway's user, in one process: the second run
# switches its effective user (Python and the venv live under /root, which
# another user cannot enter, so it cannot start as one). The first run has
# imported everything training needs.
TRAIN_TWICE = """
import os, sys
from gateway.cli import main
args = sys.argv[1:]
first = main(args)
os.setegid({uid}); os.seteuid({uid})
second = main([*args, "--seed", "7"])  # another model: a new version folder
print("exit", first, second)
"""


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory the gateway's user owns, as gateway init leaves it
    (outside pytest's 0700 folders, so that user can reach it)."""
    path = Path(tempfile.mkdtemp(prefix="gateway-state-", dir="/tmp"))
    os.chmod(path, 0o755)
    (path / "state").mkdir(mode=0o700)
    (path / "state" / "models").mkdir(mode=0o700)
    for item in (path / "state", path / "state" / "models"):
        os.chown(item, NOBODY, NOBODY)
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def config_for(state: Path) -> Path:
    config = state.parent / "gateway.toml"
    config.write_text(f'[classifier]\nstore = "{state}/models"\n'
                      f'[quarantine]\nurl = "sqlite:///{state}/quarantine.db"\n')
    return config


def test_train_as_root_then_as_the_gateways_user(state: Path):
    config = config_for(state)
    corpus = state.parent / "corpus"  # readable by the gateway's user too
    shutil.copytree(FIXTURES / "corpus", corpus)
    args = ["train", "--config", str(config), "--ham", str(corpus / "ham"), "--spam",
            str(corpus / "spam"), "--repeats", "0"]
    result = subprocess.run([sys.executable, "-c", TRAIN_TWICE.format(uid=NOBODY), *args],
                            capture_output=True, text=True, timeout=600, cwd=state.parent,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                                 "GATEWAY_MODEL_CACHE": str(state / "model-cache")})
    assert "exit 0 0" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    for path in state.rglob("*"):
        assert path.lstat().st_uid == NOBODY, path


def test_doctor_finds_and_fixes_what_root_left(state: Path):
    config = config_for(state)
    left = state / "models" / "versions"
    left.mkdir()
    (left / ".nb-1.tmp").write_text("")
    command = [sys.executable, "-m", "gateway", "doctor", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    found = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env,
                           cwd=PROJECT_ROOT)
    (line,) = [line for line in found.stdout.splitlines() if "owners" in line]
    assert "✘" in line and "versions (root)" in line and "--fix-owners" in line
    assert left.stat().st_uid == 0  # doctor alone only reports
    fixed = subprocess.run([*command, "--fix-owners"], capture_output=True, text=True,
                           timeout=120, env=env, cwd=PROJECT_ROOT)
    assert "gave 2 files to nobody" in fixed.stdout, fixed.stdout
    assert left.stat().st_uid == NOBODY and (left / ".nb-1.tmp").stat().st_uid == NOBODY
