from pathlib import Path

import pytest

from gateway.paths import DEFAULT_RULES
from gateway.pipeline import CheckRun, PipelineResult
from gateway.policy import Policy, Rules, load_rules
from gateway.schema import ConfigError
from gateway.symbols import Symbol


def result(*symbols: Symbol, failed: tuple[str, ...] = ()) -> PipelineResult:
    runs = tuple(CheckRun(name, "error", 1.0, "boom") for name in failed)
    return PipelineResult(symbols=symbols, runs=runs)


def sym(name: str, score: float = 0.0, evidence: str = "") -> Symbol:
    return Symbol(name=name, score=score, description=name.lower(), evidence=evidence)


POLICY = Policy(Rules(quarantine=6.0, reject=15.0))


@pytest.mark.parametrize(
    ("score", "action"),
    [
        (0.0, "accept"),
        (5.99, "accept"),
        (6.0, "quarantine"),
        (14.9, "quarantine"),
        (15.0, "reject"),
        (-30.0, "accept"),
    ],
)
def test_thresholds(score, action):
    verdict = POLICY.decide(result(sym("A", score)))
    assert verdict.action == action
    assert verdict.score == score


def test_scores_from_rules_replace_the_checks_own():
    policy = Policy(Rules(scores={"A": 7.5}))
    verdict = policy.decide(result(sym("A", 1.0), sym("B", 0.5)))
    assert [s.score for s in verdict.symbols] == [7.5, 0.5]
    assert verdict.score == 8.0
    assert verdict.action == "quarantine"
    assert verdict.reason == "score 8 >= quarantine threshold 6"


def test_forced_action_ignores_the_score():
    policy = Policy(Rules(force={"VIRUS": "reject"}, scores={"GOOD": -100.0}))
    verdict = policy.decide(result(sym("GOOD"), sym("VIRUS", evidence="Eicar-Test")), "Q123")
    assert verdict.action == "reject"
    assert verdict.forced_by == "VIRUS"
    assert str(verdict.reply) == "550 5.7.1 Rejected: virus: Eicar-Test [VIRUS] (ref Q123)"


def test_most_severe_forced_action_wins():
    policy = Policy(Rules(force={"A": "accept", "Q": "quarantine", "T": "tempfail", "R": "reject"}))
    assert policy.decide(result(sym("A"), sym("Q"))).action == "quarantine"
    assert policy.decide(result(sym("A"), sym("Q"), sym("T"))).action == "tempfail"
    assert policy.decide(result(sym("T"), sym("R"), sym("A"))).action == "reject"
    assert policy.decide(result(sym("A"), sym("X", 50.0))).action == "accept"


def test_tempfail_reply_is_4xx():
    policy = Policy(Rules(force={"CLAMAV_ERROR": "tempfail"}))
    verdict = policy.decide(result(sym("CLAMAV_ERROR")), "Q9")
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.status) == ("451", "4.7.1")
    assert "CLAMAV_ERROR" in verdict.reply.text and "Q9" in verdict.reply.text


def test_spam_reject_reply_names_the_score():
    verdict = POLICY.decide(result(sym("A", 20.0)), "Q1")
    assert str(verdict.reply) == "550 5.7.1 Rejected as spam, score 20 (ref Q1)"


def test_failed_checks_are_carried_into_the_verdict():
    verdict = POLICY.decide(result(sym("CLAMAV_ERROR"), failed=("clamav",)))
    assert verdict.failed_checks == ("clamav",)


def test_later_rules_files_override_earlier(tmp_path: Path):
    local = tmp_path / "local.toml"
    local.write_text(
        "[thresholds]\nquarantine = 4.5\n[scores]\nMISSING_DATE = 3.0\n"
        '[force]\nMISSING_FROM = "quarantine"\n'
    )
    rules = load_rules([DEFAULT_RULES, local])
    assert rules.quarantine == 4.5
    assert rules.reject == 15.0
    assert rules.scores["MISSING_DATE"] == 3.0
    assert rules.scores["MISSING_MESSAGE_ID"] == 0.5
    assert rules.force["MISSING_FROM"] == "quarantine"
    assert rules.force["BLOCKLIST_SENDER"] == "reject"


def test_rules_problems_are_listed(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[thresholds]\nquarantin = 3\nreject = 2\n[scores]\nlower = 1\nX = "a"\n'
        '[force]\nY = "drop"\n[extra]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_rules([bad])
    assert caught.value.problems == [
        f"{bad}: [extra]: unknown section (known keys: force, release, scores, thresholds)",
        f"{bad}: thresholds.quarantin: unknown key (did you mean 'quarantine'?)",
        f"{bad}: scores.lower: symbol names are UPPER_SNAKE_CASE",
        f"{bad}: scores.X: expected a number, got 'a'",
        f"{bad}: force.Y: expected one of accept, quarantine, reject, tempfail, got 'drop'",
        f"{bad}: thresholds: reject (2.0) must not be below quarantine (6.0)",
    ]


def test_missing_rules_file(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        load_rules([tmp_path / "none.toml"])
    assert caught.value.problems == [f"{tmp_path / 'none.toml'}: rules file not found"]
