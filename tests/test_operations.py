"""Running the gateway: live reload on SIGHUP, Prometheus metrics, /health,
JSON log lines, the supervisor — through the private Postfix."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from gateway.config import Config, PipelineSection, QuarantineSection, parse_config
from gateway.lab.postfix import free_port
from gateway.paths import DEFAULT_RULES
from gateway.service import Service
from tests.helpers import fixture_message, send, wait_until

pytestmark = pytest.mark.postfix


def tagged() -> tuple[str, bytes]:
    tag = uuid.uuid4().hex
    raw = fixture_message("ham_plain.eml").replace(
        b"Message-ID: <20261124091244.4711@mail.example.org>", f"Message-ID: <{tag}@t>".encode())
    return tag, raw


def rules(path: Path, quarantine: float) -> str:
    path.write_text(f"[thresholds]\nquarantine = {quarantine}\nreject = 50\n"
                    "[scores]\nMISSING_DATE = 3.0\n")
    return f'[policy]\nrules = ["{DEFAULT_RULES}", "{path}"]\n'


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def since_start(milter):
    """The milter's log from this test on (the lab's log file is shared)."""
    start = len(milter.log())
    return lambda: milter.log()[start:]


def undated(raw: bytes) -> bytes:
    return b"".join(line for line in raw.splitlines(keepends=True)
                    if not line.startswith(b"Date:"))


def test_sighup_applies_a_valid_config_and_refuses_a_broken_one(postfix, sink, gateway_milter,
                                                                tmp_path):
    local = tmp_path / "local.toml"
    milter = gateway_milter(rules(local, 10.0))
    log = since_start(milter)
    tag, raw = tagged()
    send(postfix, undated(raw))  # MISSING_DATE = 3 < 10: delivered
    assert sink.find(tag) is not None

    # A broken config is refused; the running one keeps serving.
    milter.config_path.write_text(milter.config_text + "[size]\nbogus_key = 1\n")
    milter.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in log(), what="the refusal")
    assert "size.bogus_key: unknown key" in log()
    tag, raw = tagged()
    send(postfix, undated(raw))
    assert sink.find(tag) is not None

    # A valid one: the next message gets the new threshold.
    rules(local, 2.0)
    milter.config_path.write_text(milter.config_text)
    milter.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "generation 2 " in log(), what="the reload")
    tag, raw = tagged()
    send(postfix, undated(raw))  # 3 >= 2: quarantined, not delivered
    assert sink.find(tag, timeout=2) is None
    assert milter.process.poll() is None  # the same process, never restarted


def test_mail_flowing_across_twenty_reloads_sees_no_4xx(postfix, sink, gateway_milter, tmp_path):
    milter = gateway_milter('[pipeline]\nworkers = 1\nchecks = ["limits", "headers", "size", '
                            '"lists"]\n')
    log = since_start(milter)
    failures: list[str] = []
    sent: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            tag, raw = tagged()
            try:
                send(postfix, raw)
                sent.append(tag)
            except smtplib.SMTPException as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for number in range(2, 22):
            before = len(sent)
            milter.process.send_signal(signal.SIGHUP)
            wait_for(lambda n=number: f"generation {n} " in log(), what=f"reload {number}")
            # Mail goes on flowing between one reload and the next.
            wait_for(lambda b=before: len(sent) > b, what="a message after the reload")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert len(sent) > 20
    assert all(sink.find(tag, timeout=10) is not None for tag in sent[-5:])


def test_metrics_count_what_was_sent_per_action(postfix, sink, gateway_milter, tmp_path):
    port = free_port()
    gateway_milter(f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
                   f'[quarantine]\nurl = "sqlite:///{tmp_path}/own.db"\n'
                   '[lists]\nblock_senders = ["spammer.example"]\n' + rules(
                       tmp_path / "local.toml", 2.0))
    for _ in range(3):
        send(postfix, tagged()[1])  # accepted
    for _ in range(2):
        send(postfix, undated(tagged()[1]))  # quarantined (MISSING_DATE 3 >= 2)
    with pytest.raises(smtplib.SMTPDataError):
        send(postfix, tagged()[1], mail_from="x@spammer.example")  # rejected
    status, text = scrape(port)
    assert status == 200
    assert metric(text, "gateway_messages_total", action="accept") == 3
    assert metric(text, "gateway_messages_total", action="quarantine") == 2
    assert metric(text, "gateway_messages_total", action="reject") == 1
    assert metric(text, "gateway_message_score_count") == 6
    assert metric(text, "gateway_quarantine_messages", state="held") == 2
    assert metric(text, "gateway_process_resident_bytes", process="milter") > 10e6
    status, body = scrape(port, "/health")
    assert status == 200 and json.loads(body) == {"ok": True, "problems": []}
    # Every series the shipped Grafana dashboard queries is there.
    dashboard = (Path(__file__).parent.parent / "deploy/grafana/gateway.json").read_text()
    queried = set(re.findall(r"(gateway_[a-z_]+)", dashboard))
    exposed = set(re.findall(r"^(gateway_[a-z_]+)", text, re.MULTILINE))
    queried.discard("gateway_model_info")  # appears once the classifier has run (not here)
    assert queried and queried <= exposed


def test_health_says_what_is_wrong(postfix, gateway_milter, own_clamd):
    port = free_port()
    gateway_milter(f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
                   '[pipeline]\nchecks = ["headers", "clamav"]\n'
                   f'[clamav]\nsocket = "{own_clamd.socket_path}"\n')
    assert scrape(port, "/health")[0] == 200
    own_clamd.stop()
    # /health caches its answer for two seconds: the next fresh one says it.
    status, body = wait_for(lambda: (answer := scrape(port, "/health"))[0] != 200 and answer,
                            what="/health to see clamd stopped")
    assert status == 503
    assert "clamd at" in json.loads(body)["problems"][0]


def test_log_lines_can_be_pure_json(postfix, sink, gateway_milter):
    milter = gateway_milter('[log]\nformat = "json"\n')
    log = since_start(milter)
    tag, raw = tagged()
    send(postfix, raw)
    assert sink.find(tag) is not None
    lines = [json.loads(line) for line in log().splitlines() if line.startswith("{")]
    verdicts = [line for line in lines if line.get("logger") == "gateway.message"]
    assert verdicts and verdicts[-1]["action"] == "accept" and verdicts[-1]["queue_id"]
    assert all(line["level"] in ("debug", "info", "warning", "error") for line in lines)


def test_the_milter_process_is_restarted_if_it_dies(postfix, sink, gateway_milter):
    import os

    from tests.bench.procs import tree

    milter = gateway_milter()
    log = since_start(milter)
    child = tree(milter.process.pid)[1]
    os.kill(child, signal.SIGKILL)  # it served (its socket was open): restarted
    wait_for(lambda: "starting it again" in log(), what="the restart")
    wait_for(lambda: milter.socket_path.exists(), what="the socket")
    tag, raw = tagged()
    deadline = time.monotonic() + 20
    while True:  # Postfix answers 4xx (milter_default_action) until it is back
        try:
            send(postfix, raw)
            break
        except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
            assert exc.smtp_code == 451 and time.monotonic() < deadline
            time.sleep(0.2)
    assert sink.find(tag) is not None


def test_a_config_error_at_start_is_one_line_and_no_restart(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "gateway.toml"
    config.write_text('[pipeline]\nbudget = "ten"\n')
    result = subprocess.run([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"gateway: {config}: pipeline.budget: expected a number, "
                                     "got string 'ten'")


# -- the service, without Postfix ------------------------------------------------------


def test_a_message_keeps_the_generation_it_started_with(tmp_path):
    path = tmp_path / "gateway.toml"
    text = '[pipeline]\nchecks = ["headers"]\nworkers = 0\n[quarantine]\nurl = ""\n'
    path.write_text(text)
    service = Service(parse_config(text, str(path)), str(path))
    try:
        first = service.current.acquire()
        path.write_text(text.replace('["headers"]', '["headers", "size"]'))
        assert service.reload()
        assert service.current is not first and service.current.number == 2
        assert first.config.pipeline.checks == ["headers"]  # still usable
        assert not first._retired or first._users == 1
        first.release()  # its last message answered: now it closes
        path.write_text("not toml [")
        assert not service.reload()
        assert service.current.number == 2
        assert service.reloads == {"ok": 1, "refused": 1}
    finally:
        service.close()


def test_a_reload_keeps_the_quarantine_when_its_settings_did_not_change(tmp_path):
    url = f"sqlite:///{tmp_path}/q.db"
    config = Config(pipeline=PipelineSection(checks=["headers"], workers=0),
                    quarantine=QuarantineSection(url=url))
    service = Service(config, None, lambda _path: config)
    try:
        keeper = service.current.keeper
        assert service.reload()
        assert service.current.keeper is keeper
    finally:
        service.close()


def test_the_service_keeps_the_node_in_the_registry_not_the_purge_keeper(tmp_path):
    from gateway import nodes
    from gateway.db import make_engine
    from gateway.quarantine.keeper import Keeper

    url = f"sqlite:///{tmp_path}/q.db"
    config = Config(pipeline=PipelineSection(checks=["headers"], workers=0),
                    quarantine=QuarantineSection(url=url, node="node-s"))
    beating = set(nodes._running)
    keeper = Keeper(config)
    keeper.start_purging()  # the purge and autolearn jobs only
    try:
        assert set(nodes._running) == beating
    finally:
        keeper.close()
    service = Service(config, None, lambda _path: config)
    engine = make_engine(url)

    def registered() -> list[nodes.Node]:
        with engine.connect() as connection:
            return [n for n in nodes.fleet(connection) if n.name == "node-s"]

    try:
        (node,) = wait_until(registered, what="the service's first heartbeat")
        assert not node.stopped and not node.stale
        assert service.reload()  # the same quarantine: the same heartbeat
        assert len(set(nodes._running) - beating) == 1
    finally:
        service.close()
    (node,) = registered()
    assert node.stopped  # shut down on purpose, not taken for dead
    engine.dispose()


def test_rules_naming_an_unknown_symbol_are_refused_at_start_and_on_reload(tmp_path):
    from gateway.schema import ConfigError

    misspelt = tmp_path / "local.toml"
    misspelt.write_text("[scores]\nBAYES_99X = 3.0\n")
    path = tmp_path / "gateway.toml"
    good = '[pipeline]\nchecks = ["headers"]\nworkers = 0\n[quarantine]\nurl = ""\n'
    bad = good + f'[policy]\nrules = ["{DEFAULT_RULES}", "{misspelt}"]\n'
    with pytest.raises(ConfigError, match=r"scores.BAYES_99X: unknown symbol \(did you mean "):
        Service(parse_config(bad, str(path)), str(path))
    path.write_text(good)
    service = Service(parse_config(good, str(path)), str(path))
    try:
        path.write_text(bad)
        assert not service.reload()
        assert service.reloads["refused"] == 1
    finally:
        service.close()


def test_symbols_a_rules_file_defines_may_be_scored_and_forced_anywhere(tmp_path):
    from gateway.ruleset import load_rules
    from gateway.schema import ConfigError
    from gateway.symbolcheck import known_symbols

    defining = tmp_path / "rules.toml"
    defining.write_text('[rule.SUBJECT_FREE_MONEY]\ntype = "header"\nheader = "Subject"\n'
                        "pattern = 'free money'\nscore = 1.0\n")
    scoring = tmp_path / "local.toml"
    scoring.write_text('[scores]\nSUBJECT_FREE_MONEY = 2.0\n[force]\nSUBJECT_FREE_MONY = '
                       '"quarantine"\n')
    with pytest.raises(ConfigError) as caught:
        load_rules([DEFAULT_RULES, defining, scoring], known_symbols([]))
    assert caught.value.problems == [f"{scoring}: force.SUBJECT_FREE_MONY: unknown symbol "
                                     "(did you mean SUBJECT_FREE_MONEY?)"]
