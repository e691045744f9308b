"""The classifier's vocabulary held as hashes (gateway.classifier.vocabulary)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.checks.bayes import SHIPPED_MODEL
from gateway.classifier.model import ModelError, SpamModel, load_model
from gateway.classifier.vocabulary import Vocabulary
from tests.helpers import PROJECT_ROOT

# Tokens as mail gives them: empty, accents, astral characters, a message's
# undecodable bytes as surrogates (email's surrogateescape), NUL, long ones.
ODD_TOKENS = ["", "a", "A", "é", "e\u0301", "\U0001f600", "caf\udce9", "\udcff", "x\x00y",
              "url:host:example.com", "subject:winner", "w" * 300, "\uff21\uff22", "\u0661\u0662"]


def test_a_lookup_finds_what_a_dict_finds_and_nothing_else():
    rng = random.Random(5)
    alphabet = "ab\u00e9\udce9\U0001f600:\x00"
    tokens = list(dict.fromkeys(ODD_TOKENS + ["".join(rng.choice(alphabet)
                                                      for _ in range(rng.randint(1, 8)))
                                              for _ in range(3000)]))
    rng.shuffle(tokens)
    known = {t: i for i, t in enumerate(tokens)}
    vocabulary = Vocabulary(tokens)
    asked = tokens[::3] + [t + "!" for t in tokens[::7]] + ["b\udce9", "\ud800"] + tokens[:5]
    assert vocabulary.indices(asked).tolist() == [known.get(t, -1) for t in asked]
    assert vocabulary.indices([]).tolist() == []
    assert list(vocabulary) == tokens and len(vocabulary) == len(tokens)
    assert vocabulary == known and dict(vocabulary) == known
    assert vocabulary["caf\udce9"] == known["caf\udce9"] and "nope" not in vocabulary
    assert vocabulary.get(7) is None  # not a token, not a TypeError
    empty = Vocabulary([])
    assert empty.indices(["a"]).tolist() == [-1] and list(empty) == []


def test_a_dict_vocabulary_becomes_a_vocabulary_and_scores_the_same():
    """A trainer hands the model a dict; the model holds it as hashes."""
    tokens = {t: i for i, t in enumerate(ODD_TOKENS)}
    weights = np.linspace(-1, 1, len(tokens)).astype(np.float32)
    model = SpamModel(weights, np.ones(len(tokens), dtype=np.float32), tokens, 0.5,
                      (1.0, 0.0), {})
    assert isinstance(model.vocabulary, Vocabulary) and model.vocabulary == tokens
    asked = ["\udcff", "unknown", "x\x00y", "\udcff"]
    log_odds, known, parts = model.contributions(asked)
    assert known == ["\udcff", "x\x00y", "\udcff"]
    assert log_odds == model.log_odds(asked) == pytest.approx(0.5 + parts.sum())
    assert {t for t, _ in model.explain(asked).spam + model.explain(asked).ham} <= set(asked)
    with pytest.raises(ValueError, match=r"0 \.\. n-1"):
        Vocabulary.of({"a": 0, "b": 2})


def test_a_vocabulary_with_a_token_twice_is_one_clear_line(tmp_path: Path):
    target = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, target)
    path = target / "vocabulary.json"
    tokens = json.loads(path.read_text())
    tokens[1] = tokens[0]
    path.write_text(json.dumps(tokens))
    meta = json.loads((target / "model.json").read_text())
    meta["sha256"]["vocabulary.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (target / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"vocabulary\.json: a token appears twice"):
        load_model(target)


# Run in a process of its own, as the fork server is: a test process's heap,
# fragmented by the tests before, would have the worker's own new objects
# land on its free spaces and copy those pages too.
_FORK_AND_LOOK_UP = """
import gc, json, os, sys
from gateway.checks.bayes import SHIPPED_MODEL
from gateway.classifier.model import load_model

def private_dirty_kb():
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise SystemExit("no Private_Dirty in /proc/self/smaps_rollup")

model = load_model(SHIPPED_MODEL)
gc.collect()
gc.freeze()  # as gateway.forkshare does before it forks
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the worker
    try:
        tokens = json.loads((SHIPPED_MODEL / "vocabulary.json").read_text())
        messages = [tokens[i:i + 500] for i in range(0, len(tokens), 500)]
        model.explain(messages[0])
        before = private_dirty_kb()
        for message in messages:
            model.explain(message)
        os.write(write, str(private_dirty_kb() - before).encode())
    finally:
        os._exit(0)
os.close(write)
with os.fdopen(read) as answer:
    print(answer.read())
os.waitpid(pid, 0)
"""


def test_a_forked_worker_reads_the_whole_vocabulary_without_copying_it():
    """The fork server's model is the workers' page for page until one
    writes to a page. A worker that looks up every token of the shipped
    vocabulary (a message at a time) copies next to none of it: a dict's
    look-ups wrote to the reference count of every value they returned,
    and so copied some 8 MB into each worker."""
    done = subprocess.run([sys.executable, "-c", _FORK_AND_LOOK_UP], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    copied_kb = int(done.stdout.strip() or "-1")
    assert 0 <= copied_kb < 1024, f"{copied_kb} kB of the fork server's pages copied"
