"""The Feedback page's "Train" button: ``gateway train`` on the corpus the
site configured for it (``[web] train_ham`` / ``train_spam``) plus the
learned set, as a background job whose progress the page shows as a bar.

Before a job starts, :func:`problem` says in one line why there is nothing
to train on (no corpus configured and fewer than 10 learned messages of a
label: ``gateway train`` needs 10 of each for its cross-validation), so the
button never starts a run that can only fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config
from gateway.web.console import Console

# gateway train's cross-validation needs this many of each label (5 folds x 2).
MIN_PER_LABEL = 10
UPDATE_SECONDS = 1.0
# What gateway train prints as it goes: a bar ("reading ham [####....] 12/40
# (5/s)", plain lines when not on a terminal) and its folds.
_BAR = re.compile(r"^(?P<label>.*?):? \[[#.]+\] (?P<done>\d+)/(?P<total>\d+)")
_FOLD = re.compile(r"^(?P<label>cross-validation fold) (?P<done>\d+)/(?P<total>\d+)")


@dataclass(frozen=True)
class Progress:
    label: str
    done: int
    total: int

    @property
    def percent(self) -> int:
        return min(100, round(100 * self.done / self.total)) if self.total else 0


def problem(config: Config, learned: dict[str, int] | None) -> str | None:
    """Why a training run cannot start now, as one line; None when it can."""
    for key in ("train_ham", "train_spam"):
        for path in getattr(config.web, key):
            if not Path(path).exists():
                return f"[web] {key}: {path} does not exist"
    if config.web.train_ham and config.web.train_spam:
        return None
    if learned is None:
        return ("the learned training set cannot be read, and no corpus is configured "
                "([web] train_ham and train_spam)")
    if learned["ham"] >= MIN_PER_LABEL and learned["spam"] >= MIN_PER_LABEL:
        return None
    return (f"nothing to train on yet: the learned set has {learned['ham']} ham and "
            f"{learned['spam']} spam ({MIN_PER_LABEL} of each at least), and no corpus is "
            "configured: set [web] train_ham and train_spam to folders of your own good "
            "mail and spam, or accept more labels")


def command(config: Config) -> list[str]:
    """The ``gateway train`` a job runs: the configured corpus and the learned set."""
    found = [sys.executable, "-m", "gateway", "train", "--feedback"]
    if config.web.train_ham and config.web.train_spam:
        found += ["--ham", *config.web.train_ham, "--spam", *config.web.train_spam]
    if Path(config.source).is_file():
        found += ["--config", config.source]
    return found


def run(console: Console, config: Config, job: int) -> None:
    """Run the job, writing its output to the job's row as it comes (at most
    once a second), so the page can show how far it is."""
    lines: list[str] = []
    try:
        process = subprocess.Popen(command(config), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        assert process.stdout is not None
        written = 0.0
        for line in process.stdout:
            lines.append(line.rstrip("\n").split("\r")[-1])
            del lines[:-2000]
            if time.monotonic() - written >= UPDATE_SECONDS:
                console.update_job(job, "\n".join(lines))
                written = time.monotonic()
        code = process.wait(timeout=6 * 3600)
        console.finish_job(job, code == 0, "\n".join(lines).strip())
    except Exception as exc:
        console.finish_job(job, False, "\n".join([*lines, f"{type(exc).__name__}: {exc}"]))


def progress(output: str) -> Progress | None:
    """How far a run is, from the last progress line of its output."""
    for line in reversed(output.splitlines()):
        found = _BAR.match(line) or _FOLD.match(line)
        if found:
            return Progress(found["label"].strip(), int(found["done"]), int(found["total"]))
    return None


def readable(output: str) -> str:
    """The output without its progress-bar lines (the page draws the bar)."""
    return "\n".join(line for line in output.splitlines() if not _BAR.match(line))


def learned_counts(config: Config) -> dict[str, int] | None:
    """Ham and spam in the learned training set; None if it cannot be read."""
    from gateway.classifier.trainingset import TrainingSet, TrainingSetError

    try:
        stored = TrainingSet(config.classifier.training_set_url(config.quarantine.url))
    except TrainingSetError:
        return None
    try:
        return stored.counts()
    finally:
        stored.close()
