"""Choosing settings on a holdout carved from the training data: the scorer ranks as the
server does, early stopping picks the epochs, and --tune keeps the default unless it loses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from movierec.errors import UsageError
from server.app import load_recommender
from trainer.config import TrainConfig
from trainer.corpus import build_corpus
from trainer.evaluate import evaluate
from trainer.export import export
from trainer.holdout import BLEND_POPULARITY, POPULARITY, HoldoutScorer, carve, stop_early
from trainer.movielens import load
from trainer.pipeline import run_training
from trainer.train import train
from trainer.tune import parse_budget, search


def test_holdout_scorer_ranks_as_the_server(sample_dir: Path, tmp_path: Path) -> None:
    fit, held = carve(load(sample_dir))
    config = TrainConfig(epochs=3, dim=32, popularity=1.5, threads=1)
    corpus = build_corpus(fit, config.like_threshold, config.min_count)
    embeddings = train(corpus, config, False)
    export(tmp_path / "a", corpus, embeddings, config, "test")
    served = evaluate(load_recommender(tmp_path / "a"), held)["model"]
    assert HoldoutScorer(corpus, held, config)(embeddings) == served
    lower = dataclasses.replace(embeddings, bias=embeddings.bias / 1.5)
    assert HoldoutScorer(corpus, held, config).each(lower, (1.5,))[0] == served


def test_early_stopping_stops_after_the_peak(sample_dir: Path) -> None:
    config = TrainConfig(threads=1, dim=32, lr=0.002)
    stopped = stop_early(load(sample_dir), config, max_epochs=40, patience=4)
    ndcg = [row[0].ndcg_10 for row in stopped.curve]
    assert len(ndcg) == stopped.epochs + 4 or len(ndcg) == 40  # stopped 4 epochs after it
    assert ndcg[stopped.epochs - 1] > ndcg[0]  # it learned before it stopped
    assert stopped.popularity in (BLEND_POPULARITY if stopped.ease else POPULARITY)
    assert stopped.ndcg >= max(stopped.record()["popularity_at_best"].values()) - 1e-4


@pytest.mark.parametrize(("text", "seconds"), [("600", 600), ("90s", 90), ("10m", 600),
                                               ("1.5h", 5400)])  # fmt: skip
def test_budgets(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "-5m", "0", "5d"])
def test_bad_budgets(text: str) -> None:
    with pytest.raises(UsageError, match="--tune takes a time budget"):
        parse_budget(text)


def test_tune_keeps_the_default_unless_a_trial_beats_it(sample_dir: Path) -> None:
    config = TrainConfig(threads=1, dim=32, keep=0.7)  # explicit: never searched
    chosen, record = search(load(sample_dir), config, budget=12, show_progress=False)
    trials = record["tune"]["trials"]
    assert trials[0]["changes"] == {}  # the default first, whatever the budget
    assert all("dim" not in t["changes"] and "keep" not in t["changes"] for t in trials)
    best = trials[record["tune"]["winner"]]
    assert best["ndcg@10"] >= trials[0]["ndcg@10"]
    assert not chosen.unresolved and chosen.dim == 32 and chosen.keep == 0.7
    assert (chosen.epochs, chosen.popularity) == (best["epochs"], best["popularity"])


def test_train_tune_on_the_cli(sample_dir: Path, tmp_path: Path, capsys) -> None:
    from movierec.cli import main

    args = ["train", "--data", str(sample_dir), "--out", str(tmp_path / "a"), "--quiet",
            "--threads", "1", "--dim", "32", "--tune", "5s"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "settings (vs the default)" in out and "default" in out
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["training"]["tune"]["trials"][0]["changes"] == {}
    assert manifest["settings"]["epochs"] == manifest["training"]["tune"]["trials"][
        manifest["training"]["tune"]["winner"]]["epochs"]  # fmt: skip


def test_default_records_what_it_chose(sample_dir: Path, tmp_path: Path) -> None:
    manifest = run_training(tmp_path / "a", TrainConfig(threads=1, lr=0.004), data=sample_dir,
                            show_progress=False)  # fmt: skip
    auto = manifest["training"]["auto"]
    assert set(auto["chosen"]) == {"dim", "epochs", "keep", "popularity", "ease"}  # not lr
    assert manifest["settings"]["lr"] == 0.004
    for name, choice in auto["chosen"].items():
        assert manifest["settings"][name] == choice["value"] and choice["why"]
    assert len(auto["holdout"]["ndcg_curve"]) > manifest["settings"]["epochs"]
    assert auto["shape"]["users"] == 1000
