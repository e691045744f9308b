"""The spam classifier: training, the artifact, evaluation, the model store."""

from __future__ import annotations

import json
import mailbox
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.checks import CheckContext
from gateway.checks.bayes import SHIPPED_MODEL, BayesCheck, decision_probability
from gateway.classifier.corpus import CorpusError, read_corpus
from gateway.classifier.model import ModelError, band, load_model
from gateway.classifier.store import ModelStore
from gateway.classifier.train import tokenize, train
from gateway.config import ClassifierSection, Config
from gateway.message import Message
from tests.conftest import FIXTURES, MESSAGES, PROJECT_ROOT

HAM = FIXTURES / "corpus" / "ham"
SPAM = FIXTURES / "corpus" / "spam"


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model trained on the fixture corpus, saved once for the module."""
    model, _ = train([HAM], [SPAM], seed=7, validation=0.25, folds=5, report=quiet,
                     show_progress=False)
    directory = tmp_path_factory.mktemp("model") / "m"
    model.save(directory)
    return directory


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=120)


# -- training ----------------------------------------------------------------------

def test_training_is_deterministic_for_a_seed(trained: Path, tmp_path: Path):
    model, figures = train([HAM], [SPAM], seed=7, validation=0.25, folds=5, report=quiet,
                           show_progress=False)
    again = load_model(trained)
    assert model.meta["version"] == again.version
    assert model.vocabulary == again.vocabulary
    assert np.array_equal(model.weights, again.weights)
    assert model.calibration == again.calibration
    assert figures == again.meta["validation"]


def test_a_different_seed_gives_a_different_split(trained: Path):
    model, _ = train([HAM], [SPAM], seed=8, validation=0.25, folds=5, report=quiet,
                     show_progress=False)
    assert model.meta["version"] != load_model(trained).version


def test_metadata_describes_the_model(trained: Path):
    meta = json.loads((trained / "model.json").read_text())
    assert meta["data"]["ham"] == 40 and meta["data"]["spam"] == 40
    assert meta["data"]["validation_ham"] == 10 and meta["data"]["validation_spam"] == 10
    assert meta["features"]["feature_version"] >= 1
    assert set(meta["validation"]) >= {"auc", "recall_at_fpr", "fpr", "confusion"}
    assert meta["thresholds"]["bands"]["BAYES_00"] == 0.01
    assert meta["version"].startswith("nb-")
    assert meta["validation"]["auc"] > 0.9  # even 60 training messages separate well


def test_save_and_load_round_trip_exactly(trained: Path, tmp_path: Path):
    model = load_model(trained)
    model.save(tmp_path / "copy")
    copy = load_model(tmp_path / "copy")
    for name in sorted(MESSAGES.iterdir()):
        message = Message.from_bytes(name.read_bytes())
        assert copy.score(message.email) == model.score(message.email)


# -- the artifact refuses what it cannot trust ------------------------------------

def test_tampered_weights_are_refused(trained: Path, tmp_path: Path):
    target = copy_model(trained, tmp_path / "m")
    with np.load(target / "model.npz") as arrays:
        parts = dict(arrays)
    parts["weights"] = parts["weights"] * 2
    np.savez_compressed(target / "model.npz", **parts)
    with pytest.raises(ModelError, match=r"model\.npz: checksum does not match model\.json"):
        load_model(target)


def test_tampered_vocabulary_is_refused(trained: Path, tmp_path: Path):
    target = copy_model(trained, tmp_path / "m")
    tokens = json.loads((target / "vocabulary.json").read_text())
    tokens[0], tokens[1] = tokens[1], tokens[0]
    (target / "vocabulary.json").write_text(json.dumps(tokens))
    with pytest.raises(ModelError, match=r"vocabulary\.json: checksum does not match"):
        load_model(target)


def test_a_pickle_is_never_loaded(trained: Path, tmp_path: Path):
    target = copy_model(trained, tmp_path / "m")
    np.savez(target / "model.npz", weights=np.array([object()], dtype=object))
    meta = json.loads((target / "model.json").read_text())
    from gateway.classifier.model import _sha256

    meta["sha256"]["model.npz"] = _sha256(target / "model.npz")
    (target / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="unreadable model files"):
        load_model(target)


def test_other_feature_version_is_refused(trained: Path, tmp_path: Path):
    target = copy_model(trained, tmp_path / "m")
    meta = json.loads((target / "model.json").read_text())
    meta["feature_version"] = 0
    (target / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"trained with feature version 0.*retrain the model"):
        load_model(target)


def test_not_a_model_folder(tmp_path: Path):
    with pytest.raises(ModelError, match=r"model\.json: not found"):
        load_model(tmp_path)


# -- robustness ----------------------------------------------------------------------

STRANGE = {
    "unknown charset": b"Subject: =?x-unknown-charset?Q?caf=E9?=\r\nContent-Type: text/plain; "
                       b"charset=x-does-not-exist\r\n\r\n\xe9t\xe9 \xff\xfe free money\r\n",
    "broken base64": b"Subject: hi\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: "
                     b"base64\r\n\r\n!!!not base64 at all===\r\nPGI+aGk8L2I+\r\n",
    "unterminated multipart": b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n"
                              b"\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhello\r\n--zz\r\n"
                              b"Content-Type: application/zip; name=\"a.zip\"\r\n\r\nPK\x03\x04",
    "binary garbage": bytes(range(256)) * 40,
    "no headers": b"just a body without any header line at all and http://198.51.100.7/x",
    "empty": b"",
    "utf-16 html": b"Subject: w\r\nContent-Type: text/html; charset=utf-16\r\n\r\n"
                   + "<p>caf\u00e9 <a href='http://ex\u00e4mple.org/'>x</a></p>".encode("utf-16"),
}


@pytest.mark.parametrize("name", sorted(STRANGE))
def test_strange_messages_score_without_error(name: str, trained: Path):
    check = BayesCheck(Config(classifier=ClassifierSection(model=str(trained))))
    try:
        report = check.run(Message.from_bytes(STRANGE[name]), CheckContext())
    finally:
        check.close()
    (symbol,) = report.symbols
    probability = report.facts["spam_probability"]
    assert 0.0 <= probability <= 1.0
    assert symbol.name == band(probability)


def test_corpus_formats_are_detected(tmp_path: Path):
    files = sorted(HAM.iterdir())[:3]
    maildir = mailbox.Maildir(tmp_path / "Maildir")
    box = mailbox.mbox(tmp_path / "inbox.mbox")
    for path in files:
        maildir.add(path.read_bytes())
        box.add(path.read_bytes())
    box.flush()
    plain = tmp_path / "eml"
    plain.mkdir()
    for path in files:
        shutil.copy(path, plain / path.name)
    for source in (tmp_path / "Maildir", tmp_path / "inbox.mbox", plain):
        samples = list(read_corpus([source]))
        assert len(samples) == 3, source
        assert {tokenize(s.raw) for s in samples} == {tokenize(p.read_bytes()) for p in files}
    with pytest.raises(CorpusError, match="nope: no such file or directory"):
        list(read_corpus([tmp_path / "nope"]))


def test_decision_probability_follows_the_rules():
    scores = {"BAYES_60": 4.5, "BAYES_70": 6.0, "BAYES_80": 6.5}
    assert decision_probability(scores, 6.0) == 0.7
    assert decision_probability(scores, 4.0) == 0.6
    assert decision_probability(scores, 10.0) == 1.0


# -- evaluate and the model store through the CLI ---------------------------------

def test_evaluate_json_has_the_promised_fields(trained: Path, tmp_path: Path):
    roc = tmp_path / "roc.png"
    result = gateway("evaluate", "--model", str(trained), "--ham", str(HAM), "--spam",
                     str(SPAM), "--json", "--roc", str(roc))
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert set(figures) >= {"auc", "accuracy", "precision", "recall", "f1", "fpr",
                            "recall_at_fpr", "n_ham", "n_spam"}
    assert set(figures["recall_at_fpr"]) >= {"0.001", "0.005"}
    assert (figures["n_ham"], figures["n_spam"]) == (40, 40)
    assert roc.read_bytes().startswith(b"\x89PNG")


def store_config(tmp_path: Path, store: Path) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[classifier]\nstore = "{store}"\n')
    return config


def test_train_into_the_store_then_promote_and_roll_back(tmp_path: Path):
    config = store_config(tmp_path, tmp_path / "store")
    result = gateway("train", "--config", str(config), "--ham", str(HAM), "--spam", str(SPAM),
                     "--json")
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout)["version"]
    store = ModelStore(tmp_path / "store")
    assert [v.version for v in store.list()] == [first]
    assert store.current_version() is None  # a candidate until promoted

    result = gateway("model", "promote", first, "--config", str(config))
    assert result.returncode == 2
    assert "give a held-out set" in result.stderr

    # Sixty training messages make a worse model than the shipped one in use.
    result = gateway("model", "promote", first, "--config", str(config), "--ham", str(HAM),
                     "--spam", str(SPAM))
    assert result.returncode == 2
    shipped = load_model(SHIPPED_MODEL).version
    assert f"refused, {first} holds more good mail than {shipped}" in result.stderr
    assert store.current_version() is None

    assert gateway("model", "promote", first, "--config", str(config), "--force").returncode == 0
    assert store.current_version() == first

    # The shipped model holds less good mail than the small one: promotion passes.
    result = gateway("model", "promote", str(SHIPPED_MODEL), "--config", str(config), "--ham",
                     str(HAM), "--spam", str(SPAM))
    assert result.returncode == 0, result.stderr
    assert store.current_version() == shipped
    history = store.history()
    assert [e["action"] for e in history] == ["promote", "promote"]
    assert history[0]["forced"] is True
    assert history[1]["forced"] is False and history[1]["previous"] == first
    evaluation = history[1]["evaluation"]
    assert evaluation["candidate"]["fpr"] <= evaluation["current"]["fpr"]

    result = gateway("model", "rollback", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert store.current_version() == first
    listing = json.loads(gateway("model", "list", "--config", str(config), "--json").stdout)
    assert {v["version"]: v["current"] for v in listing["versions"]} == {first: True,
                                                                         shipped: False}
    result = gateway("model", "rollback", "--config", str(config))
    assert result.returncode == 2
    assert "no earlier promoted version" in result.stderr


def test_promotion_refuses_a_model_that_holds_more_good_mail(trained: Path, tmp_path: Path):
    store_dir = tmp_path / "store"
    config = store_config(tmp_path, store_dir)
    store = ModelStore(store_dir)
    good = store.add(trained)
    store.set_current(good, "promote", {})
    # A model trained with the labels swapped calls good mail spam.
    inverted, _ = train([SPAM], [HAM], seed=7, folds=5, report=quiet, show_progress=False)
    inverted.save(tmp_path / "inverted")
    result = gateway("model", "promote", str(tmp_path / "inverted"), "--config", str(config),
                     "--ham", str(HAM), "--spam", str(SPAM))
    assert result.returncode == 2
    assert f"refused, {inverted.version} holds more good mail than {good}" in result.stderr
    assert store.current_version() == good
    forced = gateway("model", "promote", inverted.version, "--config", str(config), "--ham",
                     str(HAM), "--spam", str(SPAM), "--force")
    assert forced.returncode == 0, forced.stderr
    assert store.current_version() == inverted.version


def test_check_uses_the_store_and_reloads_a_promotion(trained: Path, tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    first = store.add(trained)
    store.set_current(first, "promote", {})
    check = BayesCheck(Config(classifier=ClassifierSection(store=str(tmp_path / "store"),
                                                           reload_interval=3600)))
    try:
        assert check.holder.model.version == first
        inverted, _ = train([SPAM], [HAM], seed=7, folds=5, report=quiet, show_progress=False)
        inverted.save(tmp_path / "inverted")
        store.set_current(store.add(tmp_path / "inverted"), "promote", {})
        assert check.holder.check_for_update()
        assert check.holder.model.version == inverted.version
        # A corrupt promotion is refused; the working model keeps serving.
        broken = copy_model(trained, tmp_path / "broken")
        (broken / "vocabulary.json").write_text("[]")
        shutil.copytree(broken, tmp_path / "store" / "versions" / "broken")
        store.set_current("broken", "promote", {})
        assert not check.holder.check_for_update()
        assert check.holder.model.version == inverted.version
    finally:
        check.close()
