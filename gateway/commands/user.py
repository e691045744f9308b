"""``gateway user``: the console's accounts (add, passwd, disable, enable, role, list)."""

from __future__ import annotations

import argparse
import getpass
import sys

from gateway.audit import actor
from gateway.commands.common import UsageError, config_from
from gateway.config import Config
from gateway.terminal import dumps, printable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="user commands", metavar="COMMAND")
    add = commands.add_parser("add", help="add a console user")
    add.add_argument("name")
    add.add_argument("--role", choices=("analyst", "admin"), required=True,
                     help="analyst: review, release, delete, label; admin: also users, "
                          "the feedback queue and admin-only releases")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.set_defaults(handler=add_main)
    passwd = commands.add_parser("passwd", help="set a user's password (ends their sessions)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.set_defaults(handler=passwd_main)
    disable = commands.add_parser("disable", help="stop a user from logging in (ends their "
                                                  "sessions)")
    disable.add_argument("name")
    disable.set_defaults(handler=disable_main)
    enable = commands.add_parser("enable", help="let a disabled user log in again")
    enable.add_argument("name")
    enable.set_defaults(handler=enable_main)
    role = commands.add_parser("role", help="make a user analyst or admin")
    role.add_argument("name")
    role.add_argument("role", choices=("analyst", "admin"))
    role.set_defaults(handler=role_main)
    listing = commands.add_parser("list", help="the console's users")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_main)
    for sub in (add, passwd, disable, enable, role, listing):
        sub.add_argument("--config", default=argparse.SUPPRESS)


def open_console(config: Config):
    """The console's tables in the quarantine's database."""
    from gateway.commands.quarantine import open_store
    from gateway.web.console import Console

    return Console(open_store(config), config.web.login_attempts)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UsageError("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the password on; use --password-stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def _run(action, *args):
    from gateway.web.console import ConsoleError

    try:
        return action(*args)
    except ConsoleError as exc:
        raise UsageError(str(exc)) from None


def add_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    console = open_console(config)
    password = read_password(args.password_stdin)
    _run(console.add_user, args.name, args.role, password)
    console.log(actor(), "user-add", args.name, f"{args.role} (gateway user add)")
    print(printable(f"user {args.name} added ({args.role})"))
    return 0


def passwd_main(args: argparse.Namespace) -> int:
    console = open_console(config_from(args))
    if console.user(args.name) is None:
        raise UsageError(f"no user {args.name!r}")
    _run(console.set_password, args.name, read_password(args.password_stdin))
    console.log(actor(), "user-password", args.name, "gateway user passwd")
    print(printable(f"user {args.name}: password set, their sessions ended"))
    return 0


def disable_main(args: argparse.Namespace) -> int:
    console = open_console(config_from(args))
    _run(console.set_disabled, args.name, True)
    console.log(actor(), "user-disable", args.name, "gateway user disable")
    print(printable(f"user {args.name} disabled, their sessions ended"))
    return 0


def enable_main(args: argparse.Namespace) -> int:
    console = open_console(config_from(args))
    _run(console.set_disabled, args.name, False)
    console.log(actor(), "user-enable", args.name, "gateway user enable")
    print(printable(f"user {args.name} enabled"))
    return 0


def role_main(args: argparse.Namespace) -> int:
    console = open_console(config_from(args))
    _run(console.set_role, args.name, args.role)
    console.log(actor(), f"user-{args.role}", args.name, "gateway user role")
    print(printable(f"user {args.name} is now {args.role}"))
    return 0


def list_main(args: argparse.Namespace) -> int:
    users = open_console(config_from(args)).users()
    if args.json:
        print(dumps([u.as_dict() for u in users], indent=2))
        return 0
    if not users:
        print("no users; add one with: gateway user add NAME --role admin")
    for u in users:
        last = u.last_login.isoformat(timespec="seconds") if u.last_login else "never"
        print(printable(f"{u.name:<20} {u.role:<8} {'disabled' if u.disabled else 'active':<9}"
                        f" last login {last}" + ("  (LDAP)" if u.directory else "")))
    return 0
