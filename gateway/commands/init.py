"""``gateway init``: make this machine ready to run the gateway as a service.

- the ``gateway`` system user (no login, no home of its own), unless it exists;
- ``/etc/gateway/gateway.toml`` with every key of every section, its
  meaning and its default, generated from the schema (so it cannot drift
  from what the gateway reads); the keys are commented out, so an upgrade's
  new defaults apply until you choose otherwise;
- the state directory (quarantine, model store) ``0700`` for that user,
  the socket's directory in Postfix's queue directory (``0750``, group
  ``postfix``), and the quarantine database, created and migrated.

Safe to run again: an existing config file is kept (``--force`` rewrites
it), directories get their owner and mode back. Needs root.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import os
import pwd
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.commands.common import UsageError
from gateway.commands.configshow import _toml
from gateway.config import SECTIONS, Config, parse_config
from gateway.paths import DEFAULT_CONFIG, DEPLOY_DIR
from gateway.schema import ConfigError
from gateway.units import UNITS, Installation, render_unit

STATE_DIR = Path("/var/lib/gateway")
UNIT_DIR = Path("/etc/systemd/system")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="gateway",
                        help="the system user the service runs as (created if missing; "
                             "default: gateway)")
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR, metavar="DIR",
                        help=f"quarantine and model store (default: {STATE_DIR})")
    parser.add_argument("--socket", help="milter.socket, if not the default "
                        "(unix:/var/spool/postfix/gateway/milter.sock)")
    parser.add_argument("--force", action="store_true",
                        help="rewrite the config file even if it exists")
    parser.add_argument("--unit", action="store_true",
                        help=f"also install the systemd units (the milter, the console) in "
                             f"{UNIT_DIR}, for this installation's program, user, state "
                             "directory and socket")
    parser.add_argument("--unit-dir", type=Path, default=UNIT_DIR, metavar="DIR",
                        help=f"where --unit writes them (default: {UNIT_DIR})")
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the config file it would write, and do nothing else")


def main(args: argparse.Namespace) -> int:
    config_path = Path(getattr(args, "config", None) or DEFAULT_CONFIG)
    settings = chosen_settings(args.state_dir, args.socket)
    text = render(settings)
    try:  # what we write must be what the gateway reads
        config = parse_config(text, str(config_path), base_dir=config_path.parent)
    except ConfigError as exc:
        raise UsageError(f"init: {exc.problems[0]}") from None
    if args.print_only:
        print(text, end="")
        return 0
    if os.geteuid() != 0:
        raise UsageError("init: run it as root (it creates a system user and directories "
                         "owned by it)")
    user = ensure_user(args.user, args.state_dir)
    write_config(config_path, text, user, args.force)
    make_directories(config, user)
    prepare_store(config)
    if args.unit:
        install_units(installation(config, config_path, user, args.state_dir), args.unit_dir,
                      args.force)
    print(f"next: gateway doctor --config {config_path}  (checks clamd, DNS, the store, "
          "Postfix)")
    return 0


# -- the config file -----------------------------------------------------------------------


def chosen_settings(state_dir: Path, socket: str | None) -> dict[str, dict[str, object]]:
    """The values init sets actively (those differing from the defaults)."""
    chosen: dict[str, dict[str, object]] = {}
    defaults = Config()
    url = f"sqlite:///{state_dir / 'quarantine.db'}"
    if url != defaults.quarantine.url:
        chosen.setdefault("quarantine", {})["url"] = url
    store = str(state_dir / "models")
    if store != defaults.classifier.store:
        chosen.setdefault("classifier", {})["store"] = store
    if socket and socket != defaults.milter.socket:
        chosen.setdefault("milter", {})["socket"] = socket
    return chosen


def render(chosen: dict[str, dict[str, object]] | None = None) -> str:
    """gateway.toml with every section and key the gateway reads: its doc
    line and its default, commented out (``#key = value``), or set when
    ``chosen`` has a value for it."""
    chosen = chosen or {}
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [
        f"# gateway.toml, written by gateway init on {stamp}.",
        "#",
        "# Every key the gateway reads is here, with what it means and its default,",
        "# commented out: a key left commented keeps the default (also the defaults of",
        "# later versions). Uncomment and change what you need, then:",
        "#   gateway config check   (validates; 'config ok' or one line per problem)",
        "#   systemctl reload gateway",
        "# 'gateway config show' prints the effective value of every key.",
    ]
    defaults = Config()
    for section_field in dataclasses.fields(Config):
        name = section_field.name
        if name not in SECTIONS:
            continue  # "source": where the config came from, not a section
        section = getattr(defaults, name)
        lines += ["", f"[{name}]"]
        doc = (type(section).__doc__ or "").strip()
        if doc and not doc.startswith(type(section).__name__):
            lines += [f"# {line.strip()}" if line.strip() else "#" for line in doc.splitlines()]
        for key_field in dataclasses.fields(section):
            help_text = key_field.metadata.get("doc") or ""
            if help_text:
                lines += _wrap(help_text)
            key = key_field.name
            if key in chosen.get(name, {}):
                lines.append(f"{key} = {_toml(chosen[name][key])}")
            else:
                lines.append(f"#{key} = {_toml(getattr(section, key))}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 78) -> list[str]:
    words, lines, line = text.split(), [], "#"
    for word in words:
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    lines.append(line)
    return lines


def write_config(path: Path, text: str, user: pwd.struct_passwd, force: bool) -> None:
    """Root owns it, the service's group may read it (it may hold the
    database password), nobody else."""
    if path.exists() and not force:
        say(f"kept {path} (it exists; --force rewrites it)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.chown(temporary, 0, user.pw_gid)
    os.chmod(temporary, 0o640)
    os.replace(temporary, path)
    say(f"wrote {path} (mode 0640, root:{_group_name(user.pw_gid)})")


# -- the user and the directories ----------------------------------------------------------


def ensure_user(name: str, home: Path) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--home-dir", str(home), "--no-create-home",
         "--shell", "/usr/sbin/nologin", "--comment", "mail filtering gateway", name],
        capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"init: cannot create user {name}: "
                         f"{result.stderr.strip() or result.returncode}")
    say(f"created system user {name} (no login, home {home})")
    return pwd.getpwnam(name)


def make_directories(config: Config, user: pwd.struct_passwd) -> None:
    directories: list[tuple[Path, int, int, int]] = []  # path, mode, uid, gid
    url = config.quarantine.url
    if url.startswith("sqlite:///"):
        directories.append((Path(url.removeprefix("sqlite:///")).parent, 0o700,
                            user.pw_uid, user.pw_gid))
    from gateway.classifier.store import default_cache, is_database_url

    store = config.classifier.store  # a shared store's models are cached locally
    directories.append((default_cache() if is_database_url(store) else Path(store), 0o700,
                        user.pw_uid, user.pw_gid))
    if config.pipeline.spool_dir:
        directories.append((Path(config.pipeline.spool_dir), 0o700, user.pw_uid, user.pw_gid))
    socket = config.milter.socket
    if socket.startswith(("unix:", "local:")):
        group = config.milter.socket_group
        try:
            gid = grp.getgrnam(group).gr_gid if group else user.pw_gid
        except KeyError:
            say(f"skipped the socket's directory: there is no group {group} (is Postfix "
                "installed?)")
        else:
            directories.append((Path(socket.partition(":")[2]).parent, 0o750, user.pw_uid,
                                gid))
    for path, mode, uid, gid in directories:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        say(f"directory {path} (mode {mode:04o}, {user.pw_name}:{_group_name(gid)})")


def prepare_store(config: Config) -> None:
    """Create the quarantine database and bring its schema to the newest."""
    if not config.quarantine.url:
        return
    from gateway.quarantine.store import QuarantineError, QuarantineStore

    try:
        store = QuarantineStore(config.quarantine.url)
    except QuarantineError as exc:
        say(f"store not ready: {exc} (the gateway retries when it starts)")
        return
    except ModuleNotFoundError as exc:
        say(f"store not ready: the driver {exc.name} is not installed "
            "(pip install 'gateway[postgres]')")
        return
    store.close()
    say(f"store {store.url.split('@')[-1]} created and migrated")


def installation(config: Config, config_path: Path, user: pwd.struct_passwd,
                 state_dir: Path) -> Installation:
    socket = config.milter.socket
    unix = socket.startswith(("unix:", "local:"))
    return Installation(
        program=_program(), config=config_path, user=user.pw_name,
        group=_group_name(user.pw_gid), state_dir=state_dir,
        socket_dir=Path(socket.partition(":")[2]).parent if unix else None,
        socket_group=config.milter.socket_group if unix else "",
        spool_dir=Path(config.pipeline.spool_dir) if config.pipeline.spool_dir else None)


def _program() -> Path:
    """This installation's ``gateway`` entry point."""
    if Path(sys.argv[0]).name == "gateway":
        return Path(sys.argv[0]).resolve()
    return Path(sys.executable).with_name("gateway")


def install_units(installation: Installation, unit_dir: Path, force: bool) -> None:
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        target = unit_dir / name
        if target.exists() and not force:
            say(f"kept {target} (it exists; --force rewrites it)")
            continue
        template = (DEPLOY_DIR / "systemd" / name).read_text(encoding="utf-8")
        target.write_text(render_unit(template, installation), encoding="utf-8")
        os.chmod(target, 0o644)
        say(f"installed {target} (ExecStart {installation.program}, User "
            f"{installation.user})")
    say("systemctl daemon-reload && systemctl enable --now gateway gateway-web")


def say(text: str) -> None:
    print(f"init: {text}")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
