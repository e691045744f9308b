"""The model store in the database ([classifier] store = a URL): versions,
the current pointer, history, the checksum check, the local cache and the
last good model when the database does not answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from gateway.checks.bayes import SHIPPED_MODEL, BayesCheck, model_location
from gateway.classifier.model import load_model
from gateway.classifier.store import (
    DatabaseModelStore,
    DirectoryModelStore,
    ModelStore,
    StoreError,
    pack,
)
from gateway.config import ClassifierSection, Config, parse_config
from gateway.quarantine.schema import model_versions
from tests.helpers import PROJECT_ROOT


def variant(tmp_path: Path, name: str) -> Path:
    """The shipped model under another version name: it loads, and the store
    tells it apart (its artifact differs by its model.json)."""
    target = tmp_path / name
    shutil.copytree(SHIPPED_MODEL, target)
    meta = json.loads((target / "model.json").read_text())
    meta["version"] = name
    (target / "model.json").write_text(json.dumps(meta))
    return target


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("GATEWAY_MODEL_CACHE", str(path))
    return path


def gateway(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=120,
                          env={**os.environ, "GATEWAY_MODEL_CACHE": str(cache)})


def test_a_url_makes_a_database_store_and_a_path_a_directory(tmp_path: Path, cache: Path):
    assert isinstance(ModelStore(f"sqlite:///{tmp_path}/m.db"), DatabaseModelStore)
    assert isinstance(ModelStore(tmp_path / "models"), DirectoryModelStore)
    config = parse_config('[classifier]\nstore = "sqlite:////var/lib/gateway/m.db"\n',
                          "t.toml", base_dir=tmp_path)
    assert config.classifier.store == "sqlite:////var/lib/gateway/m.db"  # not a path


@pytest.mark.slow
def test_versions_pointer_history_and_rollback_in_the_database(tmp_path: Path, cache: Path):
    url = f"sqlite:///{tmp_path}/models.db"
    store = ModelStore(url)
    assert store.current_path() is None  # nothing promoted: the shipped model
    first = store.add(variant(tmp_path, "nb-first"))
    second = store.add(variant(tmp_path, "nb-second"))
    assert store.add(variant(tmp_path / "again", "nb-first")) == first  # stored once
    store.set_current(first, "promote", {"forced": True})
    store.set_current(second, "promote", {"previous": first})
    path = store.current_path()
    assert path is not None and path.parent.parent == cache
    assert load_model(path).version == "nb-second"
    assert [(v.version, v.current) for v in store.versions()] == [("nb-first", False),
                                                              ("nb-second", True)]
    assert store.versions()[0].meta["version"] == "nb-first"  # the card, without the bytes
    assert [(e["action"], e["version"]) for e in store.history()] == [
        ("promote", "nb-first"), ("promote", "nb-second")]
    assert store.history()[1]["previous"] == "nb-first"
    assert store.previous_version() == "nb-first"
    store.set_current(store.previous_version(), "rollback", {})
    assert load_model(ModelStore(url).current_path()).version == "nb-first"
    store.clear_current("rollback", {})
    assert store.current_path() is None
    assert store.history()[-1]["version"] == "shipped"
    with pytest.raises(StoreError, match="no model version 'nb-none'"):
        store.set_current("nb-none", "promote", {})


def test_an_artifact_that_fails_its_checksum_is_refused(tmp_path: Path, cache: Path, caplog):
    url = f"sqlite:///{tmp_path}/models.db"
    store = ModelStore(url)
    store.set_current(store.add(variant(tmp_path, "nb-good")), "promote", {})
    good = store.current_path()
    bad = store.add(variant(tmp_path, "nb-bad"))
    store.set_current(bad, "promote", {})
    # Someone changes the stored bytes after the promotion: the pointer's
    # checksum no longer matches, and no node uses them.
    original = pack(variant(tmp_path / "other", "nb-bad"))
    middle = len(original) // 2
    tampered = original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1:]
    with store.engine.begin() as connection:
        connection.execute(update(model_versions).where(model_versions.c.version == bad)
                           .values(artifact=tampered))
    assert store.current_path() == good
    assert "does not match the promoted" in caplog.text
    assert not (cache / "nb-bad").exists()


@pytest.mark.slow
def test_the_bayes_check_loads_and_reloads_from_a_database_store(tmp_path: Path,
                                                                cache: Path):
    url = f"sqlite:///{tmp_path}/models.db"
    store = ModelStore(url)
    store.set_current(store.add(variant(tmp_path, "nb-one")), "promote", {})
    check = BayesCheck.from_config(Config(classifier=ClassifierSection(store=url,
                                                                       reload_interval=3600)))
    try:
        assert check.holder.model.version == "nb-one"
        store.set_current(store.add(variant(tmp_path, "nb-two")), "promote", {})
        assert check.holder.check_for_update()
        assert check.holder.model.version == "nb-two"
        store.clear_current("rollback", {})
        assert check.holder.check_for_update()
        assert check.holder.model.version == load_model(SHIPPED_MODEL).version
    finally:
        check.close()


@pytest.mark.slow
def test_model_commands_work_on_a_database_store(tmp_path: Path, cache: Path):
    url = f"sqlite:///{tmp_path}/models.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[classifier]\nstore = "{url}"\n'
                      f'[quarantine]\nurl = "sqlite:///{tmp_path}/q.db"\n')
    promoted = gateway("model", "promote", str(variant(tmp_path, "nb-cli")), "--force",
                       "--config", str(config), cache=cache)
    assert promoted.returncode == 0, promoted.stderr
    listing = json.loads(gateway("model", "list", "--json", "--config", str(config),
                                 cache=cache).stdout)
    assert [(v["version"], v["current"]) for v in listing["versions"]] == [("nb-cli", True)]
    rolled = gateway("model", "rollback", "--config", str(config), cache=cache)
    assert rolled.returncode == 0, rolled.stderr
    assert "the shipped model is current again (was nb-cli)" in rolled.stdout
    assert ModelStore(url).current_version() is None


def test_without_the_database_a_node_keeps_its_last_good_model(postgres, tmp_path: Path,
                                                               cache: Path):
    store = ModelStore(postgres.url)
    store.set_current(store.add(variant(tmp_path, "nb-kept")), "promote", {})
    config = Config(classifier=ClassifierSection(store=postgres.url))
    kept = model_location(config)
    assert load_model(kept).version == "nb-kept"
    postgres.stop()
    try:
        assert model_location(config) == kept
        assert not store.health.ok and "model store" in store.health.problem
        # A restarted node (a new process: nothing in memory) starts on it too.
        code = ("from gateway.checks.bayes import model_location\n"
                "from gateway.config import Config, ClassifierSection\n"
                f"print(model_location(Config(classifier=ClassifierSection(store="
                f"{postgres.url!r}))))\n")
        restarted = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, cwd=PROJECT_ROOT, timeout=60,
                                   env={**os.environ, "GATEWAY_MODEL_CACHE": str(cache)})
        assert restarted.stdout.strip() == str(kept), restarted.stderr
        # ... and gateway doctor says so
        from gateway.commands.doctor import model_lines

        (line,) = model_lines(config)
        assert line.status == "fail"
        assert "this node serves on its last good model, nb-kept" in line.text
    finally:
        postgres.start()
    store.health.last_failure = 0.0  # no need to wait out the retry pause
    store.set_current(store.add(variant(tmp_path, "nb-after")), "promote", {})
    assert load_model(model_location(config)).version == "nb-after"
    assert store.health.ok


@pytest.mark.slow
def test_a_folder_store_moves_into_the_database(tmp_path: Path, cache: Path):
    folder = DirectoryModelStore(tmp_path / "models")
    first = folder.add(variant(tmp_path, "nb-old-one"))
    folder.set_current(folder.add(variant(tmp_path, "nb-old-two")), "promote", {})
    url = f"sqlite:///{tmp_path}/models.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[classifier]\nstore = "{url}"\n')
    imported = gateway("model", "import", str(tmp_path / "models"), "--config", str(config),
                       cache=cache)
    assert imported.returncode == 0, imported.stderr
    assert "2 versions imported" in imported.stdout
    store = ModelStore(url)
    assert sorted(v.version for v in store.versions()) == [first, "nb-old-two"]
    assert load_model(store.current_path()).version == "nb-old-two"
    assert [(e["action"], e["from"]) for e in store.history()] == [
        ("import", str(tmp_path / "models"))]


@pytest.mark.slow
def test_the_cache_keeps_the_newest_models_and_the_one_in_use(tmp_path: Path, cache: Path):
    url = f"sqlite:///{tmp_path}/models.db"
    store = ModelStore(url)
    paths = []
    for number in range(7):
        store.set_current(store.add(variant(tmp_path, f"nb-{number}")), "promote", {})
        paths.append(store.current_path())
    assert [p.exists() for p in paths] == [False, False] + [True] * 5, paths
    assert store.last_good() == paths[-1]


@pytest.mark.slow
def test_train_writes_its_candidate_into_a_database_store(tmp_path: Path, cache: Path):
    from tests.helpers import FIXTURES

    url = f"sqlite:///{tmp_path}/models.db"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[classifier]\nstore = "{url}"\n')
    trained = gateway("train", "--config", str(config), "--ham", str(FIXTURES / "corpus/ham"),
                      "--spam", str(FIXTURES / "corpus/spam"), "--repeats", "0", "--json",
                      cache=cache)
    assert trained.returncode == 0, trained.stderr
    report = json.loads(trained.stdout)
    assert report["path"].startswith(f"{url} (candidate")
    store = ModelStore(url)
    assert [v.version for v in store.versions()] == [report["version"]]
    assert store.current_version() is None  # a candidate until promoted


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_what_root_caches_belongs_to_the_gateway_user(tmp_path: Path):
    """An admin's `sudo gateway model promote` fetches into the node's cache:
    the gateway user's workers must still write there afterwards."""
    root = tmp_path / "model-cache"
    root.mkdir()
    os.chown(root, 65534, 65534)  # the gateway's user, here nobody
    url = f"sqlite:///{tmp_path}/models.db"
    store = DatabaseModelStore(url, cache=root / "key")
    store.set_current(store.add(variant(tmp_path, "nb-owned")), "promote", {})
    path = store.current_path()
    for item in (root / "key", path, path / "model.json", root / "key" / "current"):
        assert os.lstat(item).st_uid == 65534, item


@pytest.mark.parametrize("value", ["postgres:/db.example.org/gateway", "mysql://db/gateway",
                                   "sqlite://models.db", ""])
def test_a_store_that_is_neither_a_folder_nor_a_database_url_is_refused(value: str):
    from gateway.schema import ConfigError

    with pytest.raises(ConfigError) as refused:
        parse_config(f'[classifier]\nstore = "{value}"\n', "t.toml")
    assert refused.value.problems == ["t.toml: classifier.store: expected a folder, "
                                      "sqlite:////path/to/file.db or postgresql://user@host/db"]
