"""Attachments: programs, scripts, macros and disk images, by name and by
content, in archives too.

Every leaf part that is not a plain text body is looked at:

- its **name** (Content-Disposition filename, else Content-Type name,
  RFC 2231/2047 decoded): an extension from ``[attachments] executable``
  (programs and scripts), ``office_macro`` or ``disk_image`` in the rules
  files; a **double extension** that hides the real one behind a
  document's (``invoice.pdf.exe``, ``scan.jpg      .scr``); direction and
  control characters that make a reader's program show another extension
  (``invoice\\u202efdp.exe`` shows as ``invoiceexe.pdf``);
- its **content**, by magic bytes, whatever the name or the declared
  Content-Type says: Windows programs (PE), ELF and Mach-O programs, Java
  classes, Windows shortcuts, disk images (ISO 9660, VHD, VHDX), archives;
  a program or archive named as a document is ``ATTACHMENT_TYPE_MISMATCH``
  as well;
- **archives**: a zip's entries are read from its central directory, which
  needs no decompression (nor does a zip's encryption flag); an entry is
  decompressed only to peek at its first bytes (the magic) or to open an
  archive or Office document inside it, ``[limits] archive_depth`` levels
  deep, and never more than ``[limits] archive_bytes`` in all for one
  message, whatever sizes the archive declares: a zip bomb costs at most
  that, and says so (``ATTACHMENT_ARCHIVE_LIMIT``), as do more than
  ``[limits] archive_members`` entries. RAR archives are checked for
  encryption (RAR 4 and 5 headers); other archive formats are recognised
  but not opened (clamd opens them);
- **macros**: macro-enabled Office extensions (``.docm``, ``.xlsm``, ...),
  an OOXML document with a ``vbaProject.bin`` whatever its name, and an
  Office 97-2003 document (OLE2) with a VBA project.

The forced actions are the rules files' (``rules/default.toml``
quarantines programs, scripts, macros and disk images). Nothing here
raises on content: a part that cannot be read is a symbol.
"""

from __future__ import annotations

import re
import struct
import unicodedata
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.checks import Check, CheckContext
from gateway.checks.view import view_of
from gateway.config import Config
from gateway.facts import AttachmentsFacts
from gateway.message import Message
from gateway.ruleset import Ruleset
from gateway.schema import ConfigError
from gateway.symbols import Report


def _words(text: str) -> list[str]:
    return text.split()


PEEK = 4096  # bytes decompressed from an archive entry to read its magic
OLE_VBA = "_VBA_PROJECT".encode("utf-16-le")
OLE_SEARCH = 32 * 1024 * 1024
SHOWN = 3  # examples named in one symbol's evidence
# Extensions that open as documents or pictures: one of these before a
# program's extension is a double extension, and a program or archive
# named with one is disguised.
DOCUMENT_EXTENSIONS = frozenset(_words(
    "pdf doc docx xls xlsx ppt pptx pps ppsx rtf odt ods odp txt csv xml htm html jpg jpeg "
    "png gif bmp tif tiff webp svg mp3 mp4 wav avi mov mpg eml msg"))
