"""The built-in sample: a small MovieLens-style catalogue whose right answers are known.

Every user has one or two favourite genres and mostly watches (and rates highly) movies of
those genres, popular ones more often; a good model therefore recommends a user movies of
their favourite genres, and a Western's neighbours are mostly Westerns. Generated from a seed,
byte-for-byte reproducible, written in the ml-latest-small CSV layout so it goes through the
same loader as real data:

    movierec sample --out data/sample
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

GENRES = [
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
# Title words per genre, so titles hint at what a movie is.
_NOUNS = {
    "Action": ["Fury", "Strike", "Vengeance", "Impact", "Showdown"],
    "Adventure": ["Quest", "Expedition", "Voyage", "Treasure", "Island"],
    "Animation": ["Cartoon", "Doodle", "Sketchbook", "Pixel", "Paintbox"],
    "Children": ["Puppy", "Playground", "Treehouse", "Lullaby", "Kite"],
    "Comedy": ["Mix-Up", "Hiccup", "Wedding", "Roommates", "Road Trip"],
    "Crime": ["Heist", "Alibi", "Syndicate", "Witness", "Getaway"],
    "Documentary": ["Chronicle", "Portrait", "Archive", "Journey", "Record"],
    "Drama": ["Promise", "Harvest", "Letters", "Silence", "Homecoming"],
    "Fantasy": ["Dragon", "Sorcerer", "Kingdom", "Spell", "Prophecy"],
    "Horror": ["Haunting", "Curse", "Cellar", "Scream", "Possession"],
    "Musical": ["Melody", "Chorus", "Rhapsody", "Encore", "Duet"],
    "Mystery": ["Riddle", "Cipher", "Disappearance", "Clue", "Secret"],
    "Romance": ["Kiss", "Sweetheart", "Serenade", "Valentine", "Honeymoon"],
    "Sci-Fi": ["Android", "Nebula", "Starship", "Colony", "Singularity"],
    "Thriller": ["Conspiracy", "Countdown", "Pursuit", "Trap", "Hostage"],
    "War": ["Battalion", "Trench", "Armistice", "Front", "Resistance"],
    "Western": ["Outlaw", "Frontier", "Sheriff", "Canyon", "Stagecoach"],
}
_ADJECTIVES = [
    "Last",
    "Silent",
    "Golden",
    "Broken",
    "Midnight",
    "Wild",
    "Hidden",
    "Second",
    "Crimson",
    "Distant",
    "Little",
    "Endless",
]


@dataclass(frozen=True)
class Sample:
    """A generated dataset and the tastes it was generated from."""

    movies: list[tuple[int, str, list[str]]]  # (movie_id, title with year, genres)
    ratings: np.ndarray  # structured: user_id, movie_id, rating, timestamp
    favourites: dict[int, list[str]]  # user_id -> favourite genres

    def write(self, folder: Path) -> Path:
        """Write movies.csv and ratings.csv (ml-latest-small layout) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "movies.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["movieId", "title", "genres"])
            w.writerows((mid, title, "|".join(genres)) for mid, title, genres in self.movies)
        ratings = pd.DataFrame(self.ratings)  # vectorised: a generated 25M-row file too
        ratings.columns = ["userId", "movieId", "rating", "timestamp"]
        ratings.to_csv(
            folder / "ratings.csv", index=False, float_format="%.1f", lineterminator="\r\n"
        )
        return folder


