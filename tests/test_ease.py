"""The EASE part beside cbow (trainer/ease.py): its factors are EASE's closed form, the served
blend ranks as the holdout scored it, and the holdout decides whether it is kept."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from server.app import load_recommender
from server.recommender import Request
from trainer import ease
from trainer.config import TrainConfig
from trainer.corpus import build_corpus
from trainer.evaluate import evaluate
from trainer.export import export
from trainer.holdout import (
    COVERAGE_CAP,
    COVERAGE_SHARE,
    TOLERANCE,
    HoldoutScorer,
    _coverage_floor,
    _pick,
    carve,
    stop_early,
)
from trainer.movielens import load
from trainer.pairs import Baskets
from trainer.pipeline import run_training
from trainer.train import train


def test_factors_are_eases_closed_form() -> None:
    rng = np.random.default_rng(0)
    baskets = Baskets.from_lists([sorted(rng.choice(30, 8, replace=False)) for _ in range(200)])
    x = np.zeros((200, 30))
    x[np.repeat(np.arange(200), 8), baskets.items] = 1.0
    p = np.linalg.inv(x.T @ x + 50.0 * np.eye(30))  # Steck (2019), eq. 8
    b = np.eye(30) - p / np.diag(p)
    factors = ease.fit(ease.gram(baskets, 30), 50.0)  # rank 128 > 30 movies: exact
    np.testing.assert_allclose(factors.left @ factors.right.T, b, atol=1e-5)
    assert np.linalg.norm(factors.left, axis=1).mean() == pytest.approx(1.0, abs=1e-5)


def test_a_movie_liked_twice_counts_once() -> None:
    twice = Baskets.from_lists([[0, 1, 1], [1, 2]])
    once = Baskets.from_lists([[0, 1], [1, 2]])
    assert ease.gram(twice, 3).equal(ease.gram(once, 3))


def test_blended_model_is_served_as_the_holdout_scored_it(sample_dir: Path, tmp_path: Path) -> None:
    fit, held = carve(load(sample_dir))
    config = TrainConfig(epochs=3, dim=32, popularity=1.5, ease=2.0, ease_lambda=40.0, threads=1)
    corpus = build_corpus(fit, config.like_threshold, config.min_count)
    factors = ease.fit(ease.gram(corpus.baskets, len(corpus.movies)), config.ease_lambda)
    embeddings = dataclasses.replace(train(corpus, config, False), ease=factors)
    manifest = export(tmp_path / "a", corpus, embeddings, config, "test")
    assert manifest["dim"] == 32 + min(ease.RANK, len(corpus.movies))  # one query, one search
    served = evaluate(load_recommender(tmp_path / "a"), held)["model"]
    scorer = HoldoutScorer(corpus, held, config)
    assert scorer(embeddings) == served
    assert scorer.each(embeddings, (1.0,), dataclasses.replace(config, ease=0.0))[0] != served


def test_holdout_weighs_the_ease_part(sample_dir: Path) -> None:
    config = TrainConfig(threads=1, dim=32, ease=-1)
    stopped = stop_early(load(sample_dir), config, max_epochs=20, patience=3)
    assert stopped.blend is not None
    tried = stopped.blend.tried
    assert any(k.startswith("lambda") for k in tried) and stopped.blend.why
    if stopped.ease:  # kept only with a gain over cbow alone on the same holdout
        assert stopped.blend.scores is not None and stopped.ndcg == stopped.blend.scores.ndcg_10
        assert stopped.ease_lambda > 0 and f"weight {stopped.ease:g}" in tried
        assert stopped.popularity == stopped.blend.popularity  # the blend's bias weight, served
    else:
        assert stopped.blend.scores is None and stopped.ease_lambda == 0


def test_debias_divides_each_column_by_its_count() -> None:
    rng = np.random.default_rng(1)
    baskets = Baskets.from_lists([sorted(rng.choice(20, 6, replace=False)) for _ in range(100)])
    g = ease.gram(baskets, 20)
    factors = ease.fit(g, 30.0)
    assert ease.debias(factors, g, 0.0) is factors
    debiased = ease.debias(factors, g, 0.5)
    undone = (debiased.left @ debiased.right.T) * np.sqrt(g.diagonal().numpy())[None, :]
    np.testing.assert_allclose(undone, factors.left @ factors.right.T, atol=1e-5)
    lonely = ease.gram(Baskets.from_lists([[0], [1]]), 2)  # no movie liked beside another
    assert np.isfinite(ease.debias(ease.fit(lonely, 1.0), lonely, 0.5).right).all()


def test_a_tie_on_the_holdout_goes_to_coverage() -> None:
    best, tied, behind = 0.2, 0.2 * (1 - TOLERANCE / 2), 0.2 * (1 - 2 * TOLERANCE)
    ndcg, coverage = [tied, best, behind, tied], [0.50, 0.40, 0.90, 0.30]
    floor = best * (1 - TOLERANCE)
    assert _pick(ndcg, coverage, floor) == 0  # within TOLERANCE of the best, the widest coverage
    assert _pick([0.2, 0.1], [0.1, 0.9], 0.2 * (1 - TOLERANCE)) == 0  # beyond, NDCG@10 decides
    assert _pick([0.2, 0.2 * (1 - TOLERANCE) - 1e-6], [0.1, 0.9], 0.2 * (1 - TOLERANCE)) == 0
    assert _pick([0.2, 0.2], [0.5, 0.5], 0.2) == 0  # the first of equals


def test_a_lead_over_ease_is_spent_on_coverage_up_to_a_cap() -> None:
    best = 0.2
    # no lead (or a lead smaller than a tie): a tie is all that may be given up
    assert _coverage_floor(best, 0.25) == pytest.approx(best * (1 - TOLERANCE))
    assert _coverage_floor(best, best) == pytest.approx(best * (1 - TOLERANCE))
    # a lead of 0.005: COVERAGE_SHARE of it
    assert _coverage_floor(best, 0.195) == pytest.approx(best - COVERAGE_SHARE * 0.005)
    # a lead of 0.05: never more than COVERAGE_CAP below the best
    assert _coverage_floor(best, 0.15) == pytest.approx(best * (1 - COVERAGE_CAP))
    # what that buys: a setting 2% behind the best, with far wider coverage
    ndcg, coverage = [best, best * 0.98], [0.3, 0.6]
    assert _pick(ndcg, coverage, _coverage_floor(best, 0.15)) == 1
    assert _pick(ndcg, coverage, _coverage_floor(best, best)) == 0


def test_explicit_weight_is_kept_and_lambda_chosen(sample_dir: Path) -> None:
    config = TrainConfig(threads=1, dim=32, ease=0.5, popularity=2.0)  # popularity as given
    stopped = stop_early(load(sample_dir), config, max_epochs=12, patience=3)
    assert stopped.ease == 0.5 and stopped.ease_lambda > 0 and stopped.popularity == 2.0
    assert stopped.ease_debias in ease.DEBIAS
    assert list(stopped.blend.tried) == [*(k for k in stopped.blend.tried if "lambda" in k),
                                         *(f"debias {b:g}" for b in ease.DEBIAS),
                                         "weight 0.5"]  # fmt: skip


def test_explicit_debias_is_kept(sample_dir: Path) -> None:
    config = TrainConfig(threads=1, dim=32, ease=0.5, ease_lambda=50.0, ease_debias=0.25)
    stopped = stop_early(load(sample_dir), config, max_epochs=6, patience=2)
    assert (stopped.ease_lambda, stopped.ease_debias) == (50.0, 0.25)
    assert [k for k in stopped.blend.tried if "lambda" in k or "debias" in k] == ["debias 0.25"]


def test_catalogue_too_large_for_ease_is_not_blended(
    sample_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ease, "MAX_ROWS", 10)
    stopped = stop_early(load(sample_dir), TrainConfig(threads=1, dim=16), max_epochs=6,
                         patience=2)  # fmt: skip
    assert stopped.ease == 0 and stopped.blend and "too large" in stopped.blend.why


def test_trained_artifact_records_the_blend(sample_dir: Path, tmp_path: Path) -> None:
    manifest = run_training(tmp_path / "a", TrainConfig(threads=1, dim=16, ease=1.0),
                            data=sample_dir, show_progress=False)  # fmt: skip
    settings = manifest["settings"]
    assert settings["ease"] == 1.0 and settings["ease_lambda"] > 0
    holdout_record = manifest["training"]["auto"]["holdout"]["ease"]
    assert holdout_record["weight"] == 1.0 and holdout_record["lambda"] == settings["ease_lambda"]
    assert holdout_record["debias"] == settings["ease_debias"] and settings["ease_debias"] >= 0
    assert holdout_record["popularity"] == settings["popularity"]  # the blend's bias weight
    saved = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert saved["dim"] == 16 + ease.RANK
    recommender = load_recommender(tmp_path / "a")
    user = int(recommender.artifacts.histories.user_ids[0])
    assert len(recommender.recommend(Request(user=user, k=5)).items) == 5


def test_artifact_holds_the_debiased_part(sample_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(threads=1, dim=16, epochs=2, ease=1.0, ease_lambda=50.0, ease_debias=0.5)
    manifest = run_training(tmp_path / "a", config, data=sample_dir, show_progress=False)
    assert (manifest["settings"]["ease_lambda"], manifest["settings"]["ease_debias"]) == (50.0, 0.5)
    corpus = build_corpus(load(sample_dir), config.like_threshold, config.min_count)
    g = ease.gram(corpus.baskets, len(corpus.movies))
    expected = ease.debias(ease.fit(g, 50.0), g, 0.5).right
    index = load_recommender(tmp_path / "a").artifacts.index
    served = index.reconstruct_n(0, index.ntotal)[:, 16 : 16 + expected.shape[1]]
    scale = np.linalg.norm(served) / np.linalg.norm(expected)  # Q scaled to cbow's vectors
    np.testing.assert_allclose(served, scale * expected, atol=1e-5 * scale)


def test_without_a_holdout_the_settings_applied_are_recorded(
    sample_dir: Path, tmp_path: Path
) -> None:
    config = TrainConfig(threads=1, dim=16, epochs=2, ease=1.0)  # no holdout run: defaults
    settings = run_training(tmp_path / "a", config, data=sample_dir,
                            show_progress=False)["settings"]  # fmt: skip
    assert settings["ease_lambda"] > 0 and settings["ease_debias"] == 0.0
