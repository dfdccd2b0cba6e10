"""Training: every objective learns the sample's genre structure; same seed, same model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from movierec.artifacts import read_artifacts
from server.queries import History, query_for
from server.recommender import Recommender, Request
from trainer import distributed
from trainer.batches import SoftmaxSampler, objective
from trainer.config import TrainConfig
from trainer.corpus import build_corpus
from trainer.model import ItemEmbeddings
from trainer.movielens import load
from trainer.pipeline import run_training
from trainer.train import train


def genre_agreement(rec: Recommender, sample, users: int = 150) -> float:
    """Share of top-10 recommendations that carry one of the user's favourite genres."""
    hits = []
    for user, favourites in list(sample.favourites.items())[:users]:
        items = rec.recommend(Request(user=user)).items
        hits += [bool(set(s.movie.genres) & set(favourites)) for s in items]
    return float(np.mean(hits))


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(objective="cbow", epochs=4),
        # 600 movies > 5 x 100: a sampled softmax, and 2 steps per epoch
        TrainConfig(objective="cbow", epochs=8, softmax_samples=100, users_per_step=500),
        TrainConfig(objective="sgns", dim=32, epochs=5),
        TrainConfig(objective="softmax", dim=32, epochs=2),
        TrainConfig(objective="sgns", dim=32, epochs=5, lr=0.02, window=5, subsample=1e-3),
        TrainConfig(objective="als", dim=16, epochs=10),
    ],
    ids=["cbow", "cbow-sampled", "sgns", "softmax", "sgns-window-subsample", "als"],
)
def test_objectives_learn_the_sample(
    config: TrainConfig, sample, sample_dir: Path, tmp_path: Path
) -> None:
    run_training(tmp_path / "a", config, data=sample_dir, show_progress=False)
    rec = Recommender(read_artifacts(tmp_path / "a"))
    # Random top-10s agree ~25% of the time; the users' own watches ~70%.
    assert genre_agreement(rec, sample) > 0.6


def test_same_seed_same_model(sample_dir: Path) -> None:
    corpus = build_corpus(load(sample_dir), 3.5, 1)
    config = TrainConfig(epochs=2)  # default size: parallel kernels included
    a, b = train(corpus, config, False), train(corpus, config, False)
    c = train(corpus, TrainConfig(epochs=2, seed=1), False)
    assert np.array_equal(a.inp, b.inp) and np.array_equal(a.out, b.out)
    assert not np.array_equal(a.inp, c.inp)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="objective must be one of cbow, sgns, softmax, als"):
        TrainConfig(objective="bpr")
    with pytest.raises(ValueError, match=r"dim must be 0 \(auto\) or more"):
        TrainConfig(dim=-1)
    with pytest.raises(ValueError, match="keep must be in"):
        TrainConfig(keep=1.5)
    with pytest.raises(ValueError, match="users_per_step must be 0 .auto. or more"):
        TrainConfig(users_per_step=-1)
    with pytest.raises(ValueError, match="softmax_samples must be at least 1"):
        TrainConfig(softmax_samples=0)


def test_sampled_softmax_is_the_full_one_when_every_movie_is_drawn() -> None:
    torch.manual_seed(0)
    features = (torch.tensor([0, 1, 3, 3, 4, 5, 6]), torch.tensor([0, 1, 2, 0, 2, 1]), 3)
    model = ItemEmbeddings(6, 8, features)
    nn.init.normal_(model.bias.weight)  # biases matter in both
    batch = (
        torch.tensor([0, 2, 1, 5, 3]),  # context
        torch.tensor([0, 0, 1, 1, 2]),  # its users
        torch.tensor([0, 2, 4, 1, 5, 3, 0]),  # targets
        torch.tensor([0, 0, 0, 1, 1, 2, 2]),  # their users
        torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0, 0.3, 1.0]),  # their weights
        3,
    )
    full = model.cbow_loss(*batch)
    everything = torch.arange(6)
    sampled = model.cbow_loss(*batch, (everything, torch.zeros(6)))
    torch.testing.assert_close(sampled, full)
    # A partial sample with its correction is a different, finite estimate.
    sampler = SoftmaxSampler(np.array([5, 1, 1, 3, 1, 2]), TrainConfig(softmax_samples=3))
    estimate = model.cbow_loss(*batch, (sampler.draw(), sampler.log_inclusion))
    assert torch.isfinite(estimate) and not torch.equal(estimate, full)