# What content of each kind may be named.
NAMES_OF = {
    "zip": frozenset(_words(
        "zip jar docx docm dotx dotm xlsx xlsm xltx xltm xlam pptx pptm potx potm ppsx ppsm "
        "ppam sldx sldm odt ods odp odg epub apk xpi kmz ipa nupkg vsix appx appxbundle msix "
        "msixbundle whl cbz 3mf")),
    "ole2": frozenset(_words("doc dot xls xlt xla ppt pot pps ppa msg msi msp mst vsd pub wps")),
}
OPENED = ("zip",)
# An OOXML document's own folders: its XML is not peeked at.
OFFICE_FOLDERS = ("word", "xl", "ppt", "docProps", "_rels", "customXml")
KINDS = {
    "pe": ("executable", "a Windows program (PE)"),
    "elf": ("executable", "an ELF program"),
    "macho": ("executable", "a Mach-O program"),
    "java": ("executable", "a Java class"),
    "lnk": ("executable", "a Windows shortcut (LNK)"),
    "zip": ("archive", "a zip archive"),
    "rar": ("archive", "a RAR archive"),
    "7z": ("archive", "a 7-Zip archive"),
    "gzip": ("archive", "a gzip file"),
    "bzip2": ("archive", "a bzip2 file"),
    "xz": ("archive", "an xz file"),
    "cab": ("archive", "a cabinet (CAB) archive"),
    "iso": ("disk_image", "an ISO 9660 disk image"),
    "vhd": ("disk_image", "a VHD disk image"),
    "vhdx": ("disk_image", "a VHDX disk image"),
    "ole2": ("document", "an Office 97-2003 (OLE2) file"),
    "pdf": ("document", "a PDF document"),
}
# Direction overrides and isolates, marks, and C0/C1 controls.
SPOOFING = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069\u0000-\u001f\u007f-\u009f]")
PADDING = re.compile(r"\s{3,}\.[^.\s]+$|_{6,}\.[^.]+$")


