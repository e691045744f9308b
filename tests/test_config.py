from pathlib import Path

import pytest

from gateway.config import Config, load_config, parse_config
from gateway.paths import DEFAULT_RULES
from gateway.schema import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.toml")
    return caught.value.problems


def test_embedded_defaults_need_no_file():
    config = Config()
    assert config.milter.socket.startswith("unix:/")
    assert config.policy.rules == [str(DEFAULT_RULES)]
    assert config.pipeline.checks == ["limits", "headers", "size", "lists", "rules",
                                      "attachments", "spf", "dkim", "arc", "dmarc", "sender",
                                      "iprev", "tls", "dnsbl", "bayes", "fuzzy", "clamav",
                                      "identity", "links"]


def test_bad_socket_is_one_clear_line():
    assert problems('[milter]\nsocket = "/run/x.sock"\n') == [
        "gateway.toml: milter.socket: expected unix:/path or inet:port@host"
    ]


@pytest.mark.parametrize(
    "socket",
    ["unix:/run/gateway/m.sock", "inet:8890@127.0.0.1", "inet6:8890@[::1]", "local:/tmp/s"],
)
def test_valid_sockets(socket):
    assert parse_config(f'[milter]\nsocket = "{socket}"\n', "g.toml").milter.socket == socket


def test_unknown_key_suggests_the_near_one():
    assert problems('[milter]\nsockte = "unix:/x"\n') == [
        "gateway.toml: milter.sockte: unknown key (did you mean 'socket'?)"
    ]


def test_unknown_section():
    (line,) = problems("[miltr]\n")
    assert line == "gateway.toml: [miltr]: unknown section (did you mean 'milter'?)"


def test_every_problem_reported_at_once():
    lines = problems(
        '[pipeline]\nbudget = "ten"\nworkers = -1\n[lists]\nblock_ips = ["not-an-ip"]\n'
    )
    assert lines == [
        "gateway.toml: pipeline.budget: expected a number, got string 'ten'",
        "gateway.toml: pipeline.workers: must be 0 or more, got -1",
        "gateway.toml: lists.block_ips: 'not-an-ip' is not an IP address or network "
        "(e.g. 198.51.100.0/24)",
    ]


def test_literal_choices_are_named():
    (line,) = problems('[milter]\non_error = "panic"\n')
    assert (
        line == "gateway.toml: milter.on_error: expected one of 'tempfail', 'accept', got 'panic'"
    )


def test_invalid_toml_is_one_line():
    (line,) = problems("[milter\n")
    assert line.startswith("gateway.toml: not valid TOML:")
    assert "\n" not in line


def test_named_file_must_exist(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert caught.value.problems == [f"{tmp_path / 'nope.toml'}: config file not found"]


def test_rules_paths_are_relative_to_the_config_file(tmp_path: Path):
    (tmp_path / "gateway.toml").write_text('[policy]\nrules = ["local.toml"]\n')
    config = load_config(tmp_path / "gateway.toml")
    assert config.policy.rules == [str(tmp_path / "local.toml")]
    assert config.source == str(tmp_path / "gateway.toml")


def test_pipeline_parallel_takes_true_false_or_auto():
    for text, value in (("true", True), ("false", False), ('"auto"', "auto")):
        assert parse_config(f"[pipeline]\nparallel = {text}\n", "g.toml").pipeline.parallel == value
    (problem,) = problems('[pipeline]\nparallel = "sometimes"\n')
    assert problem == ("gateway.toml: pipeline.parallel: expected true or false or 'auto', "
                       "got string 'sometimes'")