def test_sgns_loss_is_the_textbook_one() -> None:
    torch.manual_seed(0)
    model = ItemEmbeddings(7, 4)
    nn.init.normal_(model.bias.weight)
    centers, partners = torch.tensor([0, 3, 3]), torch.tensor([1, 2, 6])
    negatives = torch.tensor([[4, 5], [0, 0], [6, 1]])
    u, o, b = model.inp.weight, model.out.weight, model.bias.weight[:, 0]
    per_pair = [
        -F.logsigmoid(u[c] @ o[p] + b[p]) - sum(F.logsigmoid(-(u[c] @ o[n] + b[n])) for n in ns)
        for c, p, ns in zip(centers, partners, negatives, strict=True)
    ]
    torch.testing.assert_close(model.sgns_loss(centers, partners, negatives), sum(per_pair) / 3)


def test_sampler_inclusion_probabilities_match_its_draws() -> None:
    torch.manual_seed(0)
    counts = np.array([1000, 300, 100, 30, 10, 3, 1, 0])
    sampler = SoftmaxSampler(counts, TrainConfig(softmax_samples=6))
    drawn = torch.zeros(len(counts))
    for _ in range(4000):
        drawn[sampler.draw()] += 1
    torch.testing.assert_close(drawn / 4000, sampler.log_inclusion.exp(), atol=0.025, rtol=0)
    assert drawn[-1] == 0  # never liked, never a negative


