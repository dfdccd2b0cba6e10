"""Each MovieLens layout is detected and parsed; each kind of bad input gets one clear
message naming the file and the line or column."""

from __future__ import annotations

from pathlib import Path

import pytest

from movierec.errors import DataError
from trainer.movielens import detect_layout, load, parse_title, read_ratings, split_test_file


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder


CSV_MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children\n"
    '2,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Drama|Sci-Fi\n'
    "3,Untitled,(no genres listed)\n"
)
CSV_RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,5,1\n"


def test_csv_layout(tmp_path: Path) -> None:
    folder = write(tmp_path, {"movies.csv": CSV_MOVIES, "ratings.csv": CSV_RATINGS})
    assert detect_layout(folder) == "csv"
    data = load(folder)
    assert data.layout == "csv"
    assert data.ratings.to_dict("list") == {
        "user_id": [1, 1, 2],
        "movie_id": [1, 2, 1],
        "rating": [4.0, 3.5, 5.0],
        "timestamp": [964982703, 964981247, 1],
    }
    toy, lost, untitled = data.movies
    assert (toy.title, toy.genres, toy.year) == (
        "Toy Story (1995)",
        ("Adventure", "Animation", "Children"),
        1995,
    )
    assert lost.title.startswith("City of Lost Children, The") and lost.year == 1995
    assert untitled.genres == () and untitled.year is None


def test_dat_layout_is_latin1(tmp_path: Path) -> None:
    movies = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Cité (1995)::Drama\n"
    folder = write(
        tmp_path,
        {
            "movies.dat": movies.encode("latin-1"),
            "ratings.dat": "1::1::5::978300760\n1::2::3::978302109\n",
        },
    )
    data = load(folder)
    assert data.layout == "dat"
    assert data.movies[1].title == "Cité (1995)"
    assert data.movies[0].genres == ("Animation", "Children's", "Comedy")
    assert data.ratings["rating"].tolist() == [5.0, 3.0]


def test_100k_layout_reads_genre_flags(tmp_path: Path) -> None:
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"  # Animation, Comedy
    item = "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
    folder = write(tmp_path, {"u.item": item.encode("latin-1"), "u.data": "196\t1\t3\t881250949\n"})
    data = load(folder)
    assert data.layout == "100k"
    assert data.movies[0].genres == ("Animation", "Comedy")
    assert data.ratings["user_id"].tolist() == [196]


def test_explicit_files(tmp_path: Path) -> None:
    write(tmp_path, {"m.csv": CSV_MOVIES, "r.csv": CSV_RATINGS})
    data = load(ratings=tmp_path / "r.csv", movies=tmp_path / "m.csv")
    assert len(data.ratings) == 3


def test_read_ratings_alone(tmp_path: Path) -> None:
    write(tmp_path, {"test.csv": CSV_RATINGS})
    assert len(read_ratings(tmp_path / "test.csv")) == 3


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "not a MovieLens folder"),
        (
            {"movies.csv": CSV_MOVIES, "ratings.csv": "user,movie,stars\n1,1,4\n"},
            "ratings.csv: missing column(s) userId, movieId, rating",
        ),
        (
            {"movies.csv": CSV_MOVIES, "ratings.csv": CSV_RATINGS + "3,1,four,5\n"},
            "ratings.csv:5: column 'rating' has 'four'",
        ),
        (
            {"movies.csv": CSV_MOVIES, "ratings.csv": CSV_RATINGS + "3,,4,5\n"},
            "ratings.csv:5: column 'movie_id' has ''",
        ),
        (
            {"movies.csv": CSV_MOVIES, "ratings.csv": CSV_RATINGS + "3,1,4,5,extra\n"},
            "ratings.csv: cannot be parsed",
        ),
        (
            {"movies.csv": CSV_MOVIES, "ratings.csv": "userId,movieId,rating,timestamp\n"},
            "ratings.csv: no ratings",
        ),
        ({"movies.csv": CSV_MOVIES, "ratings.csv": ""}, "ratings.csv: empty file"),
        (
            {"movies.csv": "id,name\n1,x\n", "ratings.csv": CSV_RATINGS},
            "movies.csv: missing column 'movieId'",
        ),
        (
            {"movies.csv": CSV_MOVIES + "x1,Bad,Drama\n", "ratings.csv": CSV_RATINGS},
            "movies.csv:5: movie id 'x1' is not a number",
        ),
        (
            {"movies.csv": CSV_MOVIES + "1,Again,Drama\n", "ratings.csv": CSV_RATINGS},
            "movies.csv:5: movie id 1 appears twice",
        ),
        (
            {"movies.dat": "1::Toy Story (1995)\n", "ratings.dat": "1::1::5::1\n"},
            "movies.dat:1: expected 3 '::'-separated fields",
        ),
        (
            {"movies.dat": "1::A (1995)::Drama\n", "ratings.dat": "1::1::5::1\n1::1::x::1\n"},
            "ratings.dat:2: column 'rating' has 'x'",
        ),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, files: dict[str, str], message: str) -> None:
    write(tmp_path, files)
    with pytest.raises(DataError) as e:
        load(tmp_path)
    assert message in str(e.value)


def test_a_rating_of_a_movie_missing_from_movies_csv_is_kept(tmp_path: Path, caplog) -> None:
    """It used to refuse the whole run; the movie now gets an entry titled by its id."""
    write(tmp_path, {"movies.csv": CSV_MOVIES, "ratings.csv": CSV_RATINGS + "3,99,4,5\n"})
    data = load(tmp_path)
    assert data.ratings["movie_id"].tolist()[-1] == 99
    assert "1 ratings name movies that are not in movies.csv (first: movie 99 at line 5)" in (
        caplog.text
    )


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load(tmp_path / "nope")


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="r.csv: no such file"):
        load(ratings=tmp_path / "r.csv", movies=tmp_path / "m.csv")


def test_parse_title() -> None:
    assert parse_title("Babylon 5 (1993-1998)") == ("Babylon 5 (1993-1998)", 1993)
    assert parse_title("Hamlet ") == ("Hamlet", None)


@pytest.mark.parametrize("name", ["test.csv", "test.dat", "test.data"])
def test_split_test_file_keeps_the_layout(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("")
    assert split_test_file(tmp_path) == tmp_path / name


def test_split_without_one_test_file(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="expected one of test.csv, test.dat, test.data; found none"
    ):
        split_test_file(tmp_path)
    (tmp_path / "test.csv").write_text("")
    (tmp_path / "test.dat").write_text("")
    with pytest.raises(DataError, match="found test.csv, test.dat"):
        split_test_file(tmp_path)
