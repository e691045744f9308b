"""Attachment rules (gateway/checks/attachments.py): programs by name and by
content, in zips too, double extensions, encrypted archives, macros, and
archives that try to make the check do too much."""

from __future__ import annotations

import base64
import io
import os
import random
import struct
import zipfile
import zlib
from dataclasses import replace

import pytest

from gateway.checks import CheckContext
from gateway.checks.attachments import AttachmentsCheck, magic, rar_encrypted
from gateway.config import Config, LimitsSection, PipelineSection
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, Message

CONFIG = Config()
# A minimal Windows program: the DOS stub's MZ, e_lfanew at 0x3c, "PE\0\0".
PE = b"MZ" + b"\0" * 58 + struct.pack("<I", 64) + b"PE\0\0" + b"\x4c\x01" + b"\0" * 200
ISO = b"\0" * 0x8001 + b"CD001" + b"\0" * 100


def mail(*attachments: tuple[str, str, bytes], body: str = "See attached.") -> bytes:
    parts = [f"--b\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"]
    for name, content_type, data in attachments:
        encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
        parts.append(f"--b\r\nContent-Type: {content_type}; name=\"{name}\"\r\n"
                     f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
                     f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}")
    return ("From: a@example.org\r\nTo: b@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" + "".join(parts)
            + "--b--\r\n").encode()