def test_resume_after_a_crash_gives_the_uninterrupted_result(
    sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import train as train_module

    corpus = build_corpus(load(sample_dir), 3.5, 1)
    for config in (TrainConfig(epochs=4, dim=16), TrainConfig(objective="sgns", dim=8, epochs=3)):
        whole = train(corpus, config, False)
        checkpoint = tmp_path / f"{config.objective}.pt"
        real_save, saves = train_module._save, []

        def save_then_crash(*args, real_save=real_save, saves=saves) -> None:  # type: ignore[no-untyped-def]
            real_save(*args)
            saves.append(len(args[-1]))  # epochs done
            if len(saves) == 2:
                raise KeyboardInterrupt  # the process dies after its 2nd checkpoint

        monkeypatch.setattr(train_module, "_save", save_then_crash)
        with pytest.raises(KeyboardInterrupt):
            train(corpus, config, False, checkpoint=checkpoint)
        monkeypatch.undo()
        resumed = train(corpus, config, False, checkpoint=checkpoint, resume=True)
        assert saves == [1, 2]
        assert np.array_equal(whole.inp, resumed.inp) and np.array_equal(whole.out, resumed.out)
        assert np.array_equal(whole.bias, resumed.bias)
        assert whole.losses == resumed.losses and len(whole.losses) == config.epochs
        other = TrainConfig(**{**vars(config), "lr": 0.1})
        with pytest.raises(ValueError, match=r"other settings \(lr\)"):
            train(corpus, other, False, checkpoint=checkpoint, resume=True)


def test_hnsw_export_round_trips(sample_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=2, dim=16, index="hnsw", hnsw_m=8, ef_construction=30,
                         ef_search=40)  # fmt: skip
    manifest = run_training(tmp_path / "a", config, data=sample_dir, show_progress=False)
    assert manifest["index"]["type"] == "IndexHNSWFlat"
    rec = Recommender(read_artifacts(tmp_path / "a"))
    graph = faiss.downcast_index(rec.artifacts.index).hnsw
    assert (graph.efConstruction, graph.efSearch) == (30, 40)
    assert len(rec.recommend(Request(user=int(rec.artifacts.histories.user_ids[0]))).items) == 10
    with pytest.raises(ValueError, match="index must be flat, fp16 or hnsw"):
        TrainConfig(index="ivf")


def test_als_fold_in_is_implicits_least_squares(sample_dir: Path, tmp_path: Path) -> None:
    from implicit.cpu.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    config = TrainConfig(objective="als", dim=12, epochs=5, regularization=0.1, alpha=2.0)
    run_training(tmp_path / "a", config, data=sample_dir, show_progress=False)
    rec = Recommender(read_artifacts(tmp_path / "a"))
    assert rec.artifacts.aggregation.method == "als"
    with threadpool_limits(1, "blas"):
        reference = AlternatingLeastSquares(factors=12, regularization=0.1, alpha=2.0)
    reference.item_factors = rec.artifacts.vectors.copy()  # implicit wants it writable
    n = rec.num_movies
    for user in rec.artifacts.histories.user_ids[:5].tolist():
        rows, stars = rec.artifacts.histories.lookup(user)
        liked = stars >= config.like_threshold
        row = csr_matrix((stars[liked], ([0] * int(liked.sum()), rows[liked])), shape=(1, n))
        want = reference.recalculate_user(0, row)
        history = History(rows[liked].astype(np.int64), np.ones(int(liked.sum())),
                          stars[liked].astype(np.float64), np.zeros(0, np.int64))  # fmt: skip
        got = query_for(rec.artifacts.vectors, rec.artifacts.aggregation).vector(history)[0]
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
        items = rec.recommend(Request(user=user, k=5, explain=100)).items
        scores = rec.artifacts.vectors[[rec.catalogue.row_of(s.movie.movie_id) for s in items]]
        np.testing.assert_allclose([s.score for s in items], scores @ want, rtol=1e-3, atol=1e-4)
        for item in items:  # the fold-in is linear in the history: shares add up exactly
            why = item.explanation
            assert why is not None and why.bias == 0
            total = sum(c.share for c in why.top) + why.rest
            assert total == pytest.approx(item.score, rel=1e-3, abs=1e-4)


def test_side_information_gives_unrated_movies_sensible_vectors(sample, tmp_path: Path) -> None:
    import dataclasses

    cold = {mid for mid, _, _ in sample.movies[::20]}
    rated = sample.ratings[~np.isin(sample.ratings["movie_id"], list(cold))]
    folder = dataclasses.replace(sample, ratings=rated).write(tmp_path / "data")
    config = TrainConfig(epochs=4, min_count=0)  # every catalogued movie gets a row
    run_training(tmp_path / "a", config, data=folder, show_progress=False)
    rec = Recommender(read_artifacts(tmp_path / "a"))
    genres = {mid: set(g) for mid, _, g in sample.movies}
    assert cold <= set(rec.artifacts.movie_ids.tolist())
    agree = [
        np.mean([bool(genres[m] & set(s.movie.genres)) for s in rec.similar(m, 10).items])
        for m in sorted(cold)
    ]
    assert np.mean(agree) > 0.7, np.mean(agree)  # random neighbours agree ~0.25
    ranks = []  # a fan of a cold movie's genre gets it ranked above most other movies
    for m in sorted(cold):
        fans = [i for i, _, g in sample.movies if set(g) == genres[m] and i not in cold][:10]
        if len(fans) < 3:
            continue
        ranked = [
            s.movie.movie_id for s in rec.recommend(Request(movies=tuple(fans), k=1000)).items
        ]
        ranks.append(ranked.index(m) / len(ranked))
    assert ranks and np.median(ranks) < 0.25, ranks


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(objective="cbow", users_per_step=101),
        TrainConfig(objective="cbow", users_per_step=101, softmax_samples=100),  # sampled
        TrainConfig(objective="sgns", batch_size=1001),
        TrainConfig(objective="softmax", batch_size=1001),
    ],
    ids=["cbow", "cbow-sampled", "sgns", "softmax"],
)
def test_ranks_shares_add_up_to_the_step(config: TrainConfig, sample_dir: Path) -> None:
    """What DDP relies on: each rank's loss is its share of the step's, so the ranks' losses
    and gradients add up to the one-process loss and gradient (uneven shares included)."""
    torch.manual_seed(0)
    corpus = build_corpus(load(sample_dir), 3.5, 1)
    features = None
    if config.objective == "cbow":
        f = corpus.features
        features = (torch.from_numpy(f.indptr), torch.from_numpy(f.indices), len(f.names))
    model = ItemEmbeddings(len(corpus.movies), 16, features)
    nn.init.normal_(model.bias.weight)
    steps = objective(corpus, config, torch.device("cpu"))
    batch = next(iter(steps.epoch(np.random.default_rng(0))))

    def loss_and_gradient(b) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
        model.zero_grad()
        loss = model(b)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss, gradient = loss_and_gradient(batch)
    for world in (2, 3):
        shares = [loss_and_gradient(batch.shard(rank, world)) for rank in range(world)]
        torch.testing.assert_close(sum(s[0] for s in shares), loss)
        torch.testing.assert_close(sum(s[1] for s in shares), gradient, atol=1e-7, rtol=1e-4)
        assert all(batch.shard(rank, world).units == batch.units for rank in range(world))
    size = batch.num_users if config.objective == "cbow" else len(batch.centers)
    nothing, zero = loss_and_gradient(batch.shard(0, size + 1))  # more ranks than rows
    assert nothing == 0 and not zero.any()


