"""``gateway web``: the analysts' console; ``gateway digest send``: recipients'
digests now."""

from __future__ import annotations

import argparse
import logging

from gateway.commands.common import UsageError, config_from, setup_logging
from gateway.config import Config, _host_port
from gateway.terminal import printable

log = logging.getLogger("gateway.web")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="host:port (default: [web] listen, 127.0.0.1:8025)")


def add_digest_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(title="digest commands", metavar="COMMAND")
    send = commands.add_parser("send", help="send the digests of held mail not listed yet")
    send.add_argument("--recipient", help="only this recipient's")
    send.add_argument("--dry-run", action="store_true", help="say who would get one")
    send.add_argument("--config", default=argparse.SUPPRESS)
    send.set_defaults(handler=digest_main)


def _open(config: Config):
    from gateway.commands.quarantine import open_store

    return open_store(config)


def main(args: argparse.Namespace) -> int:
    config = config_from(args)
    listen = args.listen or config.web.listen
    if _host_port(listen) is not None or not listen:
        raise UsageError(f"--listen: expected host:port such as 127.0.0.1:8025, got {listen!r}")
    if config.digest.enabled and not config.digest.url:
        raise UsageError("[digest] enabled needs [digest] url, the console's address as "
                         "recipients reach it (https://...)")
    from gateway.web.app import create_app
    from gateway.web.digest import DailyDigest
    from gateway.web.server import make_server

    setup_logging(config.log.level, config.log.format)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    store = _open(config)
    app = create_app(config, store)
    host, _, port = listen.rpartition(":")
    try:
        server = make_server(app, host.strip("[]"), int(port), config.web)
    except OSError as exc:
        raise UsageError(f"web: cannot listen on {listen}: {exc.strerror or exc}") from None
    digest = None
    if config.digest.enabled:
        state = app.extensions["gateway"]
        digest = DailyDigest(store, state["console"], config, dict(state["rules"].release))
        digest.start()
    log.info("web: the console listens on http://%s (put the site's TLS proxy in front)",
             listen)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if digest is not None:
            digest.stop()
        server.close()
        app.extensions["gateway"]["renderer"].close()
        store.close()
    return 0


def digest_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    from gateway.ruleset import load_rules
    from gateway.web.console import Console
    from gateway.web.digest import LinkError, send_digests

    if not config.digest.url:
        raise UsageError("digest: [digest] url is not set: the links need the console's "
                         "address as recipients reach it (https://...)")
    if not config.digest.enabled and not args.dry_run:
        raise UsageError("digest: [digest] enabled is false; set it to true to send digests "
                         "(--dry-run shows who would get one)")
    store = _open(config)
    console = Console(store)
    try:
        results = send_digests(store, console, config, dict(load_rules(config.policy.rules)
                                                            .release),
                               recipient=args.recipient, dry_run=args.dry_run)
    except LinkError as exc:
        raise UsageError(f"digest: {exc}") from None
    if not results:
        print("no held mail waiting for a digest")
    status = 0
    for recipient, count, outcome in results:
        print(printable(f"{recipient}: {count} message{'s' if count != 1 else ''}, {outcome}"))
        if outcome.startswith("not sent"):
            status = 1
    return status
