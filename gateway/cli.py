"""The ``gateway`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from gateway import supervisor
from gateway.commands.common import UsageError
from gateway.schema import ConfigError
from gateway.terminal import printable

__all__ = ["UsageError", "main"]  # UsageError here for commands written before it moved

def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if supervisor.wants_supervisor(words):
        return supervisor.main(words)
    milter = supervisor.serves_milter(words)
    if milter:
        supervisor.leave_stop_signals_to_libmilter()
    parser = build_parser(milter_only=milter)
    args = parser.parse_args(words)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return _run(args)
    finally:
        if os.geteuid() == 0 and _command(words) not in KEEP_OWNERS:
            _hand_state_over(args)


# Commands after which root's files in the state directories stay as they
# are: init sets owners itself, demo has folders of its own, run and web are
# services (their units run them as the gateway's user), doctor reports them
# (and fixes them with --fix-owners).
KEEP_OWNERS = frozenset({"init", "demo", "run", "web", "doctor"})


def _command(words: Sequence[str]) -> str | None:
    return next((w for i, w in enumerate(words) if not w.startswith("-")
                 and (i == 0 or words[i - 1] != "--config")), None)


def _hand_state_over(args: argparse.Namespace) -> None:
    """What this command, run as root, created in the state directories goes
    to their owner, the gateway's user (gateway.ownership)."""
    from gateway.commands.common import config_from
    from gateway.ownership import hand_over

    try:
        config = config_from(args)
    except Exception:  # a broken config: the command has said so already
        return
    try:
        hand_over(config)
    except Exception as exc:  # the command's own outcome stands
        print(printable(f"gateway: could not give the state's new files to its owner: "
                        f"{exc} (gateway doctor shows them)"), file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    try:
        status = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        return _reader_went_away()
    except ConfigError as exc:
        for line in exc.problems:
            print(printable(f"gateway: {line}"), file=sys.stderr)
        return 2
    except UsageError as exc:
        print(printable(f"gateway: {exc}"), file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (hint := missing_extra(exc.name)) is None:
            raise
        print(printable(f"gateway: {hint}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# Modules of the optional extras (pyproject.toml); scoring mail needs none.
EXTRAS = {"sklearn": "train", "scipy": "train", "matplotlib": "train",
          "psycopg": "postgres", "aiosmtpd": "demo",
          "flask": "web", "werkzeug": "web", "jinja2": "web", "waitress": "web", "nh3": "web",
          "argon2": "web"}


def missing_extra(module: str | None) -> str | None:
    """One line naming the extra that brings ``module``, if one does."""
    top = (module or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return f"this needs {top}, from the [{extra}] extra: pip install 'gateway[{extra}]'"


SIGPIPE_STATUS = 128 + 13
RUN_HELP = "run the milter in the foreground until SIGTERM"


def _reader_went_away() -> int:
    """``gateway quarantine list | head``: the reader closed the pipe.

    Exit quietly, with the status a shell reports for a program ended by
    SIGPIPE. Output still buffered would fail again when Python flushes it at
    exit, so stdout is pointed at /dev/null first (the recipe in the Python
    documentation of the signal module).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (tests)
        pass
    return SIGPIPE_STATUS


def build_parser(milter_only: bool = False) -> argparse.ArgumentParser:
    """Every command; ``milter_only``: ``run`` alone, for the milter process,
    which then never imports the other commands (nor numpy with ``train``)."""
    parser = argparse.ArgumentParser(
        prog="gateway", description="Inbound mail filtering gateway (Postfix milter)."
    )
    parser.add_argument(
        "--config",
        help="config file (default: /etc/gateway/gateway.toml "
        "if it exists, else embedded defaults)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config",
            default=argparse.SUPPRESS,
            help="config file (overrides the global --config)",
        )
        sub.set_defaults(handler=handler)
        return sub

    if milter_only:
        from gateway.commands import run as run_command

        run_command.add_arguments(command("run", run_command.main, RUN_HELP))
        return parser

    from gateway.commands import (
        backup,
        check,
        classifier,
        configcheck,
        configshow,
        correspondents,
        demo,
        doctor,
        feedback,
        greylist,
        identity,
        init,
        learn,
        lists,
        nodes,
        quarantine,
        ratelimit,
        replay,
        run,
        symbols,
        trace,
        user,
        web,
    )

    run_parser = command("run", run.main, RUN_HELP)
    run.add_arguments(run_parser)

    backup.add_backup_arguments(command(
        "backup", backup.backup_main, "copy this node's SQLite store and folder model store "
        "into a new folder, consistently while the gateway runs"))
    backup.add_restore_arguments(command(
        "restore", backup.restore_main, "put a backup in place of this node's stores (refuses "
        "to replace mail without --force)"))

    check_parser = command(
        "check", check.main, "score message files offline and explain the verdicts"
    )
    check.add_arguments(check_parser)

    train_parser = command("train", classifier.train_main,
                           "train a spam model from your own ham and spam")
    classifier.add_train_arguments(train_parser)
    evaluate_parser = command("evaluate", classifier.evaluate_main,
                              "measure a spam model on labelled mail")
    classifier.add_evaluate_arguments(evaluate_parser)
    learn_parser = command("learn", learn.main,
                           "add labelled mail (files or quarantined messages) to the learned "
                           "training set that 'train --feedback' uses")
    learn.add_arguments(learn_parser)
    model_parser = commands.add_parser("model", help="list, promote or roll back spam models",
                                       description="the model store")
    classifier.add_model_arguments(model_parser)

    quarantine_parser = commands.add_parser(
        "quarantine", help="list, show, release, delete or purge quarantined mail",
        description="the quarantine")
    quarantine.add_arguments(quarantine_parser)
    list_parser = commands.add_parser(
        "list", help="the managed allow and block lists: add, remove, show, expire",
        description="allow and block lists in the store's database, used by the milter "
        "within seconds")
    lists.add_arguments(list_parser)

    identity_parser = commands.add_parser(
        "identity", help="protected people for the identity check: import from CSV or LDIF",
        description="protected people for the identity check")
    identity.add_arguments(identity_parser)
    correspondents_parser = commands.add_parser(
        "correspondents", help="the correspondent memory: show or forget one address",
        description="who writes to whom, as the identity check remembers it")
    correspondents.add_arguments(correspondents_parser)
    greylist_parser = commands.add_parser(
        "greylist", help="greylisting's triplets: show, pass, forget",
        description="greylisting's triplets in the store's database, shared by every node")
    greylist.add_arguments(greylist_parser)
    ratelimit_parser = commands.add_parser(
        "ratelimit", help="the rate limits and their buckets: show",
        description="[[ratelimit]] limits and their buckets in the store's database")
    ratelimit.add_arguments(ratelimit_parser)

    nodes_parser = commands.add_parser(
        "nodes", help="the gateway nodes sharing the database: version, model, heartbeat; "
        "the once-only jobs", description="the fleet, from the store's database")
    nodes_parser.add_argument("--config", default=argparse.SUPPRESS)
    nodes.add_arguments(nodes_parser)

    web_parser = command("web", web.main,
                         "the analysts' console: a web app over the quarantine, on [web] listen")
    web.add_arguments(web_parser)
    user_parser = commands.add_parser("user", help="the console's accounts: add, passwd, "
                                      "disable, enable, role, list",
                                      description="the console's accounts")
    user.add_arguments(user_parser)
    feedback_parser = commands.add_parser(
        "feedback", help="the reviewed feedback queue: list, accept, reject labels",
        description="labels from analysts and recipients, waiting for an admin")
    feedback.add_arguments(feedback_parser)
    digest_parser = commands.add_parser("digest", help="recipients' digests of held mail",
                                        description="recipients' digests of held mail")
    web.add_digest_arguments(digest_parser)

    symbols_parser = command("symbols", symbols.main,
                             "list the symbols checks can emit, with scores and actions")
    symbols.add_arguments(symbols_parser)

    demo_parser = command("demo", demo.main,
                          "send sample messages through a private Postfix with the gateway")
    demo.add_arguments(demo_parser)

    doctor_parser = command("doctor", doctor.main,
                            "check this gateway's setup: config, clamd, DNS, store, model, "
                            "Postfix, file modes")
    doctor.add_arguments(doctor_parser)
    replay_parser = command("replay", replay.main,
                            "re-score kept mail under proposed rules or model: what would "
                            "change")
    replay.add_arguments(replay_parser)
    trace_parser = command("trace", trace.main,
                           "what the gateway did with a message, from its logs and store")
    trace.add_arguments(trace_parser)
    init_parser = command("init", init.main,
                          "write /etc/gateway/gateway.toml, create the gateway user and "
                          "directories")
    init.add_arguments(init_parser)

    config_parser = commands.add_parser("config", help="configuration tools")
    config_commands = config_parser.add_subparsers(title="config commands", metavar="COMMAND")
    config_check = config_commands.add_parser(
        "check", help="validate the config and rules files", description="validate the config"
    )
    config_check.add_argument("--config", default=argparse.SUPPRESS)
    config_check.set_defaults(handler=configcheck.main)
    config_show = config_commands.add_parser(
        "show", help="print the effective config (defaults included) as TOML",
        description="print the effective config as TOML")
    config_show.add_argument("--config", default=argparse.SUPPRESS)
    config_show.set_defaults(handler=configshow.main)
    return parser


if __name__ == "__main__":
    sys.exit(main())
