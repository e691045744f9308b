from pathlib import Path

import pytest

from gateway.headers import verdict_headers, with_tagged_subject
from gateway.message import RawContent
from gateway.paths import DEFAULT_RULES
from gateway.policy import SEVERITY, Policy
from gateway.ruleset import Ruleset, load_rules
from gateway.schema import ConfigError
from gateway.symbols import Symbol
from gateway.verdict import CheckRun, PipelineResult


def result(*symbols: Symbol, failed: tuple[str, ...] = ()) -> PipelineResult:
    runs = tuple(CheckRun(name, "error", 1.0, "boom") for name in failed)
    return PipelineResult(symbols=symbols, runs=runs)


def sym(name: str, score: float = 0.0, evidence: str = "") -> Symbol:
    return Symbol(name=name, score=score, description=name.lower(), evidence=evidence)


POLICY = Policy(Ruleset(quarantine=6.0, reject=15.0))


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
    policy = Policy(Ruleset(scores={"A": 7.5}))
    verdict = policy.decide(result(sym("A", 1.0), sym("B", 0.5)))
    assert [s.score for s in verdict.symbols] == [7.5, 0.5]
    assert verdict.score == 8.0
    assert verdict.action == "quarantine"
    assert verdict.reason == "score 8 >= quarantine threshold 6"


def test_forced_action_ignores_the_score():
    policy = Policy(Ruleset(force={"VIRUS": "reject"}, scores={"GOOD": -100.0}))
    verdict = policy.decide(result(sym("GOOD"), sym("VIRUS", evidence="Eicar-Test")), "Q123")
    assert verdict.action == "reject"
    assert verdict.forced_by == "VIRUS"
    assert str(verdict.reply) == "550 5.7.1 Rejected: virus: Eicar-Test [VIRUS] (ref Q123)"


def test_most_severe_forced_action_wins():
    policy = Policy(Ruleset(force={"A": "accept", "Q": "quarantine", "T": "tempfail",
                                   "R": "reject"}))
    assert policy.decide(result(sym("A"), sym("Q"))).action == "quarantine"
    assert policy.decide(result(sym("A"), sym("Q"), sym("T"))).action == "tempfail"
    assert policy.decide(result(sym("T"), sym("R"), sym("A"))).action == "reject"
    assert policy.decide(result(sym("A"), sym("X", 50.0))).action == "accept"


def test_tempfail_reply_is_4xx():
    policy = Policy(Ruleset(force={"CLAMAV_ERROR": "tempfail"}))
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
        f"{bad}: [extra]: unknown section (known keys: add_header, attachments, dnsbl, "
        "domain, force, release, rule, scores, thresholds)",
        f"{bad}: thresholds.quarantin: unknown key (did you mean 'quarantine'?)",
        f"{bad}: scores.lower: symbol names are UPPER_SNAKE_CASE",
        f"{bad}: scores.X: expected a number, got 'a'",
        f"{bad}: force.Y: expected one of accept, add_header, quarantine, reject, tempfail, "
        "score, got 'drop'",
        f"{bad}: thresholds: reject (2.0) must not be below quarantine (6.0)",
    ]


