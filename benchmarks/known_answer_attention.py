"""The tiny known-answer case of the tests, run longer and printed: does an attention model find
the position that decides the label, and does it beat itself with the attention replaced by mean
pooling?

    python benchmarks/known_answer_attention.py [--model camn] [--epochs 60] [--every 10]

Each example's target item is one of its click history's items and its label is whether that
click was recent (``tests/model_harness.repeat_recency_batch``: 2,048 training and 1,024 held-out
examples, histories of 4-8 clicks). Mean pooling mixes every position's gap and cannot tell; an
attention that matches the target to its position reads that position's gap. Prints, every
``--every`` epochs, the held-out AUC and the model's diagnostics (entropy 1.0 = uniform) for the
model as it is (``attention: dot``) and with ``attention: mean``, and saves them to
``benchmarks/results/known_answer_attention.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests import model_harness as h  # noqa: E402

MODELS_WITH_A_MEAN_ABLATION = {"camn": {"diversity_loss": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="camn", choices=sorted(MODELS_WITH_A_MEAN_ABLATION))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "known_answer_attention.json"))
    args = parser.parse_args()
    train, test = h.repeat_recency_batch(2048, seed=0), h.repeat_recency_batch(1024, seed=1)
    rows = []
    for attention in ("dot", "mean"):
        model = h.build(args.model, {"attention": attention, **MODELS_WITH_A_MEAN_ABLATION[args.model]})
        for epoch in range(args.every, args.epochs + 1, args.every):
            h.train_on(model, *train, epochs=args.every, learning_rate=args.learning_rate)
            row = {"model": args.model, "attention": attention, "epoch": epoch,
                   "held_out_auc": h.held_out_auc(model, *test), **h.diagnostics(model, *test)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump({"command": "python benchmarks/known_answer_attention.py " + " ".join(sys.argv[1:]), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
