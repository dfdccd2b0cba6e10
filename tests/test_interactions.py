"""Your own data: interaction logs of any shape (CSV, TSV, JSON lines, Parquet, compressed; your
column names; UUID and SKU ids; no rating column), trained, served, and queried by the original
ids through the client and the CLI. Built from the sample, whose right answers are known: each
user mostly watches one or two genres."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from movierec.artifacts import read_artifacts
from movierec.cli import main
from movierec.client import Client
from movierec.errors import DataError
from server.app import RunningServer, build_server
from server.recommender import Recommender
from trainer.corpus import _sort, build_corpus
from trainer.dataset import load_dataset, to_movielens
from trainer.interactions import Columns
from trainer.sample import Sample

ONLY_IN_LOG = "MYSTERY-BOX"  # interactions name it, the items file does not
NEVER_WATCHED = "SKU-NEVER"  # the items file has it, no interaction names it
TRAIN = ["--epochs", "4", "--quiet"]
COLUMNS = ["--user-col", "visitor", "--item-col", "sku", "--time-col", "when",
           "--title-col", "label", "--genres-col", "tags"]  # fmt: skip


def sku(movie_id: int) -> str:
    return f"SKU-{movie_id:04d}"


def visitors(sample: Sample) -> dict[int, str]:
    """Each sample user's UUID (seeded)."""
    rng = np.random.default_rng(0)
    return {u: str(uuid.UUID(bytes=rng.bytes(16))) for u in sample.favourites}


def write_log(sample: Sample, folder: Path) -> Path:
    """The sample's liked ratings as a watch log: UUID visitors, SKU items, ISO-8601 times,
    no rating column; every 4th watch is repeated (weight), and every 3rd user also opened
    the mystery box, which the items file does not list."""
    folder.mkdir(parents=True, exist_ok=True)
    who = visitors(sample)
    lines = ["visitor,sku,when"]
    for i, r in enumerate(sample.ratings[sample.ratings["rating"] >= 3.5]):
        when = np.datetime64(int(r["timestamp"]), "s").astype(str) + "Z"
        line = f"{who[int(r['user_id'])]},{sku(int(r['movie_id']))},{when}"
        lines += [line, line] if i % 4 == 0 else [line]
    lines += [f"{who[u]},{ONLY_IN_LOG},2001-01-01T00:00:00Z" for u in list(who)[::3]]
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    items = ["sku,label,tags,year"]
    items += [f'{sku(m)},"{title}",{"|".join(genres)},' for m, title, genres in sample.movies]
    items += [f"{NEVER_WATCHED},Never Watched,Drama,2001"]
    (folder / "items.csv").write_text("\n".join(items) + "\n")
    return folder