def magic(data: bytes) -> str | None:
    """The kind of content by its first bytes (``KINDS``), or None."""
    head = data[:16]
    if head[:2] == b"MZ" and len(data) >= 0x40:
        offset = struct.unpack_from("<I", data, 0x3C)[0]
        if data[offset:offset + 4] == b"PE\0\0":
            return "pe"
    if head[:4] == b"\x7fELF":
        return "elf"
    if head[:4] in (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                    b"\xcf\xfa\xed\xfe"):
        return "macho"
    if head[:4] == b"\xca\xfe\xba\xbe" and len(head) >= 8:
        # Java classes give their version here (45 and up); a universal
        # Mach-O binary its number of architectures.
        return "java" if struct.unpack_from(">H", head, 6)[0] >= 45 else "macho"
    if head == b"L\0\0\0\x01\x14\x02\0\0\0\0\0\xc0\0\0\0":
        return "lnk"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:6] == b"Rar!\x1a\x07":
        return "rar"
    if head[:6] == b"7z\xbc\xaf\x27\x1c":
        return "7z"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\0":
        return "xz"
    if head[:4] == b"MSCF":
        return "cab"
    if head[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        return "ole2"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if head[:8] == b"conectix" or data[-512:-504] == b"conectix":
        return "vhd"
    if any(data[offset:offset + 5] == b"CD001" for offset in (0x8001, 0x8801, 0x9001)):
        return "iso"
    if b"%PDF-" in data[:1024]:
        return "pdf"
    return None


@dataclass(frozen=True)
class Settings:
    executable: frozenset[str]
    office_macro: frozenset[str]
    disk_image: frozenset[str]

    @classmethod
    def from_rules(cls, table: Mapping[str, Any], where: str) -> Settings:
        errors: list[str] = []
        lists: dict[str, frozenset[str]] = {}
        for key in ("executable", "office_macro", "disk_image"):
            values = table.get(key, [])
            if not isinstance(values, list) or not all(
                    isinstance(v, str) and v.strip(". ") and "." not in v.strip(". ")
                    for v in values):
                errors.append(f"{where}.{key}: expected a list of extensions such as "
                              f"[\"exe\", \"scr\"], got {values!r}")
                continue
            lists[key] = frozenset(v.strip(". ").lower() for v in values)
        for key in table:
            if key not in ("executable", "office_macro", "disk_image"):
                errors.append(f"{where}.{key}: unknown key (known keys: disk_image, "
                              "executable, office_macro)")
        if errors:
            raise ConfigError(errors)
        return cls(**lists)


@dataclass
class Findings:
    """Evidence per symbol, in the order found; the archive limits and the
    bytes left to decompress."""

    budget: int
    max_members: int
    max_depth: int
    found: dict[str, list[str]] = field(default_factory=dict)

    def add(self, symbol: str, evidence: str) -> None:
        items = self.found.setdefault(symbol, [])
        if evidence not in items:
            items.append(evidence)


class AttachmentsCheck(Check):
    name = "attachments"
    symbols = {
        "ATTACHMENT_EXECUTABLE": "a program or script is attached (by its name or its content, "
                                 "in an archive or not)",
        "ATTACHMENT_DOUBLE_EXTENSION": "an attachment's name hides a program's extension "
                                       "behind a document's (invoice.pdf.exe)",
        "ATTACHMENT_ENCRYPTED_ARCHIVE": "an encrypted archive is attached: no scanner can "
                                        "look inside",
        "ATTACHMENT_OFFICE_MACRO": "a macro-enabled Office document is attached",
        "ATTACHMENT_DISK_IMAGE": "a disk image (.iso, .img, .vhd) is attached",
        "ATTACHMENT_TYPE_MISMATCH": "an attachment is a program or an archive, but named as a "
                                    "document or picture",
        "ATTACHMENT_NAME_SPOOFED": "an attachment's name has direction or control characters, "
                                   "so it shows another extension than it has",
        "ATTACHMENT_ARCHIVE_LIMIT": "an archive went past [limits] archive_members, "
                                    "archive_depth or archive_bytes: not all of it was looked "
                                    "at",
        "ATTACHMENT_ARCHIVE_CORRUPT": "an attached archive cannot be read (a broken directory)",
    }

    def __init__(self, config: Config, ruleset: Ruleset):
        super().__init__(config, ruleset)
        self.settings = Settings.from_rules(ruleset.attachments, "attachments")

    def run(self, message: Message, context: CheckContext) -> Report:
        limits = message.limits
        findings = Findings(limits.archive_bytes, limits.archive_members, limits.archive_depth)
        inspected = 0
        for part in view_of(message).parts:
            if part.is_text:
                continue
            inspected += 1
            name = part.filename or f"part {part.index} ({part.content_type})"
            self._name(part.filename, name, findings)
            self._content(part.payload(), name, part.filename, findings, depth=0)
        symbols = tuple(self.symbol(symbol, "; ".join(items[:SHOWN]) + (
            f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else ""))
            for symbol, items in findings.found.items())
        return Report(symbols=symbols, facts=AttachmentsFacts(
            attachments=inspected,
            archive_bytes_read=limits.archive_bytes - findings.budget).to_json())

    # -- names ------------------------------------------------------------------------------

    def _name(self, filename: str, shown: str, findings: Findings) -> None:
        if not filename:
            return
        settings = self.settings
        if SPOOFING.search(filename):
            visible = "".join(c for c in filename if not SPOOFING.match(c))
            findings.add("ATTACHMENT_NAME_SPOOFED", f"{_printable(shown)} (really {visible!r})")
        clean = unicodedata.normalize("NFKC", SPOOFING.sub("", filename)).strip().rstrip(".")
        extensions = [e.strip().lower() for e in clean.split(".")[1:]]
        last = extensions[-1] if extensions else ""
        if last in settings.executable:
            findings.add("ATTACHMENT_EXECUTABLE", f"{_printable(shown)}: named .{last}")
        if last in settings.office_macro:
            findings.add("ATTACHMENT_OFFICE_MACRO", f"{_printable(shown)}: named .{last}")
        if last in settings.disk_image:
            findings.add("ATTACHMENT_DISK_IMAGE", f"{_printable(shown)}: named .{last}")
        dangerous = settings.executable | settings.disk_image
        if last in dangerous and (
                (len(extensions) >= 2 and extensions[-2] in DOCUMENT_EXTENSIONS)
                or PADDING.search(clean)):
            findings.add("ATTACHMENT_DOUBLE_EXTENSION", _printable(shown))

    # -- content ----------------------------------------------------------------------------

    def _content(self, data: bytes, shown: str, filename: str, findings: Findings,
                 depth: int, open_archives: bool = True) -> None:
        kind = magic(data)
        if kind is None:
            return
        family, what = KINDS[kind]
        extension = filename.rpartition(".")[2].strip().lower() if "." in filename else ""
        if family == "executable":
            findings.add("ATTACHMENT_EXECUTABLE", f"{_printable(shown)}: {what}"
                         + (f" named .{extension}" if extension else ""))
        elif family == "disk_image":
            findings.add("ATTACHMENT_DISK_IMAGE", f"{_printable(shown)}: {what}")
        if family in ("executable", "archive", "disk_image") and \
                extension in DOCUMENT_EXTENSIONS - NAMES_OF.get(kind, frozenset()):
            findings.add("ATTACHMENT_TYPE_MISMATCH", f"{_printable(shown)}: {what} named "
                         f".{extension}")
        if kind == "ole2" and OLE_VBA in data[:OLE_SEARCH]:
            findings.add("ATTACHMENT_OFFICE_MACRO", f"{_printable(shown)}: an Office document "
                         "with a VBA project")
        if not open_archives:
            return
        if kind == "zip":
            self._zip(data, shown, findings, depth)
        elif kind == "rar" and rar_encrypted(data, findings.max_members):
            findings.add("ATTACHMENT_ENCRYPTED_ARCHIVE", f"{_printable(shown)}: an encrypted "
                         "RAR archive")

    def _zip(self, data: bytes, shown: str, findings: Findings, depth: int) -> None:
        try:
            directory = read_zip_directory(data, findings.max_members)
        except ZipError as exc:
            findings.add("ATTACHMENT_ARCHIVE_CORRUPT", f"{_printable(shown)}: {exc}")
            return
        if directory.total > len(directory.members):
            findings.add("ATTACHMENT_ARCHIVE_LIMIT", f"{_printable(shown)}: "
                         f"{directory.total} entries, only the first {findings.max_members} read")
        declared = sum(m.size for m in directory.members)
        packed = sum(m.compressed for m in directory.members) or 1
        if declared > 1 << 30 or (declared > 1 << 20 and declared / packed > 500):
            findings.add("ATTACHMENT_ARCHIVE_LIMIT", f"{_printable(shown)}: declares "
                         f"{declared} bytes from {packed} (a zip bomb?)")
        encrypted = [m for m in directory.members if m.encrypted]
        if encrypted:
            findings.add("ATTACHMENT_ENCRYPTED_ARCHIVE", f"{_printable(shown)}: "
                         f"{len(encrypted)} of {len(directory.members)} entries encrypted")
        for member in directory.members:
            if member.name.endswith("/"):
                continue
            path = f"{shown}/{member.name}"
            if member.name.lower().rpartition("/")[2] == "vbaproject.bin":
                findings.add("ATTACHMENT_OFFICE_MACRO", f"{_printable(shown)}: an Office "
                             "document with a VBA project")
                continue
            self._name(member.name.rpartition("/")[2], path, findings)
            office_part = member.name.split("/", 1)[0] in OFFICE_FOLDERS and "/" in member.name
            if member.encrypted or member.method not in (0, 8) or office_part:
                continue  # nothing to read, or an Office document's own parts
            self._member(data, directory, member, shown, path, findings, depth)

    def _member(self, data: bytes, directory: ZipDirectory, member: ZipMember, archive: str,
                path: str, findings: Findings, depth: int) -> None:
        """Peek at an entry's first bytes; open it when it is an archive or an
        Office document and the limits allow. Never decompresses more than
        the bytes left of [limits] archive_bytes, nor more than the entry
        declares."""
        if findings.budget <= 0:
            findings.add("ATTACHMENT_ARCHIVE_LIMIT", f"{_printable(archive)}: entries not "
                         "decompressed, [limits] archive_bytes spent")
            return
        data_of = self._reader(data, directory, member, path, findings)
        head = data_of(min(PEEK, findings.budget, member.size + 1))
        if head is None:
            return
        kind = magic(head)
        extension = member.name.rpartition(".")[2].lower() if "." in member.name else ""
        opens = kind in OPENED or (kind == "ole2" and extension in NAMES_OF["ole2"])
        if opens and depth + 1 >= findings.max_depth:
            findings.add("ATTACHMENT_ARCHIVE_LIMIT", f"{_printable(path)}: nested deeper than "
                         f"{findings.max_depth} archives, not opened")
            opens = False
        elif opens and len(head) < member.size:
            left = findings.budget + len(head)
            if member.size >= left:
                findings.add("ATTACHMENT_ARCHIVE_LIMIT", f"{_printable(path)}: {member.size} "
                             f"bytes, more than the {left} left to decompress ([limits] "
                             "archive_bytes)")
                opens = False
            else:
                findings.budget = left  # read again from the start, the peek included
                whole = data_of(member.size + 1)
                if whole is None:
                    return
                head = whole
        self._content(head, path, member.name, findings, depth + 1, open_archives=opens)

    def _reader(self, data: bytes, directory: ZipDirectory, member: ZipMember, path: str,
                findings: Findings) -> Callable[[int], bytes | None]:
        """A function reading at most n bytes of the entry, charged to the
        budget; None (and a symbol) when it cannot, or when the entry holds
        more than it declares."""
        def read(limit: int) -> bytes | None:
            try:
                found = directory.read(data, member, limit)
            except ZipError as exc:
                findings.add("ATTACHMENT_ARCHIVE_CORRUPT", f"{_printable(path)}: {exc}")
                return None
            findings.budget -= len(found)
            if len(found) > member.size:
                findings.add("ATTACHMENT_ARCHIVE_LIMIT", f"{_printable(path)}: decompresses "
                             f"to more than the {member.size} bytes it declares")
                return None
            return found

        return read


def _printable(text: str) -> str:
    shown = SPOOFING.sub("?", text)
    return shown if len(shown) <= 160 else shown[:80] + "…" + shown[-79:]


# -- zip, from its central directory ---------------------------------------------------------


class ZipError(Exception):
    """A zip that cannot be read as its directory says."""


@dataclass(frozen=True)
class ZipMember:
    name: str
    flags: int
    method: int
    compressed: int
    size: int
    offset: int  # of its local header, as the directory says

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1) or self.method == 99


