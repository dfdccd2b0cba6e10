"""Do rarely rated movies get sensible neighbours? With and without side information.

    python benchmarks/rare_movies.py --split ../shared/eval/ml-latest-small

Trains cbow without side information on the split's training folder with every rated movie kept
(min_count 1), the same with side information (genres and decade), and side information with
every catalogued movie kept (min_count 0: unrated movies too). For movies with fewer than 5
ratings, and for movies with none, prints the genre agreement of their 10 nearest neighbours
(share of neighbours sharing a genre with the movie; a random pair of movies agrees 44% of the
time here), and each model's NDCG@10 on the split's test file.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from movierec.ids import Key
from server.app import load_recommender
from server.recommender import Recommender
from trainer.config import TrainConfig
from trainer.evaluate import evaluate
from trainer.movielens import load, read_ratings
from trainer.pipeline import run_training


def agreement(rec: Recommender, movie_ids: Sequence[Key]) -> float:
    shares = []
    for movie_id in movie_ids:
        movie, _ = rec.movie(movie_id)
        neighbours = rec.similar(movie_id, 10).items
        shares.append(np.mean([bool(set(movie.genres) & set(s.movie.genres)) for s in neighbours]))
    return float(np.mean(shares))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", type=Path, required=True)
    args = p.parse_args()
    data = load(args.split / "train")
    counts = data.ratings["movie_id"].value_counts()
    rare = sorted(int(i) for i in counts.index[counts < 5])
    unrated = sorted({m.movie_id for m in data.movies} - set(counts.index.tolist()))
    test = read_ratings(args.split / "test.csv")
    variants = {
        "cbow, no side info, min_count 1": TrainConfig(min_count=1, side_info=False),
        "cbow + side info, min_count 1": TrainConfig(min_count=1),
        "cbow + side info, min_count 0": TrainConfig(min_count=0),
    }
    print(f"{len(rare)} movies with 1-4 ratings, {len(unrated)} catalogued but unrated")
    print(f"{'model':34} {'rare in index':>13} {'rare agree':>10} {'unrated agree':>13} "
          f"{'ndcg@10':>8} {'train s':>8}")  # fmt: skip
    for name, config in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            manifest = run_training(Path(tmp) / "a", config, data=args.split / "train",
                                    show_progress=False)  # fmt: skip
            rec = load_recommender(Path(tmp) / "a")
        assert manifest is not None  # one process: it wrote the artifact
        known = set(rec.artifacts.movie_ids.tolist())
        indexed = [m for m in rare if m in known]
        cold = [m for m in unrated if m in known]
        ndcg = evaluate(rec, test)["model"].ndcg_10
        print(f"{name:34} {len(indexed):>13} {agreement(rec, indexed):>10.3f} "
              f"{agreement(rec, cold) if cold else float('nan'):>13.3f} {ndcg:>8.4f} "
              f"{manifest['settings']['train_seconds']:>8.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
