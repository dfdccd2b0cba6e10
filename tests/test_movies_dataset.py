"""The Movies Dataset: ratings use MovieLens ids, metadata TMDB ids, joined only via links.
Small files in that exact layout, with the kinds of broken rows the real files have."""

# ruff: noqa: E501  (the metadata rows keep the real file's 24 columns on one line each)

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from movierec.errors import DataError
from trainer.movielens import load

METADATA = """adult,belongs_to_collection,budget,genres,homepage,id,imdb_id,original_language,original_title,overview,popularity,poster_path,production_companies,production_countries,release_date,revenue,runtime,spoken_languages,status,tagline,title,video,vote_average,vote_count
False,,30000000,"[{'id': 16, 'name': 'Animation'}, {'id': 35, 'name': 'Comedy'}, {'id': 10751, 'name': 'Family'}]",,862,tt0114709,en,Toy Story,"Led by Woody, Andy's toys live happily",21.9,/a.jpg,[],[],1995-10-30,373554033,81.0,[],Released,,Toy Story,False,7.7,5415
False,,65000000,"[{'id': 12, 'name': 'Adventure'}, {'id': 14, 'name': 'Fantasy'}]",,8844,tt0113497,en,Jumanji,"When siblings Judy and Peter",17.0,/b.jpg,[],[],1995-12-15,262797249,104.0,[],Released,,Jumanji,False,6.9,2413
- Written by Ørnås,,,,,1997-08-20,/ff.jpg,,,,,,,,,,,,,,,,,
False,,0,"[{'id': 18, 'name': 'Drama'}]",,8844,tt9999999,en,Jumanji again,duplicate id,1.0,/c.jpg,[],[],2001-01-01,0,90.0,[],Released,,Jumanji again,False,5.0,3
False,,0,"[{'id': 18, 'name': 'Drama'}]",,31357,tt0114885,en,Waiting to Exhale,"Cheated on",3.8,/d.jpg,[],[],1995-12-22,81452156,127.0,[],Released,,Waiting to Exhale,False,6.1,34
"""
LINKS = (
    "movieId,imdbId,tmdbId\n1,0114709,862\n2,0113497,8844\n3,0113228,\n"
    "4,0114885,31357\n5,0113041,11862\n"
)
RATINGS = (
    "userId,movieId,rating,timestamp\n"
    "1,1,4.0,1260759144\n1,2,3.5,1260759179\n1,3,5.0,1260759182\n"
    "2,4,2.0,1260759185\n2,5,4.5,1260759205\n2,1,5.0,1260759210\n"
)


def write(folder: Path) -> Path:
    folder.mkdir()
    (folder / "movies_metadata.csv").write_text(METADATA, encoding="utf-8")
    (folder / "links_small.csv").write_text(LINKS)
    (folder / "ratings_small.csv").write_text(RATINGS)
    return folder


def test_joins_through_links_and_reports_what_it_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        data = load(write(tmp_path / "the-movies-dataset"))
    assert data.layout == "movies-dataset"
    by_id = {m.movie_id: m for m in data.movies}
    assert sorted(by_id) == [1, 2, 4]  # MovieLens ids, never TMDB ids
    assert by_id[1].title == "Toy Story" and by_id[1].genres == ("Animation", "Comedy", "Family")
    assert by_id[1].year == 1995
    assert by_id[2].title == "Jumanji"  # the first of the two rows with TMDB id 8844
    assert by_id[4].title == "Waiting to Exhale"
    assert sorted(data.ratings["movie_id"].tolist()) == [1, 1, 2, 4]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "movies_metadata.csv: skipped 1 rows whose id is not a TMDB id" in messages
    assert "(first at line 4)" in messages
    assert "skipped 1 rows repeating a TMDB id (the first is kept) (first at line 5)" in messages
    assert "links_small.csv: skipped 1 links without a numeric movieId and tmdbId" in messages
    assert (
        "links_small.csv: skipped 1 movies whose tmdbId is not in movies_metadata.csv" in messages
    )
    assert "ratings_small.csv: skipped 2 ratings of movies without usable metadata" in messages


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    folder = write(tmp_path / "tmd")
    (folder / "links_small.csv").unlink()
    with pytest.raises(DataError, match="has movies_metadata.csv but none of links_small.csv"):
        load(folder)
    (folder / "links_small.csv").write_text("movieId,imdbId\n1,0114709\n")
    with pytest.raises(DataError, match="links_small.csv: missing column\\(s\\) tmdbId"):
        load(folder)
