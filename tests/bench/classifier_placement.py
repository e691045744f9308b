"""Give the shipped model the ham scores its bands are placed on, without
retraining it.

    .venv/bin/python tests/bench/classifier_placement.py            # check only
    .venv/bin/python tests/bench/classifier_placement.py --write    # models/default/model.json

``gateway train`` now keeps the top of the out-of-fold scores of its
training ham in model.json (``thresholds.training_ham``, see
gateway/classifier/thresholds.py). The shipped model was trained before;
its out-of-fold scores are the same computation again: the training set of
tests/bench/classifier.py (the corpus, seed 42, 20% held back), the same
4-fold split of it, the model's own hyperparameters. The calibration fitted
on them must equal the shipped one (it is fitted on exactly those scores),
which this script checks before writing anything; the weights, and so the
version and the checksums, do not change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))

from gateway.classifier.model import META_FILE, load_model  # noqa: E402
from gateway.classifier.thresholds import HamScores  # noqa: E402
from gateway.classifier.train import (  # noqa: E402
    Settings,
    TokenMatrix,
    choose_settings,
    fit_calibration,
)
from tests.bench.classifier import SEED, corpus  # noqa: E402

MODEL = PROJECT_ROOT / "models" / "default"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--write", action="store_true", help="write them into model.json")
    args = parser.parse_args()
    model = load_model(args.model)
    data, training, _ = corpus()
    matrix = TokenMatrix([data.tokens[i] for i in training])
    labels, groups = data.labels[training], data.groups[training]
    settings = Settings(**model.meta["settings"])
    _, oof, _ = choose_settings(matrix.matrix, labels, [settings], 4, SEED, groups=groups,
                                blocks=matrix.blocks)
    calibration = fit_calibration(oof, labels)
    if not np.allclose(calibration, model.calibration, rtol=1e-6, atol=1e-9):
        raise SystemExit(f"placement: the calibration of these scores {calibration} is not "
                         f"the model's {model.calibration}: not its training set")
    ham = HamScores.of(oof[labels == 0], "out-of-fold training ham")
    print(f"{model.version}: {ham.n} out-of-fold ham; at 0.1% the anchor is log-odds "
          f"{ham.anchor(0.001):.2f} ({ham.allowed(0.001)} above), at 0.25% "
          f"{ham.anchor(0.0025):.2f}; calibration reproduced {calibration}")
    if args.write:
        path = args.model / META_FILE
        meta = json.loads(path.read_text())
        meta.setdefault("thresholds", {})["training_ham"] = ham.to_json()
        meta.setdefault("learned_out_of_fold", {})
        path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if load_model(args.model).version != model.version:
            raise SystemExit("placement: the version changed: that must not happen")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
