"""``gateway run`` as an admin starts it: the supervisor and its milter
child, without Postfix (a milter socket and tests/milterclient.py are
enough)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.paths import DEFAULT_RULES
from tests.helpers import PROJECT_ROOT, fixture_message, milter_config, wait_until
from tests.milterclient import MilterClient, Outcome


class Gateway:
    """``gateway run`` as the installed entry point runs it: its own folder,
    not the working directory, on sys.path (``-P``); its log in a file."""

    def __init__(self, tmp_path: Path, cwd: Path, checks: str = '["headers"]',
                 env: dict[str, str] | None = None, pipeline: str = "", extra: str = ""):
        """``pipeline``: more [pipeline] keys; ``extra``: more sections."""
        self.socket = tmp_path / "milter.sock"
        self.config = tmp_path / "gateway.toml"
        self.config.write_text(milter_config(
            self.socket, f"[pipeline]\nchecks = {checks}\nworkers = 1\n{pipeline}{extra}"))
        self.log_path = tmp_path / "gateway.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "gateway", "run", "--config", str(self.config)],
                cwd=cwd, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})},
                stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_serving(self) -> None:
        wait_until(lambda: self.socket.exists() or self.process.poll() is not None,
                   timeout=60, what="the milter's socket")
        assert self.process.poll() is None, self.log()

    def session(self) -> MilterClient:
        client = MilterClient(str(self.socket))
        client.connect()
        client.helo()
        return client

    def send(self, queue_id: str = "", client: MilterClient | None = None) -> Outcome:
        return (client or self.session()).message(
            "a@example.org", ["b@example.net"], fixture_message("ham_plain.eml"),
            queue_id=queue_id)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return self.log()


@pytest.fixture
def started() -> list[Gateway]:
    running: list[Gateway] = []
    yield running
    for gateway in running:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()


@pytest.mark.parametrize("admins", [None, "4"])
def test_the_milter_and_its_workers_run_with_two_malloc_arenas(tmp_path, started, admins,
                                                               monkeypatch):
    """Fewer glibc arenas keep the threads' memory down (gateway.supervisor);
    an admin's MALLOC_ARENA_MAX is kept."""
    from tests.bench.procs import gateway_processes

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    gateway = Gateway(tmp_path, tmp_path, env={"MALLOC_ARENA_MAX": admins} if admins else {})
    started.append(gateway)
    gateway.wait_serving()
    assert gateway.send().action == "accept"
    parts = {part for pid, part, _ in gateway_processes(gateway.process.pid)}
    assert {"milter", "workers"} <= parts
    for pid, part, _ in gateway_processes(gateway.process.pid):
        if part == "supervisor":
            continue
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"MALLOC_ARENA_MAX={admins or 2}".encode() in environ, part


def test_a_gateway_folder_in_the_working_directory_does_not_replace_the_milter(tmp_path,
                                                                               started):
    shadow = tmp_path / "admin-home"
    (shadow / "gateway").mkdir(parents=True)
    marker = tmp_path / "shadow-ran"
    (shadow / "gateway" / "__init__.py").write_text("")
    (shadow / "gateway" / "__main__.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n")
    gateway = Gateway(tmp_path, cwd=shadow)
    started.append(gateway)
    gateway.wait_serving()
    assert gateway.socket.exists()
    gateway.stop()
    assert not marker.exists()


@pytest.mark.slow
def test_sigterm_stops_after_the_message_in_flight_is_answered(tmp_path, started):
    # The message waits 3 s in a check; SIGTERM arrives meanwhile. Before,
    # a thread that did not block SIGTERM (numpy's BLAS server) took it and
    # the process died mid-message: Postfix saw the connection close.
    marker = tmp_path / "in-flight"
    gateway = Gateway(tmp_path, cwd=tmp_path, checks='["headers", "tests.plugins:InFlightCheck"]',
                      env={"GATEWAY_TEST_IN_FLIGHT": str(marker)})
    started.append(gateway)
    gateway.wait_serving()
    answers: list[Outcome] = []
    sending = threading.Thread(target=lambda: answers.append(gateway.send()))
    sending.start()
    wait_until(marker.exists, timeout=60, what="the message reaching the check")
    gateway.process.send_signal(signal.SIGTERM)
    sending.join(timeout=60)
    output = gateway.stop()
    (outcome,) = answers
    assert outcome.action == "accept", output
    assert ("X-Spam-Status", "No, score=0.0 required=4.0 tests=TEST_IN_FLIGHT_DONE") \
        in outcome.added_headers
    assert gateway.process.returncode == 0, output
    assert "gateway milter stopped" in output


