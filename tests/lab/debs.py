"""Debian packages unpacked into a folder, never installed.

For MTAs the tests run beside Postfix: installing Debian's ``sendmail-bin``
or ``exim4-daemon-light`` would remove Postfix (they all provide
``mail-transport-agent``), so their packages are fetched with ``apt-get
download`` and unpacked with ``dpkg -x`` into a cache folder that lives
across test sessions (and across test runs at once: a lock). Setuid and
setgid bits are dropped (the tests run as root, and the dynamic loader
ignores ``LD_LIBRARY_PATH`` for set-id programs, which is how the unpacked
libraries are found). ``apt-get download`` needs package lists: .ci/run
runs ``apt-get update`` first.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

CACHE = Path(os.environ.get("GATEWAY_LAB_DEBS", "/var/tmp/gateway-lab-debs"))
MULTIARCH = "usr/lib/x86_64-linux-gnu"


class UnpackError(RuntimeError):
    """The packages cannot be fetched or unpacked here (the tests skip)."""


def unpacked(name: str, packages: Sequence[str], *, with_dependencies: bool = False,
             not_needed: frozenset[str] = frozenset()) -> Path:
    """The folder holding ``packages`` unpacked (fetched on first use),
    ``CACHE/name``; ``with_dependencies``: also the packages they depend on
    that this machine has not installed (the first of each alternative),
    but those in ``not_needed``. Raises UnpackError with the reason."""
    root = CACHE / name
    stamp = root / ".unpacked"
    wanted = " ".join(sorted(packages))
    if stamp.exists() and stamp.read_text() == wanted:
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise UnpackError("apt-get and dpkg are needed to fetch Debian packages")
    if os.geteuid() != 0:
        raise UnpackError("fetching Debian packages with apt-get download needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be fetching them too
        if not (stamp.exists() and stamp.read_text() == wanted):
            _fetch(packages, root, wanted, with_dependencies, not_needed)
    return root


def _fetch(packages: Sequence[str], root: Path, wanted: str, with_dependencies: bool,
           not_needed: frozenset[str]) -> None:
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        os.chmod(scratch, 0o755)  # apt's _apt user writes the download here
        download(packages, Path(scratch))
        if with_dependencies:
            missing = sorted({name for deb in Path(scratch).glob("*.deb")
                              for name in _dependencies(deb)
                              if name not in not_needed and not _installed(name)})
            if missing:
                download(missing, Path(scratch))
        partial = Path(scratch) / "root"
        for deb in sorted(Path(scratch).glob("*.deb")):
            _run(["dpkg", "-x", str(deb), str(partial)], f"dpkg -x {deb.name}")
        for path in partial.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o6000:
                path.chmod(path.stat().st_mode & ~0o6000)
        (partial / ".unpacked").write_text(wanted)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)


def download(packages: Sequence[str], into: Path) -> None:
    """``apt-get download`` into ``into``."""
    try:
        _run(["apt-get", "download", "-q", *packages], "apt-get download", cwd=into)
    except UnpackError as exc:
        raise UnpackError(f"{exc} (apt-get update first?)") from None


def _dependencies(deb: Path) -> list[str]:
    """The first alternative of each of a package's Depends."""
    result = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                            text=True, timeout=60)
    names = []
    for clause in result.stdout.split(","):
        first = clause.split("|")[0].strip()
        names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
    return [name for name in names if name]


def _installed(package: str) -> bool:
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                            capture_output=True, text=True, timeout=60)
    return status.returncode == 0 and status.stdout.endswith("installed")


def missing_libraries(binary: Path, root: Path) -> list[str]:
    """The shared libraries ``binary`` needs that neither this machine nor
    ``root`` has (from ldd)."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "LD_LIBRARY_PATH": library_path(root)})
    return [line.split()[0] for line in result.stdout.splitlines() if "not found" in line]


def library_path(root: Path) -> str:
    """``LD_LIBRARY_PATH`` for programs unpacked under ``root``."""
    # Some Debian libraries (libspf2) are still in /usr/lib, not the multiarch folder.
    return ":".join(str(root / part) for part in (MULTIARCH, "lib/x86_64-linux-gnu", "usr/lib"))


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnpackError(f"{what}: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines()
                 if not line.startswith("W:")]
        raise UnpackError(f"{what} failed: {' '.join(lines)[-400:]}")