def make_sample(
    seed: int = 0, num_movies: int = 600, num_users: int = 1000, mean_ratings: int = 40
) -> Sample:
    """Generate the sample deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    g = len(GENRES)
    primary = rng.integers(0, g, num_movies)
    secondary = np.where(rng.random(num_movies) < 0.4, rng.integers(0, g, num_movies), primary)
    movie_genres = [sorted({GENRES[p], GENRES[s]}) for p, s in zip(primary, secondary, strict=True)]
    years = rng.integers(1950, 2024, num_movies)
    movies, sequels = [], Counter[str]()
    for i in range(num_movies):
        genre = GENRES[primary[i]]
        title = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS[genre])}"
        sequels[title] += 1  # keep titles unique: the k-th film of a title is sequel "I" * k
        if sequels[title] > 1:
            title += " " + "I" * sequels[title]
        movies.append((i + 1, f"{title} ({years[i]})", movie_genres[i]))

    member = np.zeros((num_movies, g), dtype=bool)  # movie x genre
    member[np.arange(num_movies), primary] = True
    member[np.arange(num_movies), secondary] = True
    popularity = rng.pareto(2.5, num_movies) + 1.0  # heavy-tailed, like real catalogues

    columns: list[tuple[np.ndarray, ...]] = []
    favourites: dict[int, list[str]] = {}
    # (liked, p) per favourite set: only a few hundred sets, so millions of users are cheap
    tastes: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
    for user in range(1, num_users + 1):
        fav = rng.choice(g, size=rng.integers(1, 3), replace=False)
        favourites[user] = [GENRES[f] for f in fav]
        if (key := tuple(fav)) not in tastes:
            liked = np.asarray(member[:, fav].any(axis=1))
            weight = popularity * np.where(liked, 40.0, 1.0)  # ~70% of watches in favourites
            tastes[key] = liked, weight / weight.sum()
        liked, p = tastes[key]
        n = int(np.clip(rng.geometric(1.0 / mean_ratings), 8, 3 * mean_ratings))
        watched = rng.choice(num_movies, size=n, replace=False, p=p)
        base = np.where(liked[watched], 4.2, 2.4) + rng.normal(0, 0.6, n)
        stars = np.clip(np.round(base * 2) / 2, 0.5, 5.0)
        start = 946_684_800 + int(rng.integers(0, 600_000_000))
        times = start + np.cumsum(rng.integers(60, 86_400, n))
        columns.append((np.full(n, user), watched + 1, stars, times))
    ratings = np.empty(
        sum(len(c[0]) for c in columns),
        dtype=[("user_id", "i8"), ("movie_id", "i8"), ("rating", "f4"), ("timestamp", "i8")],
    )
    for name, parts in zip(ratings.dtype.names or (), zip(*columns, strict=True), strict=True):
        ratings[name] = np.concatenate(parts)
    return Sample(movies=movies, ratings=ratings, favourites=favourites)


def make_clustered_sample(
    seed: int = 0,
    num_movies: int = 1_000_000,
    num_users: int = 150_000,
    mean_ratings: int = 50,
    movies_per_cluster: int = 200,
) -> Sample:
    """A large catalogue with many neighbourhoods, in time linear in the ratings.

    ``make_sample`` draws each user's movies over the whole catalogue (O(movies) per user:
    hours at 1M movies) from 17 genres. Here the movies fall into ``num_movies //
    movies_per_cluster`` taste clusters (sub-genres: each has a genre and an era, and a
    popularity of its own); a user likes 1-3 clusters, picked by their popularity, and draws
    three quarters of their ratings inside them and the rest from the whole catalogue, popular
    movies more often. Every draw is one ``np.searchsorted`` on the movies' cumulative
    popularity, ordered by cluster, so a cluster's movies are one contiguous range of it:
    ~7M ratings over 1M movies in seconds. Deterministic from ``seed``; ``favourites`` names
    each user's clusters ("Western 17": cluster 17, a Western one)."""
    rng = np.random.default_rng(seed)
    g, n = len(GENRES), num_movies
    num_clusters = max(1, n // movies_per_cluster)
    cluster_genre = rng.integers(0, g, num_clusters)
    cluster_year = rng.integers(1950, 2024, num_clusters)
    cluster = rng.integers(0, num_clusters, n)  # movie -> cluster
    primary = cluster_genre[cluster]
    secondary = np.where(rng.random(n) < 0.4, rng.integers(0, g, n), primary)
    years = np.clip(cluster_year[cluster] + np.round(rng.normal(0, 4, n)), 1930, 2024)
    adjective = rng.integers(0, len(_ADJECTIVES), n)
    noun = rng.integers(0, 5, n)
    movies = [
        (i + 1, f"The {_ADJECTIVES[a]} {_NOUNS[GENRES[p]][w]} #{i + 1} ({y})",
         sorted({GENRES[p], GENRES[s]}))
        for i, (a, w, p, s, y) in enumerate(
            zip(adjective.tolist(), noun.tolist(), primary.tolist(), secondary.tolist(),
                years.astype(int).tolist(), strict=True)
        )
    ]  # fmt: skip

    # Movies ordered by cluster: cluster c is by_cluster[start[c]:start[c + 1]], and a draw
    # of u in [cum[start[c]-1], cum[start[c+1]-1]) falls on one of its movies.
    by_cluster = np.argsort(cluster, kind="stable")
    start = np.searchsorted(cluster[by_cluster], np.arange(num_clusters + 1))
    cum = np.cumsum((rng.pareto(2.5, n) + 1.0)[by_cluster])  # popularity, heavy-tailed
    below = np.concatenate([[0.0], cum])[start]  # popularity before each cluster's range
    cluster_weight = (rng.pareto(2.0, num_clusters) + 1.0) * (np.diff(start) > 0)
    cluster_cdf = np.cumsum(cluster_weight) / cluster_weight.sum()

    count = rng.integers(1, 4, num_users)  # clusters per user
    picked = np.searchsorted(cluster_cdf, rng.random((num_users, 3)), side="right")
    picked = np.minimum(picked, num_clusters - 1)
    tastes = np.where(np.arange(3) < count[:, None], picked, -1)  # -1: none
    n_ratings = np.clip(rng.geometric(1.0 / mean_ratings, num_users), 8, 3 * mean_ratings)
    user = np.repeat(np.arange(num_users), n_ratings)
    m = len(user)
    own = tastes[user, (rng.random(m) * count[user]).astype(np.int64)]
    inside = rng.random(m) < 0.75
    lo = np.where(inside, below[own], 0.0)
    hi = np.where(inside, below[own + 1], cum[-1])
    at = np.searchsorted(cum, lo + rng.random(m) * (hi - lo), side="right")
    at = np.clip(at, np.where(inside, start[own], 0), np.where(inside, start[own + 1], n) - 1)
    movie = by_cluster[at]

    # Drop repeats (a user rates a movie once), then shuffle each user's movies into a
    # random watching order.
    key = np.unique(user.astype(np.int64) * n + movie)
    user, movie = key // n, key % n
    m = len(key)
    order = np.lexsort((rng.random(m), user))
    user, movie = user[order], movie[order]
    liked = (cluster[movie][:, None] == tastes[user]).any(axis=1)
    base = np.where(liked, 4.2, 2.4) + rng.normal(0, 0.6, m)
    stars = np.clip(np.round(base * 2) / 2, 0.5, 5.0)
    steps = np.cumsum(rng.integers(60, 86_400, m))
    first = np.searchsorted(user, np.arange(num_users))
    begin = 946_684_800 + rng.integers(0, 600_000_000, num_users)
    times = steps - np.concatenate([[0], steps])[first][user] + begin[user]
    ratings = np.empty(
        m, dtype=[("user_id", "i8"), ("movie_id", "i8"), ("rating", "f4"), ("timestamp", "i8")]
    )
    ratings["user_id"], ratings["movie_id"] = user + 1, movie + 1
    ratings["rating"], ratings["timestamp"] = stars, times
    names = [f"{GENRES[cluster_genre[c]]} {c}" for c in range(num_clusters)]
    favourites = {u + 1: [names[c] for c in row[row >= 0]] for u, row in enumerate(tastes)}
    return Sample(movies=movies, ratings=ratings, favourites=favourites)
