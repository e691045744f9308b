"""``gateway doctor`` and ``gateway config check`` as an admin runs them.

The doctor is pointed at a private setup: a Postfix configuration written
by the lab (Postfix itself need not run: the doctor only asks postconf),
the gateway milter running on its socket, a private clamd and knotd, a
quarantine of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.lab.milter_process import MilterProcess
from gateway.lab.postfix import PostfixInstance, free_port
from tests.helpers import PROJECT_ROOT
from tests.lab.dns import FaultServer


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=120)


def doctor(config: Path, postfix_dir: Path | None, *extra: str) -> tuple[int, dict[str, dict]]:
    args = ["doctor", "--config", str(config), "--json", "--user", "root",
            "--dns-probe", "good.test", "--max-signature-age", "0", *extra]
    if postfix_dir is not None:
        args += ["--postfix-config", str(postfix_dir)]
    result = gateway(*args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, {line["check"]: line for line in json.loads(result.stdout)}


# -- config check ----------------------------------------------------------------------


@pytest.mark.slow
def test_config_check_reports_every_problem_at_once(tmp_path: Path):
    rules = tmp_path / "local.toml"
    rules.write_text("[thresholds]\nquarantine = 20\n[scores]\nBAYES_99X = 3\n"
                     "MISSING_DATE = \"high\"\n[force]\nCLAMAV_VIRSU = \"reject\"\n")
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[milter]\nsocket = "/tmp/x"\n'
        f'[policy]\nrules = ["{PROJECT_ROOT}/rules/default.toml", "local.toml"]\n'
        '[quarantine]\nurl = "sqlite:///quarantine.db"\n'
        '[pipeline]\nchecks = ["headers", "lists"]\n')
    result = gateway("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"gateway: {config}: milter.socket: expected unix:/path or inet:port@host",
        f"gateway: {rules}: scores.MISSING_DATE: expected a number, got 'high'",
        f"gateway: {rules}: thresholds: reject (15.0) must not be below quarantine (20.0)",
        f"gateway: {rules}: scores.BAYES_99X: unknown symbol (did you mean BAYES_99?)",
        f"gateway: {rules}: force.CLAMAV_VIRSU: unknown symbol (did you mean CLAMAV_VIRUS?)",
        "gateway: quarantine.url sqlite:///quarantine.db: the path 'quarantine.db' is "
        "relative, so it depends on the directory the gateway starts in; an absolute path "
        "takes four slashes (sqlite:////var/lib/gateway/quarantine.db)",
    ]


@pytest.mark.slow
def test_symbols_of_checks_that_are_off_are_not_unknown(tmp_path: Path):
    rules = tmp_path / "local.toml"
    rules.write_text("[scores]\nCLAMAV_OVERSIZE = 2\nBAYES_99 = 8\n")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[pipeline]\nchecks = ["headers"]\n[quarantine]\nurl = ""\n'
                      f'[policy]\nrules = ["{PROJECT_ROOT}/rules/default.toml", "{rules}"]\n')
    result = gateway("config", "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"config ok: {config}\n")


@pytest.mark.parametrize(("url", "problem"), [
    ("sqlite:///:memory:", "a database in memory loses held mail at every restart; name a "
                           "file, e.g. sqlite:////var/lib/gateway/quarantine.db"),
    ("sqlite:///{tmp}/afile/q.db", "{tmp}/afile is not a directory, so {tmp}/afile/q.db "
                                   "cannot be created"),
    ("sqlite:///{tmp}/notdb.db", "{tmp}/notdb.db: file is not a database"),
    ("sqlite:///{tmp}", "{tmp} is a directory, not a database file"),
])
def test_config_check_refuses_an_unusable_quarantine(tmp_path: Path, url: str, problem: str):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "notdb.db").write_bytes(b"this is not SQLite " * 100)
    url = url.format(tmp=tmp_path)
    config = tmp_path / "gateway.toml"
    config.write_text(f'[pipeline]\nchecks = ["headers"]\n[quarantine]\nurl = "{url}"\n')
    result = gateway("config", "check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == f"gateway: quarantine.url {url}: {problem.format(tmp=tmp_path)}\n"


# -- doctor ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doctor_lab() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix configuration needs root")
    if shutil.which("postconf") is None:
        pytest.skip("postfix is not installed (see .ci/run)")
    path = Path(tempfile.mkdtemp(prefix="gateway-doctor-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def setup(doctor_lab: Path, knot, clamd) -> Iterator[Callable[..., tuple[Path, Path]]]:
    """A healthy setup: (gateway.toml, Postfix's config directory). Called
    with Postfix settings or gateway settings to change ({section: {key:
    TOML value}}), it writes a variant of either next to the running one."""
    socket = doctor_lab / "milter" / "milter.sock"
    reinject = free_port()
    base = {
        "milter": {"socket": f'"unix:{socket}"', "socket_mode": '"666"'},
        "clamav": {"socket": f'"{clamd.socket_path}"'},
        "dns": {"nameservers": '["127.0.0.1"]', "port": str(knot.port)},
        "quarantine": {"url": f'"sqlite:///{doctor_lab}/store/quarantine.db"'},
        "release": {"smtp": f'"127.0.0.1:{reinject}"'},
        "pipeline": {"workers": "0"},
        "metrics": {"listen": '""'},
    }

    def render(changes: dict[str, dict[str, str]]) -> str:
        sections = {name: {**base.get(name, {}), **changes.get(name, {})}
                    for name in {**base, **changes}}
        return "".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                       for name, keys in sections.items())

    milter = MilterProcess(doctor_lab / "milter", render({}),
                           env={"PYTHONPATH": str(PROJECT_ROOT)})
    milter.start()
    counter = iter(range(100))

    def make(postfix: dict[str, str] | None = None,
             settings: dict[str, dict[str, str]] | None = None) -> tuple[Path, Path]:
        number = next(counter)
        instance = PostfixInstance(doctor_lab / f"postfix-{number}", relay_port=2525,
                                   milter=f"unix:{socket}", reinject_port=reinject,
                                   settings=postfix)
        instance.write_config()
        config = milter.config_path
        if settings:
            config = doctor_lab / f"gateway-{number}.toml"
            config.write_text(render(settings))
        return config, instance.config_dir

    yield make
    milter.stop()


@pytest.mark.slow
def test_doctor_on_a_healthy_setup_is_all_ticks(setup):
    config, postfix = setup()
    status, lines = doctor(config, postfix)
    assert {name: line["status"] for name, line in lines.items()} == {
        "config": "ok", "rules": "ok", "clamd": "ok", "dns 127.0.0.1:" + lines_port(lines): "ok",
        "store": "ok", "model": "ok", "model bands": "ok", "model on this site": "ok",
        "identity": "ok", "greylist": "skip", "ratelimit": "skip", "fuzzy": "ok", "node": "ok",
        "postfix smtpd_milters": "ok",
        "postfix non_smtpd_milters": "ok", "postfix milter_default_action": "ok",
        "postfix milter_protocol": "ok", "postfix release listener": "ok",
        "postfix reaches socket": "ok", "user": "ok", "store modes": "ok", "config file": "ok",
        "owners": "ok",
    }
    assert status == 0
    assert re.search(r"schema at \d{4}(_\w+)? \(head\)", lines["store"]["text"])
    assert "checksums match" in lines["model"]["text"]
    assert "answered good.test SOA" in lines["dns 127.0.0.1:" + lines_port(lines)]["text"]


def lines_port(lines: dict[str, dict]) -> str:
    (name,) = [n for n in lines if n.startswith("dns ")]
    return name.rsplit(":", 1)[1]


@pytest.mark.slow
def test_doctor_text_is_one_line_per_check_with_marks(setup):
    config, postfix = setup({"milter_protocol": "4"})
    result = gateway("doctor", "--config", str(config), "--postfix-config", str(postfix),
                     "--user", "root", "--dns-probe", "good.test", "--max-signature-age", "0")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert all(line[:2] in ("✔ ", "✘ ", "- ") for line in lines), lines
    (wrong,) = [line for line in lines if line.startswith("✘")]
    assert wrong.split() [:3] == ["✘", "postfix", "milter_protocol"]
    assert wrong.endswith("-- fix: postconf -e 'milter_protocol = 6'; postfix reload")


@pytest.mark.slow
def test_doctor_with_clamd_stopped(setup, doctor_lab: Path):
    config, postfix = setup(settings={"clamav": {"socket": f'"{doctor_lab}/no-clamd.sock"'}})
    status, lines = doctor(config, postfix)
    assert status == 1
    assert lines["clamd"]["status"] == "fail"
    assert lines["clamd"]["text"].startswith(f"not answering at {doctor_lab}/no-clamd.sock")
    assert lines["clamd"]["fix"].startswith("systemctl start clamav-daemon")
    assert [n for n, line in lines.items() if line["status"] == "fail"] == ["clamd"]


@pytest.mark.slow
def test_doctor_with_dns_dead(setup):
    with FaultServer("drop") as dead:
        config, postfix = setup(settings={"dns": {"port": str(dead.port), "timeout": "0.5"}})
        status, lines = doctor(config, postfix)
    assert status == 1
    failed = [n for n, line in lines.items() if line["status"] == "fail"]
    assert failed == [f"dns 127.0.0.1:{dead.port}"]
    assert lines[failed[0]]["text"].startswith("no answer for good.test SOA within 0.5 s")


@pytest.mark.slow
def test_doctor_with_a_wrong_postfix_setting(setup):
    config, postfix = setup({"milter_default_action": "accept",
                             "non_smtpd_milters": ""})
    status, lines = doctor(config, postfix)
    assert status == 1
    failed = {n: line for n, line in lines.items() if line["status"] == "fail"}
    assert set(failed) == {"postfix milter_default_action", "postfix non_smtpd_milters"}
    assert failed["postfix milter_default_action"]["text"] == \
        "accept: while the gateway is down, mail is accepted unfiltered"
    assert failed["postfix non_smtpd_milters"]["fix"].startswith(
        "postconf -e 'non_smtpd_milters = $smtpd_milters'")


@pytest.mark.slow
def test_doctor_sees_a_missing_release_listener_and_a_wide_store(setup, doctor_lab: Path):
    config, postfix = setup(settings={"release": {"smtp": '"127.0.0.1:1"'}})
    store = doctor_lab / "store" / "quarantine.db"
    os.chmod(store, 0o644)
    try:
        status, lines = doctor(config, postfix)
    finally:
        os.chmod(store, 0o600)
    assert status == 1
    assert lines["postfix release listener"]["status"] == "fail"
    assert lines["postfix release listener"]["text"].startswith(
        "no master.cf service listens on 127.0.0.1:1")
    assert lines["store modes"]["status"] == "fail"
    assert f"{store} is 0644" in lines["store modes"]["text"]


@pytest.mark.slow
def test_doctor_stops_at_a_broken_config(tmp_path: Path):
    rules = tmp_path / "local.toml"
    rules.write_text("[scores]\nBAYES_99X = 3\n")
    config = tmp_path / "gateway.toml"
    config.write_text(f'[policy]\nrules = ["{PROJECT_ROOT}/rules/default.toml", "{rules}"]\n')
    result = gateway("doctor", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout == (f"✘ config  {rules}: scores.BAYES_99X: unknown symbol (did you "
                             "mean BAYES_99?) -- fix: correct the symbol name (gateway symbols "
                             "--all lists them)\n")


def test_postfix_milter_names_as_a_chrooted_smtpd_sees_them():
    from gateway.commands.doctor import _milter_entries, _postfix_spec, _same_milter

    ours = "unix:/var/spool/postfix/gateway/milter.sock"
    spool = Path("/var/spool/postfix")
    assert _milter_entries("{ unix:/gateway/milter.sock, default_action=accept }, "
                           "inet:127.0.0.1:8891") == ["unix:/gateway/milter.sock",
                                                      "inet:127.0.0.1:8891"]
    assert _same_milter("unix:/gateway/milter.sock", ours, True, spool)
    assert not _same_milter("unix:/gateway/milter.sock", ours, False, spool)
    assert _same_milter("unix:/var/spool/postfix/gateway/milter.sock", ours, False, spool)
    assert _postfix_spec(ours, True, spool) == "unix:/gateway/milter.sock"
    assert _postfix_spec(ours, False, spool) == ours
    assert _same_milter("inet:localhost:8899", "inet:8899@127.0.0.1", False, spool)
    assert not _same_milter("inet:localhost:8898", "inet:8899@127.0.0.1", False, spool)


def test_doctor_says_whether_greylisting_rate_limits_and_near_duplicates_have_their_store():
    from gateway.commands.doctor import bulk_lines
    from gateway.config import parse_config

    limit = '[[ratelimit]]\nname = "per-ip"\nkey = "client_ip"\nrate = "100/hour"\n'
    shared = parse_config('[greylist]\nenabled = true\nexempt_senders = ["@bank.example"]\n'
                          + limit + '[quarantine]\nurl = "sqlite:////tmp/x.db"\n', "g.toml")
    lines = {line.check: line for line in bulk_lines(shared)}
    assert [lines[c].status for c in ("greylist", "ratelimit", "fuzzy")] == ["ok"] * 3
    assert lines["greylist"].text == ("on: a first attempt waits 5m, a sender that passed is "
                                      "remembered 35d; 1 exempt senders")
    assert "per-ip: 100/hour by client_ip, then tempfail (counted in the store" in \
        lines["ratelimit"].text
    alone = parse_config('[greylist]\nenabled = true\n' + limit + '[quarantine]\nurl = ""\n',
                         "g.toml")
    lines = {line.check: line for line in bulk_lines(alone)}
    assert [lines[c].status for c in ("greylist", "ratelimit", "fuzzy")] == ["fail"] * 3
    assert "no node greylists" in lines["greylist"].text
    assert "N nodes let in N times the rate" in lines["ratelimit"].text
    off = {line.check: line.status for line in bulk_lines(parse_config(
        '[pipeline]\nchecks = ["headers"]\n', "g.toml"))}
    assert off == {"greylist": "skip", "ratelimit": "skip", "fuzzy": "skip"}