@dataclass(frozen=True)
class ZipDirectory:
    members: tuple[ZipMember, ...]
    total: int  # entries the directory declares
    shift: int  # bytes before the archive proper (a self-extractor's stub)

    def read(self, data: bytes, member: ZipMember, limit: int) -> bytes:
        """At most ``limit`` bytes of a member, decompressed: never more,
        whatever it declares."""
        start = member.offset + self.shift
        if start < 0 or data[start:start + 4] != b"PK\x03\x04" or len(data) < start + 30:
            raise ZipError(f"{member.name}: no local header where the directory says")
        name_length, extra_length = struct.unpack_from("<HH", data, start + 26)
        begin = start + 30 + name_length + extra_length
        packed = data[begin:begin + member.compressed]
        if member.method == 0:
            return packed[:limit]
        if member.method == 8:
            try:
                return zlib.decompressobj(-15).decompress(packed, limit) if limit > 0 else b""
            except zlib.error as exc:
                raise ZipError(f"{member.name}: {exc}") from None
        raise ZipError(f"{member.name}: compression method {member.method} is not read here")


def read_zip_directory(data: bytes, limit: int) -> ZipDirectory:
    """The first ``limit`` entries of a zip's central directory (zip64
    included); raises ZipError when there is none to read."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
    if end < 0 or len(data) < end + 22:
        raise ZipError("no end of central directory")
    (_sig, _disk, _cd_disk, _on_disk, total, size, offset,
     _comment) = struct.unpack_from("<4sHHHHIIH", data, end)
    directory_end = end
    if total == 0xFFFF or 0xFFFFFFFF in (size, offset):
        locator = end - 20
        if locator < 0 or data[locator:locator + 4] != b"PK\x06\x07":
            raise ZipError("zip64 sizes without a zip64 locator")
        found = data.rfind(b"PK\x06\x06", 0, locator)
        if found < 0 or len(data) < found + 56:
            raise ZipError("no zip64 end of central directory")
        total, size, offset = struct.unpack_from("<QQQ", data, found + 32)
        directory_end = found
    start = directory_end - size
    if start < 0:
        raise ZipError("the central directory would start before the file")
    shift = start - offset
    members: list[ZipMember] = []
    position = start
    for _ in range(min(total, limit)):
        if data[position:position + 4] != b"PK\x01\x02" or len(data) < position + 46:
            if members:
                break  # a directory shorter than declared: read what is there
            raise ZipError("no central directory entry where the end record says")
        (flags, method, _time, _date, _crc, compressed, uncompressed, name_length,
         extra_length, comment_length, _disk, _internal, _external,
         local) = struct.unpack_from("<HHHHIIIHHHHHII", data, position + 8)
        raw_name = data[position + 46:position + 46 + name_length]
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        extra = data[position + 46 + name_length:position + 46 + name_length + extra_length]
        compressed, uncompressed, local = _zip64_extra(extra, compressed, uncompressed, local)
        members.append(ZipMember(name, flags, method, compressed, uncompressed, local))
        position += 46 + name_length + extra_length + comment_length
    return ZipDirectory(tuple(members), total, shift)


def _zip64_extra(extra: bytes, compressed: int, size: int, local: int) -> tuple[int, int, int]:
    """Sizes and offset from a zip64 extra field, for those set to 0xFFFFFFFF."""
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, position)
        body = extra[position + 4:position + 4 + length]
        if kind == 0x0001:
            values = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if compressed == 0xFFFFFFFF and values:
                compressed = values.pop(0)
            if local == 0xFFFFFFFF and values:
                local = values.pop(0)
            break
        position += 4 + length
    return compressed, size, local


# -- RAR: encryption flags ---------------------------------------------------------------------


def rar_encrypted(data: bytes, limit: int) -> bool:
    """Whether a RAR archive (4 or 5) has encrypted headers or entries, from
    at most ``limit`` of its blocks; False when it cannot be read."""
    try:
        if data[:8] == b"Rar!\x1a\x07\x01\x00":
            return _rar5_encrypted(data, limit)
        if data[:7] == b"Rar!\x1a\x07\x00":
            return _rar4_encrypted(data, limit)
    except (struct.error, IndexError, ValueError):
        return False
    return False


def _rar4_encrypted(data: bytes, limit: int) -> bool:
    position = 7
    for _ in range(limit):
        if position + 7 > len(data):
            return False
        _crc, kind, flags, size = struct.unpack_from("<HBHH", data, position)
        if kind == 0x73 and flags & 0x0080:  # main header: block headers encrypted
            return True
        if kind == 0x74 and flags & 0x0004:  # file header: a password
            return True
        add = struct.unpack_from("<I", data, position + 7)[0] if flags & 0x8000 or \
            kind == 0x74 else 0
        if size < 7:
            return False
        position += size + add
    return False


def _rar5_encrypted(data: bytes, limit: int) -> bool:
    position = 8
    for _ in range(limit):
        if position + 5 > len(data):
            return False
        size, at = _vint(data, position + 4)
        header_end = at + size
        kind, at = _vint(data, at)
        flags, at = _vint(data, at)
        extra_size = data_size = 0
        if flags & 0x1:
            extra_size, at = _vint(data, at)
        if flags & 0x2:
            data_size, at = _vint(data, at)
        if kind == 4:  # archive encryption header: everything is encrypted
            return True
        if kind in (2, 3) and extra_size and \
                _rar5_extra_has(data, header_end - extra_size, header_end, 0x01):
            return True
        if kind == 5 or size == 0:  # end of archive
            return False
        position = header_end + data_size
    return False


def _rar5_extra_has(data: bytes, start: int, end: int, wanted: int) -> bool:
    position = start
    while 0 <= position < end:
        size, at = _vint(data, position)
        kind, _ = _vint(data, at)
        if kind == wanted:
            return True
        if size == 0:
            return False
        position = at + size
    return False


def _vint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise ValueError("a RAR number longer than 10 bytes")