def json_lines(text: str) -> list[dict]:
    """Every line as JSON: fails on the first bare one."""
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a bare line under format = json: {line!r}") from None
    return records


@pytest.mark.slow
def test_a_reload_applies_the_log_format_and_every_line_then_is_json(tmp_path, started):
    # Before: a reload kept the old format, and a worker process logged a
    # check's failure as bare text whatever the format.
    gateway = Gateway(tmp_path, cwd=tmp_path, checks='["headers", "tests.plugins:BoomCheck"]')
    started.append(gateway)
    gateway.wait_serving()
    assert "starting: config" in gateway.log()
    gateway.config.write_text(gateway.config.read_text() + '[log]\nformat = "json"\n')
    before = len(gateway.log())
    gateway.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "now serving" in gateway.log()[before:], timeout=30, what="the reload")
    assert gateway.send(queue_id="4XyZ1").action == "accept"
    output = gateway.stop()
    after_reload = output[output.index("\n", output.index("now serving")) + 1:]
    records = json_lines(after_reload)
    failure = next(r for r in records if "check boom failed" in r.get("message", ""))
    assert failure["queue_id"] == "4XyZ1" and failure["logger"] == "gateway.pipeline"
    verdict = next(r for r in records if r["logger"] == "gateway.message")
    assert verdict["queue_id"] == "4XyZ1" and verdict["failed_checks"] == ["boom"]
    assert records[-1]["message"] == "gateway milter stopped"
    assert any(r["message"].startswith("SIGTERM: stopping") for r in records
               if r["logger"] == "gateway.supervisor")


@pytest.mark.slow
def test_rules_edited_on_disk_wait_for_sighup_and_a_broken_edit_is_refused(tmp_path, started):
    # Every message gets a new worker process. Before, each new worker read
    # the rules files again: an edit without a reload changed the verdicts
    # of recycled workers only, and a broken file left no worker to start.
    lunch = ('[rule.SUBJECT_LUNCH]\ntype = "header"\nheader = "Subject"\n'
             'pattern = "Lunch"\nscore = 2.0\n')
    rules = tmp_path / "local.toml"
    rules.write_text(lunch)
    gateway = Gateway(tmp_path, cwd=tmp_path, checks='["headers", "rules"]',
                      pipeline="worker_max_messages = 1\n",
                      extra=f'[policy]\nrules = ["{DEFAULT_RULES}", "{rules}"]\n')
    started.append(gateway)
    gateway.wait_serving()

    def status() -> str:
        outcome = gateway.send()
        assert outcome.action == "accept", gateway.log()
        return dict(outcome.added_headers)["X-Spam-Status"]

    def reload() -> str:
        before = len(gateway.log())
        gateway.process.send_signal(signal.SIGHUP)
        return wait_until(lambda: re.search(r"reload refused|now serving",
                                            gateway.log()[before:]), timeout=60,
                          what="the reload").group(0)

    assert status() == "No, score=2.0 required=4.0 tests=SUBJECT_LUNCH"
    rules.write_text(lunch.replace('"Lunch"', '"Dinner"'))  # no longer fires
    assert status() == "No, score=2.0 required=4.0 tests=SUBJECT_LUNCH"
    rules.write_text("[rule.SUBJECT_LUNCH\n")
    assert status() == "No, score=2.0 required=4.0 tests=SUBJECT_LUNCH"
    assert reload() == "reload refused"
    assert status() == "No, score=2.0 required=4.0 tests=SUBJECT_LUNCH"
    rules.write_text(lunch.replace("2.0", "3.5"))
    assert reload() == "now serving"
    assert status() == "No, score=3.5 required=4.0 tests=SUBJECT_LUNCH"
    output = gateway.stop()
    assert "could not start a worker" not in output


@pytest.mark.slow
def test_a_site_check_gets_its_check_section_in_the_worker(tmp_path, started):
    # docs/admin.md's check with settings: [check.shouting], read by the
    # config and given to the check in the worker process.
    gateway = Gateway(tmp_path, cwd=tmp_path, checks='["headers", "tests.plugins:ShoutingCheck"]',
                      extra="[check.shouting]\nmin_length = 5\nscore = 2.5\n")
    started.append(gateway)
    gateway.wait_serving()
    shouted = fixture_message("ham_plain.eml").replace(b"Lunch on Thursday", b"LUNCH NOW")
    outcome = gateway.session().message("a@example.org", ["b@example.net"], shouted)
    assert ("X-Spam-Status", "No, score=2.5 required=4.0 tests=SUBJECT_ALL_CAPS") \
        in outcome.added_headers, gateway.log()
