"""``gateway backup PATH`` and ``gateway restore PATH``: a node's SQLite
store and folder model store (gateway.backup)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.backup import BackupError, backup, restore
from gateway.commands.common import UsageError, config_from


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a new folder for the backup")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a folder written by gateway backup")
    parser.add_argument("--force", action="store_true",
                        help="replace a store that holds mail or models")


def backup_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        manifest = backup(config, args.path)
    except (BackupError, OSError) as exc:
        raise UsageError(f"backup: {exc}") from None
    for part in manifest.parts:
        print(f"backup: {part.name} from {part.source} -> {args.path / part.file}")
    for what in manifest.left_out:
        print(f"backup: not included: {what}")
    if not manifest.parts:
        raise UsageError("backup: nothing to back up here (no SQLite store, no folder "
                         "model store)")
    print(f"backup: done, {manifest.held} held messages, schema {manifest.schema}")
    return 0


def restore_main(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        done = restore(config, args.path, force=args.force)
    except (BackupError, OSError) as exc:
        raise UsageError(f"restore: {exc}") from None
    for line in done:
        print(f"restore: {line}")
    print("restore: done; start or reload the gateway")
    return 0
