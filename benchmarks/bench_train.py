"""Training throughput: movierec's sgns against gensim Word2Vec on the same corpus, same run.

    pip install gensim   # a benchmark-only dependency
    python benchmarks/bench_train.py --data ../shared/data/ml-latest-small
    python benchmarks/bench_train.py --data ... --generated 1m --generated 25m --epochs 10

The corpus is each user's liked movies (rating >= 3.5) in time order. movierec sgns draws
10 partners per liked movie per epoch; gensim skip-gram with window 9 trains on average
10 (context, word) pairs per token (its windows shrink at random), so both see about the same
number of pairs: dim 64, 10 negatives, 5 epochs, no subsampling, 2 workers/threads. Also
times the default model (cbow) on the same data, and with ``--generated`` ``movierec train``
end to end (load, train, export; default settings but ``--epochs``) on a dataset the built-in
generator makes, with that process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.config import TrainConfig
from trainer.corpus import build_corpus
from trainer.movielens import load
from trainer.sample import make_sample
from trainer.train import train

DIM, EPOCHS, NEGATIVES, PARTNERS = 64, 5, 10, 10
# (users, movies, mean ratings per user): ~1M ratings, and ~25M (ml-25m's shape)
GENERATED = {"1m": (10_000, 4_000, 100), "25m": (165_000, 62_000, 160)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--generated", choices=GENERATED, action="append", default=[])
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="for --generated")
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
    for size in args.generated:
        _train_generated(size, args.epochs)


def _train_generated(size: str, epochs: int) -> None:
    users, movies, mean = GENERATED[size]
    start = time.perf_counter()
    sample = make_sample(seed=1, num_movies=movies, num_users=users, mean_ratings=mean)
    with tempfile.TemporaryDirectory() as tmp:
        data = sample.write(Path(tmp) / "data")
        made = time.perf_counter() - start
        command = [sys.executable, "-m", "movierec", "train", "--data", str(data),
                   "--out", f"{tmp}/a", "--epochs", str(epochs), "--quiet"]  # fmt: skip
        start = time.perf_counter()
        child = subprocess.Popen(command)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f"{' '.join(command)} failed ({status})")
        manifest = json.loads((Path(tmp) / "a" / "manifest.json").read_text())
    trained = manifest["settings"]["train_seconds"]
    print(
        f"generated {size}: {len(sample.ratings):,} ratings, {users:,} users, "
        f"{manifest['counts']['movies']:,} movies (made in {made:.0f}s): movierec train "
        f"--epochs {epochs} end to end {wall:.1f}s (training {trained:.1f}s), "
        f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
