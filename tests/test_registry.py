"""One registry of checks: the built-in ones by name (gateway.registry), the
default [pipeline] checks from it, and a site's own check with settings of
its own in [check.NAME]."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.checks import BUILTIN, resolve_check
from gateway.commands.configcheck import examine
from gateway.commands.configshow import render
from gateway.config import SECTIONS, Config, parse_config
from gateway.evaluator import LocalEvaluator
from gateway.message import Envelope, RawContent
from gateway.registry import REGISTRY
from gateway.schema import ConfigError

SHOUTING = "tests.plugins:ShoutingCheck"
SHOUTED = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
           b"Subject: LUNCH NOW\r\nDate: Tue, 24 Nov 2026 09:00:00 +0000\r\n"
           b"Message-ID: <1@example.org>\r\n\r\nHello.\r\n")


def test_the_builtin_checks_and_the_default_list_come_from_the_registry():
    assert list(BUILTIN) == [check.name for check in REGISTRY]
    assert Config().pipeline.checks == [check.name for check in REGISTRY if check.default]
    for check in REGISTRY:
        cls = resolve_check(check.name)
        assert cls.name == check.name, check.target
        assert check.section is None or check.section in SECTIONS, check
        assert cls.section is None  # [check.NAME] is for a site's own checks


def config_text(settings: str, checks: str = f'["headers", "{SHOUTING}"]') -> str:
    return f'[pipeline]\nchecks = {checks}\nworkers = 0\n[quarantine]\nurl = ""\n{settings}'


def test_a_site_check_reads_its_own_section():
    config = parse_config(config_text("[check.shouting]\nmin_length = 5\nscore = 2.5\n"), "x")
    evaluator = LocalEvaluator(config)
    try:
        check = evaluator.pipeline.checks[-1]
        assert check.options == check.section(min_length=5, score=2.5)
        verdict = evaluator.evaluate(Envelope(), RawContent(data=SHOUTED))
        assert [(s.name, s.score) for s in verdict.symbols] == [("SUBJECT_ALL_CAPS", 2.5)]
    finally:
        evaluator.close()
    # Without the section, its defaults: "LUNCH NOW" is shorter than 10.
    evaluator = LocalEvaluator(parse_config(config_text(""), "x"))
    try:
        assert evaluator.evaluate(Envelope(), RawContent(data=SHOUTED)).symbols == ()
    finally:
        evaluator.close()


def test_a_built_in_check_has_no_check_section():
    with pytest.raises(ConfigError) as caught:
        parse_config(config_text("[check.clamav]\ntimeout = 3\n[check.headers]\n"), "gw.toml")
    assert caught.value.problems == [
        "gw.toml: check.clamav: clamav is a built-in check ([check.NAME] is for a site's own "
        "checks); its settings are in [clamav]",
        "gw.toml: check.headers: headers is a built-in check ([check.NAME] is for a site's "
        "own checks)",
    ]


@pytest.mark.parametrize(("settings", "problem"), [
    ("[check.shouting]\nmin_lenght = 5\n",
     "check.shouting.min_lenght: unknown key (did you mean 'min_length'?)"),
    ("[check.shouting]\nmin_length = 0\n",
     "check.shouting.min_length: must be greater than 0, got 0"),
    ("[check.shouting]\nscore = \"high\"\n",
     "check.shouting.score: expected a number, got string 'high'"),
    ("[check.shuoting]\nmin_length = 5\n",
     "check.shuoting: no enabled check has settings named 'shuoting' (enabled checks with "
     "settings: shouting)"),
])
def test_a_site_checks_settings_are_validated_with_the_config(tmp_path: Path, settings,
                                                               problem):
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(settings))
    findings = examine(str(path), start_checks=False)
    assert findings.errors == [f"{path}: {problem}"]
    with pytest.raises(ConfigError) as caught:
        LocalEvaluator(parse_config(path.read_text(), str(path)))
    assert caught.value.problems == [f"{path}: {problem}"]


def test_a_check_section_of_a_check_that_is_off_is_a_problem(tmp_path: Path):
    path = tmp_path / "gateway.toml"
    path.write_text(config_text("[check.shouting]\nmin_length = 5\n", checks='["headers"]'))
    assert examine(str(path), start_checks=False).errors == [
        f"{path}: check.shouting: no enabled check has settings named 'shouting' (enabled "
        "checks with settings: none)"]


def test_config_show_prints_a_site_checks_settings_with_their_defaults():
    text = render(parse_config(config_text("[check.shouting]\nmin_length = 5\n"), "x"))
    assert text.endswith("\n[check.shouting]\n# subjects shorter than this are never shouting\n"
                         "min_length = 5\n# the score of SUBJECT_ALL_CAPS\nscore = 1.0")
    assert "[check." not in render(Config())