@pytest.fixture(scope="module")
def own(sample: Sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts trained by `movierec train` from the log and items file above."""
    folder = write_log(sample, tmp_path_factory.mktemp("own"))
    # default epochs: early stopping's holdout runs on this log too (trainer.dataset.to_movielens)
    args = ["train", "--interactions", str(folder / "events.csv"), "--quiet", "--items",
            str(folder / "items.csv"), *COLUMNS, "--out", str(folder / "art")]  # fmt: skip
    assert main(args) == 0
    return folder / "art"


@pytest.fixture(scope="module")
def own_server(own: Path, loop_thread) -> Iterator[RunningServer]:
    running = loop_thread.run(build_server(Recommender(read_artifacts(own))))
    yield running
    loop_thread.run(running.stop(None))


def test_own_ids_are_trained_served_and_recommended(
    own: Path, own_server: RunningServer, sample: Sample
) -> None:
    artifacts = read_artifacts(own)
    assert artifacts.manifest["ids"] == {"users": "str", "movies": "str"}
    assert artifacts.manifest["training"]["auto"]["chosen"]["epochs"]["value"] >= 1
    data = artifacts.manifest["training"]["data"]
    assert data["implicit"] and data["items_without_metadata"] == 1
    assert data["repeats_merged"] == ((sample.ratings["rating"] >= 3.5).sum() + 3) // 4
    who = visitors(sample)
    agree, boxes = [], []
    with Client(f"127.0.0.1:{own_server.port}") as client:
        for user, favourites in list(sample.favourites.items())[:60]:
            response = client.recommend(who[user], k=10)
            for r in response.recommendations:
                if r.movie_key == ONLY_IN_LOG:
                    boxes.append(r)
                else:
                    assert r.movie_key.startswith("SKU-") and r.movie_id == 0
                    agree.append(bool(set(r.genres) & set(favourites)))
        box = client.movie(ONLY_IN_LOG)
        never = client.movie(NEVER_WATCHED)
        similar = client.similar(ONLY_IN_LOG, 5)
    # Random top-10s agree ~25% of the time; a UUID user's own watches ~70%.
    assert np.mean(agree) > 0.6
    # The popular item that only the log names is recommended, with its id as its title.
    assert boxes and {(b.title, tuple(b.genres)) for b in boxes} == {(ONLY_IN_LOG, ())}
    assert (box.title, list(box.genres), box.indexed) == (ONLY_IN_LOG, [], True)
    assert len(similar.recommendations) == 5
    # The catalogued item nobody watched is described, not indexed.
    assert (never.title, list(never.genres), never.year, never.indexed) == (
        "Never Watched", ["Drama"], 2001, False)  # fmt: skip


def test_cli_recommends_by_uuid(own_server: RunningServer, sample: Sample) -> None:
    target = ["--target", f"127.0.0.1:{own_server.port}"]
    user = visitors(sample)[1]
    out = _run("recommend", *target, "--user", user, "-k", "5", "--json")
    keys = [r["movie_key"] for r in json.loads(out)["recommendations"]]
    assert len(keys) == 5 and all(k.startswith("SKU-") or k == ONLY_IN_LOG for k in keys)
    table = _run("recommend", *target, "--movies", f"{keys[0]},{ONLY_IN_LOG}", "-k", "3")
    assert "MovieId" in table and "ignored" not in table
    movie = json.loads(_run("movie", *target, "--movie", NEVER_WATCHED))
    assert movie["title"] == "Never Watched" and not movie.get("indexed", False)


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "movierec", *args], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def corpus_arrays(corpus) -> list[np.ndarray]:
    h, b = corpus.histories, corpus.baskets
    return [h.user_ids, h.indptr, h.rows, h.ratings, b.indptr, b.items, b.ratings]


def assert_same_corpus(a, b) -> None:
    assert [m.movie_id for m in a.movies] == [m.movie_id for m in b.movies]
    for x, y in zip(corpus_arrays(a), corpus_arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_parquet_tsv_and_sniffed_text_read_as_the_csv(sample: Sample, tmp_path: Path) -> None:
    folder = write_log(sample, tmp_path)
    columns = Columns(user="visitor", item="sku", time="when", title="label", genres="tags")
    csv = build_corpus(load_dataset(interactions=folder / "events.csv", columns=columns), 3.5, 3)
    text = (folder / "events.csv").read_text()
    (folder / "events.tsv").write_text(text.replace(",", "\t"))
    (folder / "events.txt").write_text(text.replace(",", ";"))
    utc = pacsv.ConvertOptions(column_types={"when": pa.timestamp("s", tz="UTC")})
    table = pacsv.read_csv(folder / "events.csv", convert_options=utc)
    pq.write_table(table, folder / "events.parquet")  # times as a Parquet timestamp column
    for name in ("events.tsv", "events.txt", "events.parquet"):
        other = load_dataset(interactions=folder / name, columns=columns)
        assert_same_corpus(build_corpus(other, 3.5, 3), csv)


def test_json_lines_and_compressed_files_read_as_the_csv(sample: Sample, tmp_path: Path) -> None:
    """Logs are often JSON lines, and often gzipped: read as they are decompressed."""
    import bz2
    import gzip

    folder = write_log(sample, tmp_path)
    columns = Columns(user="visitor", item="sku", time="when", title="label", genres="tags")
    csv = build_corpus(load_dataset(interactions=folder / "events.csv", columns=columns), 3.5, 3)
    text = (folder / "events.csv").read_text()
    header, *rows = text.splitlines()
    names = header.split(",")
    objects = [json.dumps(dict(zip(names, row.split(","), strict=True))) for row in rows]
    (folder / "events.jsonl").write_text("\n".join(objects) + "\n")
    (folder / "events.csv.gz").write_bytes(gzip.compress(text.encode()))
    (folder / "events.jsonl.gz").write_bytes(gzip.compress((folder / "events.jsonl").read_bytes()))
    (folder / "events.tsv.bz2").write_bytes(bz2.compress(text.replace(",", "\t").encode()))
    for name in ("events.jsonl", "events.csv.gz", "events.jsonl.gz", "events.tsv.bz2"):
        other = load_dataset(interactions=folder / name, columns=columns)
        assert_same_corpus(build_corpus(other, 3.5, 3), csv)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("log.jsonl", '{"user_id": "u1", "item_id": "A"}\n[1, 2]\n', "log.jsonl"),
        ("log.json", '[{"user_id": "u1", "item_id": "A"}]', "not JSON lines"),
        (
            "log.jsonl",
            '{"user_id": "u1", "item_id": "A", "rating": 4}\n\n'
            '{"user_id": "u2", "item_id": "B", "rating": null}\n',
            "log.jsonl:3: column 'rating' has None, expected a number",
        ),
        ("log.csv.gz", "user,item\nu,1\n", "cannot be decompressed"),
    ],
)
def test_bad_json_lines_and_compressed_files_get_one_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content)  # a .gz that is not gzip, too
    with pytest.raises(DataError) as e:
        load_dataset(interactions=tmp_path / name)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parquet_with_ratings_trains_like_the_movielens_folder(
    sample: Sample, sample_dir: Path, tmp_path: Path
) -> None:
    """Integer ids stay integers; ratings keep the like threshold."""
    r = sample.ratings
    pq.write_table(pa.table({"userId": r["user_id"], "movieId": r["movie_id"],
                             "rating": r["rating"], "timestamp": r["timestamp"]}),
                   tmp_path / "ratings.parquet")  # fmt: skip
    args = ["train", "--interactions", str(tmp_path / "ratings.parquet"), "--items",
            str(sample_dir / "movies.csv"), "--out", str(tmp_path / "art"), *TRAIN]  # fmt: skip
    assert main(args) == 0
    manifest = read_artifacts(tmp_path / "art").manifest
    assert manifest["ids"] == {"users": "int", "movies": "int"}
    from_parquet = build_corpus(load_dataset(interactions=tmp_path / "ratings.parquet"), 3.5, 3)
    assert_same_corpus(from_parquet, build_corpus(load_dataset(data=sample_dir), 3.5, 3))


def test_a_toml_config_with_flags_that_win(sample: Sample, tmp_path: Path, capsys) -> None:
    folder = write_log(sample, tmp_path / "data")
    config = tmp_path / "data" / "train.toml"
    config.write_text(
        'interactions = "events.csv"\nitems = "items.csv"\nuser_col = "visitor"\n'
        'item_col = "sku"\ntime-col = "when"\ntitle_col = "label"\ngenres_col = "tags"\n'
        'out = "art"\nepochs = 1\ndim = 16\nquiet = true\nlike_threshold = 4.5\n'
    )
    assert main(["train", "--config", str(config), "--dim", "8"]) == 0
    manifest = read_artifacts(folder / "art").manifest  # relative to the file
    settings = manifest["settings"]
    assert (settings["epochs"], settings["dim"], settings["like_threshold"]) == (1, 8, 4.5)
    out = capsys.readouterr().out
    assert "no rating column: every row a positive" in out
    assert "1 item not in the items file" in out


def test_implicit_repeats_add_stars_and_order_by_first_time(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text(
        "user,item,ts\n"
        "u,b,2024-01-03\nu,a,2024-01-01\nu,b,2024-01-02\nu,c,2024-01-04\n"
        "u,c,2024-01-05\nu,c,2024-01-06\nu,c,2024-01-07\nv,a,5\nv,b,5\nw,a,1\nw,b,2\n"
    )
    data = load_dataset(interactions=tmp_path / "log.csv")
    corpus = build_corpus(data, 3.5, 1)
    h = corpus.histories
    assert h.user_ids.tolist() == ["u", "v", "w"]
    rows = [corpus.movies[i].movie_id for i in h.rows[: h.indptr[1]]]
    assert rows == ["a", "b", "c"]  # first seen 01-01, 01-02, 01-04
    assert h.ratings[: h.indptr[1]].tolist() == [4.0, 5.0, 6.0]  # 1, 2 and 4 interactions
    # --like-threshold 5: only what a user came back to is liked.
    repeated = build_corpus(data, 5.0, 0)
    assert repeated.baskets.lengths.tolist() == [2]


def test_to_movielens_and_back_gives_the_same_corpus(sample: Sample, tmp_path: Path) -> None:
    """What early stopping's holdout and --tune train on: codes for ids, the implicit log
    still merged."""
    folder = write_log(sample, tmp_path)
    columns = Columns(user="visitor", item="sku", time="when", title="label", genres="tags")
    data = load_dataset(interactions=folder / "events.csv", items=folder / "items.csv",
                        columns=columns)  # fmt: skip
    table = to_movielens(data)
    assert table.ratings["user_id"].dtype == np.int64 and len(table.movies) == 602
    again, direct = build_corpus(table, 3.5, 3), build_corpus(data, 3.5, 3)
    for x, y in zip(corpus_arrays(again)[1:], corpus_arrays(direct)[1:], strict=True):
        np.testing.assert_array_equal(x, y)  # all but the user ids (codes there)
    assert [m.title for m in again.movies] == [m.title for m in direct.movies]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(0, 3)),
                min_size=1, max_size=40))  # fmt: skip
def test_sort_equals_a_lexsort(rows: list[tuple[int, int, int]]) -> None:
    """Two stable passes and the tie fix-up give exactly lexsort's order (user, time, item,
    then file order)."""
    users, items, times = (np.array(c) for c in zip(*rows, strict=True))
    tag = np.arange(len(rows), dtype=np.float32)
    expected = np.lexsort((items, times, users))
    u, i, t = users.astype(np.int32), items.astype(np.int32), times.astype(np.float64)
    _sort(u, i, tag, t)
    assert tag.astype(int).tolist() == expected.tolist()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyzw"), st.integers(0, 3)),
             min_size=1, max_size=30),
    st.booleans(),
)  # fmt: skip
def test_implicit_entries_match_a_plain_count(rows, with_time: bool) -> None:
    """Each (user, item) once, 4 + log2(count) stars, at its first time (or first row), in
    (user, time, item) order: against a dict-and-sort reference."""
    import tempfile

    assume(len({item for _, item, _ in rows}) >= 2)  # a catalogue of one is refused
    pairs: dict[tuple[str, str], list[int]] = {}
    for n, (user, item, time) in enumerate(rows):
        first = pairs.setdefault((user, item), [0, time if with_time else n, n])
        first[0] += 1
        first[1] = min(first[1], time) if with_time else first[1]
    expected = sorted((u, key, i, 4 + np.log2(c)) for (u, i), (c, key, _) in pairs.items())
    with tempfile.TemporaryDirectory() as tmp:
        header, line = ("user,item,ts", "{},{},{}") if with_time else ("user,item", "{},{}")
        text = [header] + [line.format(*r) for r in rows]
        (Path(tmp) / "log.csv").write_text("\n".join(text) + "\n")
        corpus = build_corpus(load_dataset(interactions=Path(tmp) / "log.csv"), 3.5, 0)
    h = corpus.histories
    got = [
        (h.user_ids[u], corpus.movies[h.rows[e]].movie_id, float(h.ratings[e]))
        for u in range(len(h.user_ids))
        for e in range(h.indptr[u], h.indptr[u + 1])
    ]
    assert [(u, i) for u, i, _ in got] == [(u, i) for u, _, i, _ in expected]
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in expected], rtol=1e-6)


@pytest.mark.parametrize(
    ("ids", "kind"),
    [("42,7,-3", "int"), ("42,007", "str"), ("42,+7", "str"), ("42,abc", "str")],
)
def test_ids_are_integers_only_if_every_one_is(tmp_path: Path, ids: str, kind: str) -> None:
    values = ids.split(",")
    lines = [f"{v},{w}" for v in values for w in values]
    (tmp_path / "log.csv").write_text("user_id,item_id\n" + "\n".join(lines) + "\n")
    x = load_dataset(interactions=tmp_path / "log.csv").interactions
    assert {x.user_ids.dtype.kind, x.item_ids.dtype.kind} == {"i" if kind == "int" else "U"}


def test_items_file_with_text_ids_makes_integer_item_ids_text(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id\n1,10\n1,20\n2,10\n")
    (tmp_path / "items.csv").write_text("item_id,title\n10,Ten\nx-1,Other\n")
    data = load_dataset(interactions=tmp_path / "log.csv", items=tmp_path / "items.csv")
    assert data.interactions.item_ids.tolist() == ["10", "20"]
    assert [m.movie_id for m in data.catalogue] == ["10", "x-1", "20"]
    assert data.interactions.user_ids.dtype == np.int64


def test_a_movielens_folder_keeps_unknown_and_unrated_movies(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,A (1990),Drama\n2,B (1991),Comedy\n3,Unrated (1992),War\n"
    )
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4,1\n1,2,4,2\n2,1,5,3\n2,2,4,4\n2,99,4,5\n"
    )
    data = load_dataset(data=tmp_path)
    assert (data.unknown_items, data.unknown_rows) == (1, 1)
    corpus = build_corpus(data, 3.5, 2)
    assert [m.movie_id for m in corpus.movies] == [1, 2]
    assert [(m.movie_id, m.title) for m in corpus.unindexed] == [(3, "Unrated (1992)"), (99, "99")]


def test_movielens_dat_files_by_flag(tmp_path: Path) -> None:
    """--interactions ratings.dat --items movies.dat: the '::' layout, detected by name."""
    (tmp_path / "movies.dat").write_bytes(
        "1::Cité (1995)::Drama\n2::B (1996)::War\n".encode("latin-1")
    )
    (tmp_path / "ratings.dat").write_text("1::1::5::10\n1::2::4::11\n2::1::4::12\n")
    data = load_dataset(interactions=tmp_path / "ratings.dat", items=tmp_path / "movies.dat")
    assert [m.title for m in data.catalogue] == ["Cité (1995)", "B (1996)"]
    assert data.interactions.user_ids.tolist() == [1, 2] and len(data.interactions) == 3


WHEN = {"time": "when"}  # not one of the names looked for
LOG = "user_id,sku,stars,when\nu1,A,4,2024-01-01\nu2,B,5,1700000000\n"


@pytest.mark.parametrize(
    ("files", "columns", "message"),
    [
        ({"log.csv": "a,b\n1,2\n"}, {}, "log.csv: no user column: none of user_id, userId"),
        (
            {"log.csv": LOG},
            {"user": "who"},
            "log.csv: no column 'who' (--user-col); header has ['user_id', 'sku', 'stars', 'when']",
        ),
        ({"log.csv": ""}, {}, "log.csv: empty file"),
        ({"log.csv": "user,item\n"}, {}, "log.csv: no interactions"),
        (
            {"log.csv": LOG + "u3,C,four,5\n"},
            {},
            "log.csv:4: column 'stars' has 'four', expected a number",
        ),
        ({"log.csv": LOG + "u3,C,4,\n"}, WHEN, "log.csv:4: column 'when' has '', expected"),
        (
            {"log.csv": LOG + "u3,C,4,yesterday\n"},
            WHEN,
            "log.csv:4: column 'when' has 'yesterday', expected a number or an ISO-8601 time",
        ),
        (
            {"log.csv": LOG + "\n\n" + "x" * 300 + ",C,4,5\n"},
            {},
            "log.csv:6: column 'user_id' has an id of 300 characters",
        ),
        ({"log.csv": LOG + ",C,4,5\n"}, {}, "log.csv:4: column 'user_id' has an empty id"),
        (
            {"log.csv": LOG + 'u3,"C\nD",4,5\nu4,E,4,5,6\n'},
            {},
            "log.csv:6: expected 4 comma-separated fields as in the header, found 5",
        ),
        (
            {"log.csv": LOG, "items.csv": "sku,title\nA,x\nB,y\nA,z\n"},
            {},
            "items.csv:4: item 'A' appears twice",
        ),
        (
            {"log.csv": LOG, "items.csv": "sku,year\nA,soon\n"},
            {},
            "items.csv:2: column 'year' has 'soon', expected a year",
        ),
        ({"log.csv": LOG, "items.csv": "name\nA\n"}, {}, "items.csv: no item id column"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_bad_input_gets_one_line_naming_file_and_line(
    tmp_path: Path, files: dict[str, str], columns: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    items = tmp_path / "items.csv" if "items.csv" in files else None
    with pytest.raises(DataError) as e:
        load_dataset(interactions=tmp_path / "log.csv", items=items, columns=Columns(**columns))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_parquet_values_name_the_row(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user_id": [1, 2, 3], "item_id": [1.5, 2.0, 3.0]}),
                   tmp_path / "a.parquet")  # fmt: skip
    with pytest.raises(DataError, match="column 'item_id' holds double; ids must be integers"):
        load_dataset(interactions=tmp_path / "a.parquet")
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "rating": [4.0, None]}),
                   tmp_path / "b.parquet")  # fmt: skip
    with pytest.raises(DataError, match=r"b.parquet: row 2: column 'rating' has None"):
        load_dataset(interactions=tmp_path / "b.parquet")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("epochs = 2\nwat = 1\n", "'wat' is not a train option"),
        ('epochs = "many"\n', "invalid int value: 'many'"),
        ("epochs = 1.5\n", "epochs = 1.5 does not fit --epochs"),
        ("epochs = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files_get_one_line(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "c.toml").write_text(config)
    result = subprocess.run(
        [sys.executable, "-m", "movierec", "train", "--config", str(tmp_path / "c.toml"),
         "--data", str(tmp_path), "--out", str(tmp_path / "a")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]


def test_train_refuses_mixed_sources(tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path), "--interactions", "x.csv", "--out", "a"]) == 1
    assert "give --data DIR (a MovieLens folder) or --interactions FILE" in capsys.readouterr().err