def test_missing_rules_file(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        load_rules([tmp_path / "none.toml"])
    assert caught.value.problems == [f"{tmp_path / 'none.toml'}: rules file not found"]


# -- the add_header tier -------------------------------------------------------------------

TIERS = Policy(Ruleset(add_header=4.0, quarantine=6.0, reject=15.0))


@pytest.mark.parametrize(
    ("score", "action", "reason"),
    [
        (3.99, "accept", "score 3.99 < add_header threshold 4"),
        (4.0, "add_header", "score 4 >= add_header threshold 4"),
        (5.99, "add_header", "score 5.99 >= add_header threshold 4"),
        (6.0, "quarantine", "score 6 >= quarantine threshold 6"),
        (15.0, "reject", "score 15 >= reject threshold 15"),
    ],
)
def test_add_header_is_the_tier_between_accept_and_quarantine(score, action, reason):
    verdict = TIERS.decide(result(sym("A", score)))
    assert (verdict.action, verdict.reason) == (action, reason)
    assert verdict.required == 4.0
    assert verdict.reply is None or action == "reject"


def test_add_header_mail_is_marked_as_spam_in_its_headers():
    verdict = TIERS.decide(result(sym("A", 4.5)))
    headers = dict(verdict_headers(verdict))
    assert headers["X-Spam-Flag"] == "YES"
    assert headers["X-Spam-Status"] == "Yes, score=4.5 required=4.0 tests=A"
    assert headers["X-Gateway-Symbols"] == "action=add_header; A(4.5)"
    below = dict(verdict_headers(TIERS.decide(result(sym("A", 3.5)))))
    assert "X-Spam-Flag" not in below
    assert below["X-Spam-Status"].startswith("No, score=3.5 required=4.0")


def test_a_forced_add_header_marks_mail_whatever_its_score():
    policy = Policy(Ruleset(add_header=4.0, force={"NEWSLETTER": "add_header"}))
    verdict = policy.decide(result(sym("NEWSLETTER", -1.0)))
    assert (verdict.action, verdict.forced_by, verdict.is_spam) == ("add_header", "NEWSLETTER",
                                                                   True)
    assert policy.decide(result(sym("NEWSLETTER"), sym("X", 7.0))).action == "add_header"
    assert SEVERITY["accept"] < SEVERITY["add_header"] < SEVERITY["quarantine"]


def test_without_an_add_header_threshold_there_is_no_such_tier():
    verdict = POLICY.decide(result(sym("A", 5.0)))
    assert (verdict.action, verdict.required) == ("accept", 6.0)
    assert verdict.reason == "score 5 < quarantine threshold 6"


def test_the_shipped_thresholds_have_a_junk_tier_below_the_quarantine():
    rules = load_rules([DEFAULT_RULES])
    assert (rules.add_header, rules.quarantine, rules.reject) == (4.0, 6.0, 15.0)
    assert rules.subject_tag == ""
    # The classifier alone: p >= 0.80 is marked, p >= 0.95 held (see the file).
    assert rules.scores["BAYES_70"] < rules.add_header <= rules.scores["BAYES_80"]
    assert rules.scores["BAYES_90"] < rules.quarantine <= rules.scores["BAYES_95"]


def test_add_header_must_not_be_above_quarantine(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[thresholds]\nadd_header = 7\nquarantine = 6\n")
    with pytest.raises(ConfigError) as caught:
        load_rules([bad])
    assert caught.value.problems == [
        f"{bad}: thresholds: add_header (7.0) must not be above quarantine (6.0); make it "
        "equal to quarantine for no add_header tier"]


def test_a_quarantine_lowered_by_a_file_without_add_header_leaves_no_add_header_tier(
        tmp_path: Path):
    # A site's rules file from before the add_header tier: mail below 3 is
    # accepted, as it was.
    old = tmp_path / "old.toml"
    old.write_text("[thresholds]\nquarantine = 3.0\n")
    rules = load_rules([DEFAULT_RULES, old])
    assert (rules.add_header, rules.quarantine) == (3.0, 3.0)
    assert Policy(rules).decide(result(sym("A", 2.9))).action == "accept"
    domain = tmp_path / "domain.toml"
    domain.write_text('[domain."example.org".thresholds]\nquarantine = 3.0\n')
    overlay = load_rules([DEFAULT_RULES, domain]).domains["example.org"]
    # The greylist band below quarantine goes the same way.
    assert overlay.thresholds == {"quarantine": 3.0, "add_header": 3.0, "greylist": 3.0}


def _subject_tagged(tag: str, raw: bytes) -> str | None:
    policy = Policy(Ruleset(add_header=4.0, subject_tag=tag))
    verdict = policy.decide(result(sym("A", 5.0)))
    assert verdict.subject_tag == tag
    return with_tagged_subject(verdict, RawContent(data=raw)).tagged_subject


def test_the_subject_tag_goes_before_the_subject_as_sent():
    raw = b"From: a@b.example\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n and more\r\n\r\nbody\r\n"
    assert _subject_tagged("[SPAM]", raw) == "[SPAM] =?utf-8?q?caf=C3=A9?=\n and more"
    assert _subject_tagged("[SPAM]", b"Subject: [SPAM] again\r\n\r\nx") is None
    assert _subject_tagged("[SPAM]", b"From: a@b.example\r\n\r\nno subject") == "[SPAM]"
    assert _subject_tagged("", b"Subject: hi\r\n\r\nx") is None
    # Not UTF-8: setting it again would lose what was sent.
    assert _subject_tagged("[SPAM]", b"Subject: caf\xe9\r\n\r\nx") is None
    accepted = Policy(Ruleset(add_header=4.0, subject_tag="[SPAM]")).decide(result(sym("A", 1.0)))
    assert accepted.subject_tag == ""


def test_score_in_force_undoes_a_force_from_a_check_or_an_earlier_file(tmp_path: Path):
    local = tmp_path / "local.toml"
    local.write_text('[force]\nBLOCKLIST_IP = "score"\nCLAMAV_ERROR = "score"\n')
    rules = load_rules([DEFAULT_RULES, local]).with_default_forces(
        {"CLAMAV_ERROR": "tempfail", "CLAMAV_VIRUS": "reject"})
    assert "BLOCKLIST_IP" not in rules.force
    assert "CLAMAV_ERROR" not in rules.force
    assert rules.force["CLAMAV_VIRUS"] == "reject"
    assert rules.force["BLOCKLIST_SENDER"] == "reject"


# -- meta rules ------------------------------------------------------------------------------


def test_meta_rules_combine_the_symbols_of_every_check(tmp_path: Path):
    local = tmp_path / "meta.toml"
    local.write_text(
        '[rule.SPAMMY_UNSIGNED]\ntype = "meta"\nexpression = "BAYES_99 && !DKIM_PASS"\n'
        'score = 2.5\ndescription = "spam band, not signed"\n'
        '[rule.TWO_OF_THREE]\ntype = "meta"\n'
        'expression = "(MISSING_DATE + MISSING_MESSAGE_ID + SPAMMY_UNSIGNED) >= 2"\n'
        'score = 1.0\nforce = "quarantine"\n')
    rules = load_rules([local])
    assert [m.name for m in rules.metas] == ["SPAMMY_UNSIGNED", "TWO_OF_THREE"]
    assert rules.defined["SPAMMY_UNSIGNED"] == "spam band, not signed"
    policy = Policy(rules)
    verdict = policy.decide(result(sym("BAYES_99", 7.5), sym("MISSING_DATE", 1.0)))
    names = [s.name for s in verdict.symbols]
    assert names == ["BAYES_99", "MISSING_DATE", "SPAMMY_UNSIGNED", "TWO_OF_THREE"]
    (meta,) = [s for s in verdict.symbols if s.name == "SPAMMY_UNSIGNED"]
    assert (meta.score, meta.evidence) == (2.5, "BAYES_99 && !DKIM_PASS")
    assert (verdict.action, verdict.forced_by) == ("quarantine", "TWO_OF_THREE")
    signed = policy.decide(result(sym("BAYES_99", 7.5), sym("DKIM_PASS", -0.5),
                                  sym("MISSING_DATE", 1.0)))
    assert [s.name for s in signed.symbols] == ["BAYES_99", "DKIM_PASS", "MISSING_DATE"]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("A &&", "the expression ends too soon"),
        ("A & B", "cannot read '& B'"),
        ("(A || B", "a '(' is not closed"),
        ("A > B", "> needs a number after it, not 'B'"),
        ("a && B", "'a': symbol names are UPPER_SNAKE_CASE"),
        ("(" * 40 + "A" + ")" * 40, "nested more than 32 levels"),
    ],
)
def test_meta_expressions_that_cannot_be_read_are_config_errors(tmp_path: Path, expression,
                                                                problem):
    rules = tmp_path / "meta.toml"
    rules.write_text(f'[rule.M]\ntype = "meta"\nexpression = "{expression}"\nscore = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_rules([rules])
    assert caught.value.problems == [f"{rules}: rule.M.expression: {problem}"]


def test_meta_rules_that_refer_to_each_other_in_a_loop_are_refused(tmp_path: Path):
    rules = tmp_path / "meta.toml"
    rules.write_text('[rule.M1]\ntype = "meta"\nexpression = "M2 || A"\nscore = 1\n'
                     '[rule.M2]\ntype = "meta"\nexpression = "M1 && B"\nscore = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_rules([rules])
    assert caught.value.problems == [
        f"{rules}: rule.M1: meta rules refer to each other in a loop: M1 -> M2 -> M1"]


# -- domains' and recipients' own policies -----------------------------------------------


def _with_recipients(*symbols: Symbol, recipients: tuple[str, ...],
                     scoped: dict | None = None) -> PipelineResult:
    facts = {"lists": {"recipients": list(recipients), "recipient_symbols": scoped or {}}}
    return PipelineResult(symbols=symbols, runs=(), facts=facts)


def _domain_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "local.toml"
    rules.write_text(
        '[domain."strict.example".thresholds]\nadd_header = 2.0\nquarantine = 3.0\n'
        '[domain."strict.example".add_header]\nsubject_tag = "[SPAM]"\n'
        '[domain."lenient.example".scores]\nA = 0.5\n'
        '[domain."lenient.example".dmarc]\nreject = "quarantine"\n')
    domains = tmp_path / "domains"
    domains.mkdir()
    (domains / "ceo@strict.example.toml").write_text(
        '[thresholds]\nquarantine = 10.0\n[force]\nVIP = "accept"\n')
    return rules


def test_each_recipient_domain_gets_its_own_thresholds(tmp_path: Path):
    rules = load_rules([DEFAULT_RULES, _domain_rules(tmp_path)])
    assert sorted(rules.domains) == ["ceo@strict.example", "lenient.example", "strict.example"]
    policy = Policy(rules)
    other = policy.decide(_with_recipients(sym("A", 3.5), recipients=("bob@other.example",)))
    assert (other.action, other.required) == ("accept", 4.0)
    assert "policy" not in other.facts
    strict = policy.decide(_with_recipients(sym("A", 3.5), recipients=("bob@STRICT.example",)))
    assert (strict.action, strict.required) == ("quarantine", 2.0)
    assert strict.reason == "score 3.5 >= quarantine threshold 3 (policy of strict.example)"
    junk = policy.decide(_with_recipients(sym("A", 2.5), recipients=("bob@strict.example",)))
    assert (junk.action, junk.subject_tag) == ("add_header", "[SPAM]")
    # A recipient's own policy over its domain's: quarantine at 10, add_header still 2.
    ceo = policy.decide(_with_recipients(sym("A", 3.5), recipients=("ceo@strict.example",)))
    assert ceo.action == "add_header"
    assert ceo.facts["policy"]["applied"] == "ceo@strict.example"


def test_several_recipients_get_the_strictest_of_their_policies(tmp_path: Path):
    policy = Policy(load_rules([DEFAULT_RULES, _domain_rules(tmp_path)]))
    verdict = policy.decide(_with_recipients(
        sym("A", 3.5), recipients=("a@other.example", "b@strict.example", "c@other.example")))
    assert verdict.action == "quarantine"
    assert verdict.reason == (
        "score 3.5 >= quarantine threshold 3; the strictest of 2 recipients' policies "
        "(a@other.example, c@other.example: accept, b@strict.example: quarantine)")
    assert verdict.facts["policy"]["recipients"] == {
        "a@other.example": {"policy": "global", "action": "accept", "score": 3.5},
        "b@strict.example": {"policy": "strict.example", "action": "quarantine", "score": 3.5},
        "c@other.example": {"policy": "global", "action": "accept", "score": 3.5},
    }


def test_a_domain_rescores_and_handles_dmarc_its_own_way(tmp_path: Path):
    rules = load_rules([DEFAULT_RULES, _domain_rules(tmp_path)])
    policy = Policy(rules.with_default_forces({"DMARC_POLICY_REJECT": "reject"}))
    lenient = policy.decide(_with_recipients(sym("A", 5.0), sym("DMARC_POLICY_REJECT"),
                                             recipients=("x@lenient.example",)))
    assert (lenient.action, lenient.forced_by) == ("quarantine", "DMARC_POLICY_REJECT")
    assert [s.score for s in lenient.symbols] == [0.5, 5.0]
    other = policy.decide(_with_recipients(sym("DMARC_POLICY_REJECT"),
                                           recipients=("x@other.example",)))
    assert other.action == "reject"


def test_recipient_scoped_symbols_count_for_that_recipient_only():
    policy = Policy(Ruleset(add_header=4.0, scores={"ALLOWLIST_SENDER": -20.0}))
    allowed = ["ALLOWLIST_SENDER", 0.0, "allowed", "matched news@shop.example"]
    verdict = policy.decide(_with_recipients(
        sym("A", 7.0), recipients=("fan@example.org", "other@example.org"),
        scoped={"fan@example.org": [allowed]}))
    assert verdict.action == "quarantine"
    alone = policy.decide(_with_recipients(sym("A", 7.0), recipients=("fan@example.org",),
                                           scoped={"fan@example.org": [allowed]}))
    assert (alone.action, alone.score) == ("accept", -13.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[domain."example.org"]\nrule = 1\n',
         "domain.example.org: rule: not for a domain's policy (it may set thresholds, "
         "add_header, scores, force, lists, dmarc)"),
        ('[domain."a..b"]\nscores = {}\n',
         "domain.a..b: 'a..b' is not a recipient domain or address: 'a..b' is not a valid "
         "domain name"),
        ('[domain."example.org".thresholds]\nquarantine = 3.0\nadd_header = 3.5\n',
         "domain.example.org: thresholds for example.org: add_header (3.5) must not be above "
         "quarantine (3.0); make it equal to quarantine for no add_header tier"),
        ('[domain."example.org".dmarc]\nreject = "drop"\n',
         "domain.example.org: dmarc.reject: expected one of reject, quarantine, add_header, "
         "score, got 'drop'"),
        ('[domain."example.org".lists]\nallow_ips = ["nope"]\n',
         "domain.example.org: lists.allow_ips: 'nope' is not an IP address or network"),
    ],
)
def test_domain_policy_problems_are_listed(tmp_path: Path, text, problem):
    local = tmp_path / "local.toml"
    local.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_rules([DEFAULT_RULES, local])
    assert caught.value.problems == [f"{local}: {problem}"]
