"""The evaluation report: ``evaluate --out`` and ``report`` write report.html with real PNG
plots beside it; anchors are read from what users have at hand."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from movierec.artifacts import read_artifacts
from movierec.cli import main
from movierec.errors import UsageError
from trainer.movielens import load
from trainer.report import read_anchors
from trainer.split import holdout_split

PLOTS = {"metrics.png", "deciles.png", "loss.png", "map.png"}
TINY = ["--epochs", "1", "--dim", "16", "--quiet", "--map-movies", "150"]  # seconds, not minutes


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """main() points the root logger at this test's captured stderr; put it back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def sample_split(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in sample as an evaluation split folder: train/ (MovieLens CSV) + test.csv."""
    split = tmp_path_factory.mktemp("split")
    (split / "train").mkdir()
    train, test = holdout_split(load(sample_dir).ratings, seed=0)
    names = {"user_id": "userId", "movie_id": "movieId"}
    train.rename(columns=names).to_csv(split / "train" / "ratings.csv", index=False)
    test.rename(columns=names).to_csv(split / "test.csv", index=False)
    shutil.copy(sample_dir / "movies.csv", split / "train" / "movies.csv")
    return split


def check_png(path: Path) -> None:
    """A real image with content: decodes, is plot-sized, has many colours, is not blank."""
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert height >= 200 and width >= 500, (path.name, pixels.shape)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 20, path.name
    assert (rgb < 0.9).any(axis=1).mean() > 0.01, f"{path.name} is nearly blank"


def check_page(folder: Path, expected: set[str]) -> str:
    page = (folder / "report.html").read_text(encoding="utf-8")
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    on_disk = {p.name for p in folder.glob("*.png")}
    assert referenced == on_disk == expected
    for name in on_disk:
        check_png(folder / name)
    return page


def test_evaluate_split_out_trains_into_out_and_writes_the_report(
    sample_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--split", str(sample_split), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "recall@10" in printed and f"wrote {out / 'report.html'}" in printed
    assert read_artifacts(out / "artifacts").manifest["settings"]["dim"] == 16
    page = check_page(out, PLOTS)
    assert "Recall by popularity decile" in page
    assert re.search(r"the 150 most rated of [\d,]+ movies", page)
    numbers = json.loads((out / "metrics.json").read_text())
    assert len(numbers["deciles"]["model"]["hits"]) == 10
    assert numbers["model"]["ndcg@10"] > numbers["popularity"]["ndcg@10"]


def test_evaluate_split_without_out_leaves_nothing_behind(
    sample_split: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["evaluate", "--split", str(sample_split), "--epochs", "1", "--dim", "16", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "recall@10" in printed and "wrote" not in printed
    assert list(tmp_path.iterdir()) == []


def test_evaluate_artifacts_out_with_anchors_and_json(
    artifacts_dir: Path,
    sample_split: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    anchors = tmp_path / "anchors.toml"
    anchors.write_text('[EASE]\nRecall_10 = 0.31\n"NDCG@10" = 0.29\ntrain_s = 50\n')
    out = tmp_path / "report"
    test = sample_split / "test.csv"  # overlaps artifacts_dir's training data: plumbing only
    args = ["evaluate", "--artifacts", str(artifacts_dir), "--test", str(test), "--out", str(out)]
    assert main([*args, "--anchors", str(anchors), "--json", "--map-movies", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)  # the "wrote" line went to stderr
    assert set(printed) == {"model_version", "train_seconds", "model", "popularity"}
    page = check_page(out, {"metrics.png", "deciles.png", "loss.png"})
    assert "<td>EASE</td>" in page and "0.3100" in page
    assert not (artifacts_dir.parent / "sample-report").exists()


def test_report_from_artifacts_alone(
    artifacts_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "later"
    out.mkdir()
    (out / "metrics.png").write_bytes(b"from an earlier run with --test")
    assert main(["report", str(artifacts_dir), "--out", str(out), "--map-movies", "0"]) == 0
    page = check_page(out, {"loss.png"})  # the stale metrics.png is gone
    assert "--test FILE" in page and "Left out" in page
    assert not (out / "metrics.json").exists()


def test_report_of_an_artifact_without_recorded_loss(artifacts_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(artifacts_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["training"] = {}  # as a trainer that records no loss (als) writes it
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert main(["report", str(old), "--map-movies", "0"]) == 0
    page = check_page(tmp_path / "old-report", set())  # the default --out: beside it
    assert "Not recorded in this artifact" in page


def test_report_refuses_anchors_without_test(artifacts_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"x": {"ndcg@10": 0.1}}')
    args = ["report", str(artifacts_dir), "--out", str(tmp_path / "r")]
    assert main([*args, "--anchors", str(tmp_path / "a.json")]) == 1


def test_anchors_from_what_users_have(tmp_path: Path) -> None:
    plain = tmp_path / "mine.json"
    plain.write_text('{"EASE": {"Recall@10": 0.312, "hit_rate@10": 0.789, "train s": 50}}')
    earlier = tmp_path / "before" / "metrics.json"
    earlier.parent.mkdir()
    earlier.write_text(
        json.dumps(
            {
                "model_version": "v1",
                "train_seconds": 3.0,
                "model": {"ndcg@10": 0.3},
                "popularity": {"ndcg@10": 0.1},
            }
        )  # fmt: skip
    )
    table = tmp_path / "ANCHORS.md"
    table.write_text(
        "Intro text.\n\n"
        "| method | setting | Recall@10 | NDCG@10 | train s |\n"
        "|---|---|---|---|---|\n"
        "| popularity | most rated | 0.152 | 0.157 | 0.0 |\n"
        "| **EASE** (Steck 2019) | λ = 250 | **0.312** | **0.313** | 50 |\n"
        "| softmax item2vec | dim 64 | — | 0.185 | — |\n"
    )
    anchors = read_anchors([plain, earlier, table])
    assert anchors == {
        "EASE": {"recall@10": 0.312, "hitrate@10": 0.789},
        "before": {"ndcg@10": 0.3},
        "popularity (ANCHORS)": {"recall@10": 0.152, "ndcg@10": 0.157},
        "EASE (Steck 2019)": {"recall@10": 0.312, "ndcg@10": 0.313},
        "softmax item2vec": {"ndcg@10": 0.185},
    }


def test_anchors_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for text, message in (
        ("{not json", "not valid JSON"),
        ('{"x": {"ndcg@10": "high"}}', "x.ndcg@10 is 'high', not a number"),
        ('{"x": {"precision": 0.1}}', "no metrics found"),
    ):
        bad.write_text(text)
        with pytest.raises(UsageError, match=re.escape(message)):
            read_anchors([bad])
    with pytest.raises(UsageError, match="missing.toml"):
        read_anchors([tmp_path / "missing.toml"])
