"""Lever-by-lever ablation of the default model on validation splits carved from a training
folder (EVALUATION.md's holdout, different seeds), never on the test file.

    python benchmarks/ablation.py --train ../shared/eval/ml-latest-small/train \\
        --set objective=sgns --set rating_weight=0 ...

Each --set is one variant (comma-separate several overrides in one variant); the default
model is always measured first. Prints NDCG@10, Recall@20, Coverage@10 and train seconds
averaged over the splits.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.movielens import MovieLens, load
from trainer.pipeline import holdout_scores
from trainer.split import holdout_split


def parse(text: str) -> dict[str, object]:
    types = {f.name: type(f.default) for f in dataclasses.fields(TrainConfig)}
    out: dict[str, object] = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        out[key] = (
            value.lower() in ("1", "true", "yes") if types[key] is bool else types[key](value)
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--set", action="append", default=[], dest="variants")
    p.add_argument("--splits", type=int, default=2)
    args = p.parse_args()
    data = load(args.train)
    splits = [holdout_split(data.ratings, seed=100 + s) for s in range(args.splits)]
    print(f"{'variant':48} {'ndcg@10':>8} {'recall@20':>9} {'cov@10':>7} {'train s':>8}")
    for variant in ["", *args.variants]:
        config = TrainConfig(**parse(variant))  # type: ignore[arg-type]
        rows = []
        for fit, held in splits:  # trained as `movierec train` would (auto settings included)
            s, seconds = holdout_scores(MovieLens(fit, data.movies, data.layout), held, config)
            rows.append((s.ndcg_10, s.recall_20, s.coverage_10, seconds))
        m = np.mean(rows, axis=0)
        print(f"{variant or 'default':48} {m[0]:8.4f} {m[1]:9.4f} {m[2]:7.4f} {m[3]:8.1f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