def zipped(*members: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def findings(raw: bytes, limits: LimitsSection | None = None) -> dict[str, str]:
    check = AttachmentsCheck.from_config(CONFIG)
    report = check.run(Message.from_bytes(raw, limits=limits), CheckContext())
    return {s.name: s.evidence for s in report.symbols}


def test_an_exe_inside_a_zip_is_an_executable_and_is_quarantined():
    archive = zipped(("readme.txt", b"hello"), ("tools/setup.exe", PE))
    raw = mail(("files.zip", "application/zip", archive))
    assert findings(raw) == {"ATTACHMENT_EXECUTABLE": "files.zip/tools/setup.exe: named .exe; "
                                                      "files.zip/tools/setup.exe: a Windows "
                                                      "program (PE) named .exe"}
    evaluator = LocalEvaluator(replace(CONFIG, pipeline=PipelineSection(
        checks=["attachments"], workers=0)))
    try:
        verdict = evaluator.evaluate_message(Message.from_bytes(raw, Envelope()))
    finally:
        evaluator.close()
    assert (verdict.action, verdict.forced_by) == ("quarantine", "ATTACHMENT_EXECUTABLE")


def test_a_double_extension_hides_the_program_behind_a_document():
    raw = mail(("Invoice 2026.PDF.exe", "application/pdf", b"%PDF-1.4 not really"))
    assert findings(raw) == {
        "ATTACHMENT_EXECUTABLE": "Invoice 2026.PDF.exe: named .exe",
        "ATTACHMENT_DOUBLE_EXTENSION": "Invoice 2026.PDF.exe"}
    padded = mail(("scan.jpg                 .scr", "image/jpeg", b"x"))
    assert "ATTACHMENT_DOUBLE_EXTENSION" in findings(padded)
    # Near misses: dots in a document's name; a program with one extension.
    assert findings(mail(("report.v2.2026.pdf", "application/pdf", b"%PDF-1.4"))) == {}
    assert "ATTACHMENT_DOUBLE_EXTENSION" not in findings(mail(("setup.exe", "x/y", b"x")))


def test_a_renamed_program_is_caught_by_its_magic_bytes():
    raw = mail(("invoice.pdf", "application/pdf", PE))
    assert findings(raw) == {
        "ATTACHMENT_EXECUTABLE": "invoice.pdf: a Windows program (PE) named .pdf",
        "ATTACHMENT_TYPE_MISMATCH": "invoice.pdf: a Windows program (PE) named .pdf"}
    # "MZ" without the PE header is no program; a real PDF is a PDF.
    assert findings(mail(("notes.txt", "text/plain", b"MZ is a postcode"))) == {}
    assert findings(mail(("invoice.pdf", "application/pdf", b"%PDF-1.7\n..."))) == {}
    # A program inside a zip, named as a picture.
    archive = zipped(("holiday.jpg", PE))
    assert findings(mail(("photos.zip", "application/zip", archive)))[
        "ATTACHMENT_TYPE_MISMATCH"] == "photos.zip/holiday.jpg: a Windows program (PE) named .jpg"


class ZipCrypto:
    """PKWARE's traditional zip encryption, to write a real encrypted zip."""

    TABLE = [next(c for c in [n] for _ in range(8)
                  for c in [(c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1]) for n in range(256)]

    def __init__(self, password: bytes):
        self.keys = [0x12345678, 0x23456789, 0x34567890]
        for byte in password:
            self._update(byte)

    @classmethod
    def _crc(cls, crc: int, byte: int) -> int:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1
        return crc

    def _update(self, byte: int) -> None:
        keys = self.keys
        keys[0] = self._crc(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = self._crc(keys[2], keys[1] >> 24)

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            temp = self.keys[2] | 2
            out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
            self._update(byte)
        return bytes(out)


def encrypted_zip(name: str, data: bytes, password: bytes) -> bytes:
    crc = zlib.crc32(data)
    body = ZipCrypto(password).encrypt(os.urandom(11) + bytes([crc >> 24]) + data)
    encoded = name.encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 1, 0, 0, 0, crc, len(body),
                        len(data), len(encoded), 0) + encoded + body
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 1, 0, 0, 0, crc,
                          len(body), len(data), len(encoded), 0, 0, 0, 0, 0, 0) + encoded
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


def test_an_encrypted_zip_is_named_and_its_names_are_still_read():
    archive = encrypted_zip("statement.js", b"WScript.Shell", b"infected")
    with zipfile.ZipFile(io.BytesIO(archive)) as check:  # a real one: it opens with the password
        assert check.read("statement.js", pwd=b"infected") == b"WScript.Shell"
    raw = mail(("statement.zip", "application/zip", archive), body="The password is infected")
    assert findings(raw) == {
        "ATTACHMENT_ENCRYPTED_ARCHIVE": "statement.zip: 1 of 1 entries encrypted",
        "ATTACHMENT_EXECUTABLE": "statement.zip/statement.js: named .js"}
    plain = mail(("statement.zip", "application/zip", zipped(("statement.txt", b"x"))))
    assert findings(plain) == {}


def test_encrypted_rar_archives_are_recognised():
    # RAR 5 with encrypted headers (rar -hp): an archive encryption header first.
    rar5 = b"Rar!\x1a\x07\x01\x00" + b"\0\0\0\0" + bytes([3, 4, 0, 0]) + b"\0" * 40
    assert magic(rar5) == "rar" and rar_encrypted(rar5, 100)
    assert findings(mail(("a.rar", "application/x-rar", rar5))) == {
        "ATTACHMENT_ENCRYPTED_ARCHIVE": "a.rar: an encrypted RAR archive"}
    # RAR 4, a file header with the password flag.
    rar4 = b"Rar!\x1a\x07\x00" + struct.pack("<HBHH", 0, 0x73, 0, 13) + b"\0" * 6 + \
        struct.pack("<HBHHI", 0, 0x74, 0x8004, 40, 0) + b"\0" * 40
    assert rar_encrypted(rar4, 100)
    clear = b"Rar!\x1a\x07\x00" + struct.pack("<HBHH", 0, 0x73, 0, 13) + b"\0" * 6 + \
        struct.pack("<HBHHI", 0, 0x74, 0x8000, 40, 0) + b"\0" * 40
    assert not rar_encrypted(clear, 100)


def test_macros_disk_images_and_spoofed_names():
    docm = zipped(("[Content_Types].xml", b"<Types/>"), ("word/document.xml", b"<w/>"),
                  ("word/vbaProject.bin", b"\xd0\xcf\x11\xe0"))
    assert findings(mail(("report.docx", "application/vnd.openxmlformats", docm))) == {
        "ATTACHMENT_OFFICE_MACRO": "report.docx: an Office document with a VBA project"}
    docx = zipped(("[Content_Types].xml", b"<Types/>"), ("word/document.xml", b"<w/>"))
    assert findings(mail(("report.docx", "application/vnd.openxmlformats", docx))) == {}
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600 + "_VBA_PROJECT".encode("utf-16-le")
    assert findings(mail(("budget.xls", "application/vnd.ms-excel", ole))) == {
        "ATTACHMENT_OFFICE_MACRO": "budget.xls: an Office document with a VBA project"}
    assert findings(mail(("budget.xlsm", "application/octet-stream", b"x"))) == {
        "ATTACHMENT_OFFICE_MACRO": "budget.xlsm: named .xlsm"}
    assert findings(mail(("photos.dat", "application/octet-stream", ISO))) == {
        "ATTACHMENT_DISK_IMAGE": "photos.dat: an ISO 9660 disk image"}
    spoofed = "invoice\u202efdp.exe"
    found = findings(mail((spoofed, "application/pdf", b"x")))
    assert found["ATTACHMENT_NAME_SPOOFED"] == "invoice?fdp.exe (really 'invoicefdp.exe')"
    assert found["ATTACHMENT_EXECUTABLE"] == "invoice?fdp.exe: named .exe"


def test_a_zip_bomb_costs_at_most_the_archive_budget():
    inner = zipped(("zeros.bin", b"\0" * (40 << 20)))  # 40 MiB of zeros in ~40 KB
    outer = zipped(("inner.zip", inner), ("bomb.bin", b"\0" * (8 << 20)))
    limits = replace(LimitsSection(), archive_bytes=1 << 20)
    check = AttachmentsCheck.from_config(CONFIG)
    report = check.run(Message.from_bytes(mail(("x.zip", "application/zip", outer)),
                                          limits=limits), CheckContext())
    evidence = {s.name: s.evidence for s in report.symbols}
    assert set(evidence) == {"ATTACHMENT_ARCHIVE_LIMIT"}
    assert "x.zip: declares 8" in evidence["ATTACHMENT_ARCHIVE_LIMIT"]
    assert report.facts["archive_bytes_read"] <= 1 << 20
    # Under the default 16 MiB: the inner zip is opened, its 40 MiB entry is not.
    evidence = findings(mail(("x.zip", "application/zip", outer)))
    assert "x.zip/inner.zip: declares 41943040 bytes" in evidence["ATTACHMENT_ARCHIVE_LIMIT"]


def test_nesting_and_entry_counts_past_the_limits_are_named():
    nested = zipped(("deep.exe", PE))
    for level in range(4):
        nested = zipped((f"level{level}.zip", nested))
    evidence = findings(mail(("nest.zip", "application/zip", nested)))
    assert evidence == {"ATTACHMENT_ARCHIVE_LIMIT": "nest.zip/level3.zip/level2.zip/level1.zip: "
                                                    "nested deeper than 3 archives, not opened"}
    shallow = zipped(("one.zip", zipped(("deep.exe", PE))))
    assert "ATTACHMENT_EXECUTABLE" in findings(mail(("s.zip", "application/zip", shallow)))
    many = zipped(*[(f"f{n}.txt", b"") for n in range(1100)], method=zipfile.ZIP_STORED)
    evidence = findings(mail(("many.zip", "application/zip", many)))
    assert evidence == {"ATTACHMENT_ARCHIVE_LIMIT": "many.zip: 1100 entries, only the first "
                                                    "1000 read"}


def test_a_zip_that_lies_about_its_size_is_not_decompressed_past_it():
    honest = zipped(("inner.zip", zipped(("a.txt", random.Random(1).randbytes(20_000)))))
    # Say the inner zip is 200 bytes, in the central directory only.
    entry = honest.rfind(b"PK\x01\x02")
    lying = bytearray(honest)
    struct.pack_into("<I", lying, entry + 24, 200)
    evidence = findings(mail(("l.zip", "application/zip", bytes(lying))))
    assert evidence == {"ATTACHMENT_ARCHIVE_LIMIT": "l.zip/inner.zip: decompresses to more "
                                                    "than the 200 bytes it declares"}


@pytest.mark.slow
def test_broken_and_random_archives_never_make_the_check_fail():
    archive = zipped(("a.exe", PE), ("b.txt", b"hello" * 1000))
    generator = random.Random(7)
    corrupt = {"PK\x03\x04 only": b"PK\x03\x04" + b"\xff" * 100,
               "cut in half": archive[:len(archive) // 2],
               "end record only": archive[archive.rfind(b"PK\x05\x06"):]}
    for name, data in corrupt.items():
        found = findings(mail(("c.zip", "application/zip", data)))
        assert "ATTACHMENT_ARCHIVE_CORRUPT" in found, name
    for _ in range(300):
        data = bytearray(archive)
        for _ in range(generator.randint(1, 20)):
            data[generator.randrange(len(data))] = generator.randrange(256)
        findings(mail(("r.zip", "application/zip", bytes(data))))
        findings(mail(("r.rar", "application/x-rar", b"Rar!\x1a\x07\x01\x00" + bytes(data))))


@pytest.mark.parametrize("name", ["notes.txt", "photo.jpeg", "data.csv", "archive.tar.gz"])
def test_ordinary_attachments_raise_nothing(name):
    assert findings(mail((name, "application/octet-stream", b"ordinary bytes"))) == {}


@pytest.mark.parametrize("fields", [
    "Content-Type: text/plain",
    "Content-Type: application/pdf; NAME=\"Report.pdf\"",
    "Content-Type: application/pdf\r\nContent-Disposition: attachment; FileName=a.exe",
    "Content-Disposition: attachment; filename*0*=utf-8''r%C3%A9sum;\r\n"
    " filename*1*=%C3%A9.doc",
    "Content-Type: application/octet-stream; x=\"name\"",
    "Content-Type: image/png; name==?utf-8?q?caf=C3=A9.png?=",
    "Content-Disposition: inline\r\nContent-Type: text/html; charset=utf-8; Name=page.htm",
    "Content-Type: application/zip; name=\"\xc3\xa9t\xc3\xa9.zip\"",
    "Content-Disposition: attachment",
])
def test_a_parts_file_name_is_the_one_the_stdlib_reads(fields, monkeypatch):
    """file_name skips the stdlib's parameter parse when no field says
    "name": the same name as with the parse, whatever the case or encoding."""
    from gateway.checks import view

    raw = (f"From: a@example.org\r\nMIME-Version: 1.0\r\n{fields}\r\n\r\nx\r\n").encode(
        "utf-8", "surrogateescape")
    part = Message.from_bytes(raw).email
    found = view.file_name(part)
    assert bool(found) == bool(part.get_filename())
    monkeypatch.setattr(view, "_may_name_a_file", lambda part: True)
    assert found == view.file_name(part)
