"""Auto settings: chosen from the data's shape once before training, recorded with a reason,
and never over a value given explicitly."""

from __future__ import annotations

import pytest

from trainer.config import AUTO, TrainConfig
from trainer.defaults import FIXED, Shape, resolve

ML_100K_LIKE = Shape(users=943, movies=1_600, liked=55_000)  # small and dense: a holdout decides
ML_25M_LIKE = Shape(users=162_000, movies=59_000, liked=12_500_000)  # too big to train twice


def test_every_auto_field_is_chosen_with_a_reason() -> None:
    config, record = resolve(TrainConfig(), ML_25M_LIKE)
    assert not config.unresolved
    assert set(record["chosen"]) == set(AUTO)
    assert all(c["why"] and c["value"] == getattr(config, k) for k, c in record["chosen"].items())
    assert record["shape"]["density"] == pytest.approx(12_500_000 / (162_000 * 59_000), abs=1e-5)


def test_small_data_gets_a_holdout_and_large_data_a_rule() -> None:
    small, record = resolve(TrainConfig(), ML_100K_LIKE)
    assert (small.epochs, small.popularity, small.ease) == (0, 0, -1)  # for the holdout
    assert "early stopping" in record["chosen"]["epochs"]["why"]
    large, record = resolve(TrainConfig(), ML_25M_LIKE)
    assert (large.epochs, large.popularity, large.ease) == (30, 1.0, 0.0)
    assert "too many" in record["chosen"]["epochs"]["why"]
    direct, _ = resolve(TrainConfig(), ML_100K_LIKE, early_stopping=False)
    assert not direct.unresolved  # train() called directly: every field from the rules


def test_explicit_settings_win() -> None:
    given = TrainConfig(dim=64, epochs=7, lr=0.01, keep=0.9, popularity=2.0, ease=0.5)
    config, record = resolve(given, ML_100K_LIKE)
    assert config == given and record["chosen"] == {}
    config, record = resolve(TrainConfig(epochs=12), ML_100K_LIKE)
    assert config.epochs == 12 and config.popularity == 1.0  # no holdout run to choose it
    assert config.ease == 0.0  # nor an EASE part
    assert set(record["chosen"]) == {"dim", "lr", "keep", "popularity", "ease"}


@pytest.mark.parametrize("bad", [{"ease": -0.5}, {"ease_lambda": -1.0},
                                 {"ease_debias": -0.5}, {"ease_debias": 1.5},
                                 {"objective": "sgns", "ease": 1.0}])  # fmt: skip
def test_bad_ease_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="ease"):
        TrainConfig(**bad)  # type: ignore[arg-type]


def test_other_objectives_keep_the_fixed_defaults() -> None:
    config, record = resolve(TrainConfig(objective="sgns"), ML_100K_LIKE)
    assert {k: getattr(config, k) for k in FIXED} == FIXED
    assert "sgns" in record["chosen"]["dim"]["why"]


def test_shape_of_ratings_counts_liked_ones() -> None:
    import pandas as pd

    ratings = pd.DataFrame({"user_id": [1, 1, 2, 3], "movie_id": [10, 11, 10, 12],
                            "rating": [4.0, 3.0, 5.0, 2.0]})  # fmt: skip
    assert Shape.of_ratings(ratings, 3.5) == Shape(users=2, movies=1, liked=2)
