"""``gateway identity import FILE``: protected people from a CSV file or an
LDAP export (LDIF), written as ``[[protected]]`` tables for
``[identity] protected_files``.

    gateway identity import people.csv [--output /etc/gateway/protected.toml]
    gateway identity import export.ldif

A CSV file has a header row; the name comes from a column called ``name``,
``display name``, ``displayName`` or ``cn``, the addresses from ``email``,
``mail``, ``address``, ``addresses`` or ``proxyAddresses`` (several in one
cell separated by ``;``, ``,`` or spaces; Exchange's ``SMTP:`` prefixes are
taken off). An LDIF export gives ``displayName`` (else ``cn``) and ``mail``
plus ``proxyAddresses`` of each entry. The file written replaces the
previous one whole; the workers use it after a reload (SIGHUP).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.commands.common import UsageError
from gateway.terminal import printable

DEFAULT_OUTPUT = "/etc/gateway/protected.toml"
MAX_BYTES = 50 * 1024 * 1024
MAX_PEOPLE = 100_000
MAX_ADDRESSES = 50
NAME_COLUMNS = ("name", "display name", "displayname", "cn", "full name")
ADDRESS_COLUMNS = ("email", "e-mail", "mail", "address", "addresses", "proxyaddresses")
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Person:
    name: str
    addresses: tuple[str, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="identity commands", metavar="COMMAND")
    found = sub.add_parser("import", help="protected people from a CSV file or an LDIF export",
                           description="write [[protected]] tables for [identity] "
                           "protected_files from a CSV file or an LDAP export (LDIF)")
    found.add_argument("file", help="people.csv or export.ldif")
    found.add_argument("--output", default=DEFAULT_OUTPUT,
                       help=f"the file to write (default {DEFAULT_OUTPUT}); - for stdout")
    found.add_argument("--format", choices=("auto", "csv", "ldif"), default="auto",
                       help="auto: by the file's name (.ldif) or its first line (dn:)")
    found.add_argument("--config", default=argparse.SUPPRESS)
    found.set_defaults(handler=import_main)


def import_main(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UsageError(f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MB")
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
    kind = args.format
    if kind == "auto":
        head = data.lstrip()[:200].lower()
        kind = "ldif" if path.suffix.lower() == ".ldif" or head.startswith((b"dn:", b"version:"))\
            else "csv"
    people, skipped = read_ldif(data) if kind == "ldif" else read_csv(data, str(path))
    if not people:
        raise UsageError(f"{path}: no person with a name and an address found"
                         + (f" ({skipped} entries without one)" if skipped else ""))
    text = as_toml(people, str(path))
    if args.output == "-":
        print(text, end="")
    else:
        _write(Path(args.output), text)
        print(printable(f"wrote {len(people)} protected people to {args.output}"
                        + (f" ({skipped} entries without a name or an address skipped)"
                           if skipped else "")))
        print(printable(f"list it in [identity] protected_files = [\"{args.output}\"] and "
                        "reload the gateway (systemctl reload gateway)"))
    return 0


def read_csv(data: bytes, where: str) -> tuple[list[Person], int]:
    text = data.decode("utf-8-sig", errors="replace")
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header = [column.strip().lower() for column in next(reader, [])]
    name_at = next((header.index(c) for c in NAME_COLUMNS if c in header), None)
    address_at = [i for i, c in enumerate(header) if c in ADDRESS_COLUMNS]
    if name_at is None or not address_at:
        raise UsageError(f"{where}: the first row must name the columns: a name column "
                         f"({', '.join(NAME_COLUMNS)}) and an address column "
                         f"({', '.join(ADDRESS_COLUMNS)}); found {', '.join(header) or 'none'}")
    people: list[Person] = []
    skipped = 0
    for row in reader:
        if len(people) >= MAX_PEOPLE:
            break
        name = row[name_at].strip() if name_at < len(row) else ""
        addresses = _addresses(" ".join(row[i] for i in address_at if i < len(row)))
        if name and addresses:
            people.append(Person(name[:200], addresses))
        elif any(cell.strip() for cell in row):
            skipped += 1
    return people, skipped


def read_ldif(data: bytes) -> tuple[list[Person], int]:
    from ldif import LDIFParser

    people: list[Person] = []
    skipped = 0
    try:
        for _dn, record in LDIFParser(io.BytesIO(data)).parse():
            if len(people) >= MAX_PEOPLE:
                break
            fields = {key.lower(): values for key, values in record.items()}
            names = fields.get("displayname") or fields.get("cn") or []
            addresses = _addresses(" ".join(fields.get("mail", []) +
                                            fields.get("proxyaddresses", [])))
            if names and names[0].strip() and addresses:
                people.append(Person(names[0].strip()[:200], addresses))
            else:
                skipped += 1
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"not a readable LDIF export: {exc}") from None
    return people, skipped


def _addresses(text: str) -> tuple[str, ...]:
    found = []
    for word in re.split(r"[;,\s]+", text):
        word = word.strip().strip("<>")
        if word.lower().startswith(("smtp:", "mailto:")):
            word = word.partition(":")[2]
        if _ADDRESS.match(word):
            found.append(word.lower())
    return tuple(dict.fromkeys(found))[:MAX_ADDRESSES]


def as_toml(people: list[Person], source: str) -> str:
    """``[[protected]]`` tables (JSON strings are TOML basic strings)."""
    lines = [f"# Protected people, written by gateway identity import from {source}.",
             "# Rewritten whole by the next import: edit the source instead.", ""]
    for person in people:
        lines += ["[[protected]]", f"name = {json.dumps(person.name)}",
                  f"addresses = [{', '.join(json.dumps(a) for a in person.addresses)}]", ""]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    """Replace the file whole (a reader never sees half of it)."""
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".protected-")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
