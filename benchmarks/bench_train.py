"""Training throughput: movierec's sgns against gensim Word2Vec on the same corpus, same run.

    pip install gensim   # a benchmark-only dependency
    python benchmarks/bench_train.py --data ../shared/data/ml-latest-small
    python benchmarks/bench_train.py --generated 10000   # + a generated ~1M-rating dataset

The corpus is each user's liked movies (rating >= 3.5) in time order. movierec sgns draws
10 partners per liked movie per epoch; gensim skip-gram with window 9 trains on average
10 (context, word) pairs per token (its windows shrink at random), so both see about the same
number of pairs: dim 64, 10 negatives, 5 epochs, no subsampling, 2 workers/threads. Also
times the default model (cbow) on the same data, and with ``--generated USERS`` end to end
(load, train, export) on a dataset the built-in generator makes: USERS users, 4,000 movies,
~100 ratings each, with the process's peak memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from trainer.config import TrainConfig
from trainer.corpus import build_corpus
from trainer.movielens import load
from trainer.pipeline import run_training
from trainer.sample import make_sample
from trainer.train import train

DIM, EPOCHS, NEGATIVES, PARTNERS = 64, 5, 10, 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--generated", type=int, default=0, help="users of a generated dataset")
    args = p.parse_args()
    from gensim.models import Word2Vec

    corpus = build_corpus(load(args.data), like_threshold=3.5, min_count=1)
    b = corpus.baskets
    sentences = [[str(i) for i in b.items[b.indptr[u] : b.indptr[u + 1]]]
                 for u in range(len(b.lengths))]  # fmt: skip
    tokens = len(b.items)
    pairs = tokens * PARTNERS * EPOCHS
    print(f"{len(sentences)} users, {tokens} liked ratings, {len(corpus.movies)} movies; "
          f"~{pairs / 1e6:.1f}M pairs per run, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'trainer':44} {'seconds':>8} {'pairs/s':>10}")

    config = TrainConfig(objective="sgns", dim=DIM, epochs=EPOCHS, negatives=NEGATIVES,
                         partners=PARTNERS, min_count=1, lr=0.02)  # fmt: skip
    ours = train(corpus, config, show_progress=False).seconds
    print(f"{'movierec sgns (torch, Adam)':44} {ours:>8.1f} {pairs / ours:>10.0f}")

    start = time.perf_counter()
    Word2Vec(sentences, vector_size=DIM, sg=1, negative=NEGATIVES, window=PARTNERS - 1,
             min_count=1, sample=0, workers=2, epochs=EPOCHS, seed=0)  # fmt: skip
    theirs = time.perf_counter() - start
    print(f"{'gensim Word2Vec skip-gram (C, 2 workers)':44} {theirs:>8.1f} {pairs / theirs:>10.0f}")
    print(f"movierec / gensim throughput: {theirs / ours:.2f}")

    default = train(build_corpus(load(args.data), 3.5, 3), TrainConfig(), False).seconds
    print(f"{'movierec default (cbow + side info, 30 epochs)':44} {default:>8.1f}")
    if args.generated:
        sample = make_sample(seed=1, num_movies=4000, num_users=args.generated, mean_ratings=100)
        with tempfile.TemporaryDirectory() as tmp:
            data = sample.write(Path(tmp) / "data")
            start = time.perf_counter()
            manifest = run_training(Path(tmp) / "a", TrainConfig(), data=data,
                                    show_progress=False)  # fmt: skip
            wall = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"generated: {len(sample.ratings):,} ratings, {args.generated:,} users, "
            f"{manifest['counts']['movies']:,} movies: default model end to end {wall:.1f}s "
            f"(training {manifest['settings']['train_seconds']:.1f}s), peak RSS {peak:.0f} MiB"
        )


if __name__ == "__main__":
    main()
