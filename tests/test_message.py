from gateway.message import Envelope, Message, RawSpool, domain_of


def test_small_message_stays_in_memory():
    spool = RawSpool(threshold=1024)
    spool.write(b"Subject: hi\r\n\r\nbody\r\n")
    raw = spool.freeze()
    assert raw.in_memory and raw.path is None
    assert raw.bytes() == b"Subject: hi\r\n\r\nbody\r\n"


def test_large_message_spills_to_one_file_and_is_removed_after():
    spool = RawSpool(threshold=100)
    spool.write(b"Subject: big\r\n\r\n")
    for _ in range(50):
        spool.write(b"x" * 99 + b"\n")
    raw = spool.freeze()
    assert not raw.in_memory
    assert raw.path is not None and raw.path.exists()
    assert raw.size == 16 + 50 * 100
    assert b"".join(raw.chunks(333)) == raw.bytes()
    message = Message(Envelope(), raw)
    assert message.header("Subject") == "big"
    message.release()
    assert not raw.path.exists()


def test_email_view_is_parsed_once_and_tolerates_junk():
    message = Message.from_bytes(b"\xff\xfe garbage without headers")
    first = message.email
    assert message.email is first
    assert message.header("From") is None


def test_envelope_helpers():
    envelope = Envelope(
        mail_from="Alice@Mail.Example.ORG.",
        macros={"tls_version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
    )
    assert envelope.sender_domain == "mail.example.org"
    assert envelope.tls_version == "TLSv1.3"
    assert envelope.with_queue_id("ABC").queue_id == "ABC"
    assert domain_of("") == "" and domain_of("<>") == ""