def test_threads_are_the_cpus_this_process_may_use_shared_by_local_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distributed, "available_cpus", lambda: 7)
    assert distributed.threads(0) == 7 and distributed.threads(3) == 3
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.threads(0) == 3  # two ranks on this machine share its 7 CPUs
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert distributed.threads(0) == 1


def test_device_auto_is_cuda_only_when_there_is_one() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.device("auto").type == want
    assert distributed.device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        TrainConfig(device="tpu")
    if not torch.cuda.is_available():
        from movierec.errors import UsageError

        with pytest.raises(UsageError, match="no CUDA GPU"):
            distributed.device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
def test_cuda_learns_the_sample_and_repeats_itself(
    sample, sample_dir: Path, tmp_path: Path
) -> None:
    config = TrainConfig(epochs=4, device="cuda")
    manifest = run_training(tmp_path / "a", config, data=sample_dir, show_progress=False)
    assert manifest is not None and manifest["training"]["device"] == "cuda"
    assert genre_agreement(Recommender(read_artifacts(tmp_path / "a")), sample) > 0.6
    corpus = build_corpus(load(sample_dir), 3.5, 1)
    for again in (
        TrainConfig(epochs=2, device="cuda", softmax_samples=100),  # the sampled softmax
        TrainConfig(objective="sgns", dim=32, epochs=2, device="cuda"),
        TrainConfig(objective="softmax", dim=32, epochs=1, device="cuda"),
    ):
        a, b = train(corpus, again, False), train(corpus, again, False)
        assert a.device == "cuda" and np.array_equal(a.inp, b.inp), again
        assert np.array_equal(a.out, b.out) and np.array_equal(a.bias, b.bias), again


def test_openmp_threads_sleep_while_they_wait_unless_told_otherwise() -> None:
    """Spinning threads slow training ~10x beside other work (trainer/__init__.py)."""
    code = "import os, trainer; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, want in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        if given is not None:
            env["OMP_WAIT_POLICY"] = given
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert run.stdout.strip() == want, run.stderr
