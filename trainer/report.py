"""An evaluation report a person can look at: ``report.html`` with PNG plots beside it.

    movierec evaluate --split ../shared/eval/ml-latest-small --out reports/mls
    movierec report artifacts/mls --test ../shared/eval/ml-latest-small/test.csv --out DIR

Files written into the output folder (a plot whose input is missing is left out, and the page
says why):

    report.html   the plots, the numbers as tables, the model's settings
    metrics.png   the EVALUATION.md metrics: the model, the popularity baseline, any anchors
    deciles.png   recall@10 by popularity decile of the held-out movie (the long tail)
    loss.png      the training loss per epoch (the manifest's training.loss)
    map.png       the movie vectors in 2-D (PCA to 50 dimensions, then t-SNE), by genre
    metrics.json  the numbers, as ``movierec evaluate --json`` prints them, plus the deciles

The page links the PNGs by relative path instead of embedding them: each picture can be
attached or pasted on its own, the HTML stays small readable text, and copying the folder
shares the whole report. It loads nothing from the network.

Plots are drawn through matplotlib's object API (``Figure``, never pyplot), which renders
with Agg and touches no global backend state. matplotlib and scikit-learn come with the
``train`` extra; the server never imports this module.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import re
import time
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from movierec.artifacts import Artifacts, Movie
from movierec.errors import UsageError
from trainer.evaluate import METRICS, DecileRecall, Evaluation, summary

log = logging.getLogger(__name__)

REPORT = "report.html"
PLOTS = ("metrics.png", "deciles.png", "loss.png", "map.png")
# t-SNE of the most rated movies only: 6-14 s for 3,000 (the whole map, from catalogues of
# 3k, 10k or 62k movies), t-SNE alone 16 s for 5,000, 43 s for 10,000, 150 s for 20,000 (one
# thread, busy 2-core machine); a rarely rated movie's vector comes mostly from its genres.
MAP_MOVIES = 3000
LABELS = {
    "recall@10": "Recall@10",
    "recall@20": "Recall@20",
    "ndcg@10": "NDCG@10",
    "hitrate@10": "HitRate@10",
    "coverage@10": "Coverage@10",
}
# "Recall@10", "recall_10", "hit rate@10" ... -> the METRICS key
_METRIC_KEYS = {re.sub(r"[^a-z0-9]", "", m): m for m in METRICS}
# Formats, not genres: never a movie's main genre.
_NOT_GENRES = {"IMAX", "unknown", "(no genres listed)"}
MODEL_COLOUR, POPULARITY_COLOUR, ANCHOR_COLOUR = "#1f77b4", "#7f7f7f", "#aec7e8"
Anchors = dict[str, dict[str, float]]


def write_report(
    out: Path,
    artifacts: Artifacts,
    evaluation: Evaluation | None = None,
    anchors: Mapping[str, Mapping[str, float]] | None = None,
    *,
    test: str | None = None,
    map_movies: int = MAP_MOVIES,
    seed: int = 0,
) -> Path:
    """Write the report for ``artifacts`` into the folder ``out``; returns report.html's path.

    ``evaluation`` (from ``trainer.evaluate.evaluate_in_full``) adds the metrics and deciles;
    ``anchors`` ({name: {metric: value}}, see ``read_anchors``) are drawn beside the model;
    ``test`` names the held-out file on the page; ``map_movies`` caps the movies in the
    embedding map (the most rated; under 10 leaves the map out).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*PLOTS, "metrics.json"):  # a rerun into the same folder leaves no stale plot
        (out / name).unlink(missing_ok=True)
    manifest = artifacts.manifest
    settings = manifest.get("settings") or {}
    sections: list[str] = []

    if evaluation is not None:
        _save(metrics_figure(evaluation, anchors or {}), out / "metrics.png")
        sections.append(
            _section(
                "Quality (EVALUATION.md)",
                "metrics.png",
                f"{evaluation.scores['model'].users:,} evaluated users"
                + (f", held-out ratings from <code>{html.escape(test)}</code>" if test else "")
                + ". Higher is better on every panel; each panel has its own scale."
                + (" Anchors as given with <code>--anchors</code>." if anchors else ""),
                _metrics_table(evaluation, anchors or {}),
            )
        )
        model = evaluation.deciles["model"]
        _save(deciles_figure(evaluation.deciles), out / "deciles.png")
        sections.append(
            _section(
                "Recall by popularity decile (the long tail)",
                "deciles.png",
                "The catalogue's movies sorted by their number of training ratings and cut into "
                "ten equal parts; each bar is the share of the held-out liked movies in that "
                f"part that were in the user's top {model.k} (pooled over users). "
                f"{model.unindexed:,} held-out liked movies have no catalogue row (fewer than "
                f"min_count = {settings.get('min_count', '?')} liked training "
                "ratings) and cannot be recommended by either.",
                _deciles_table(evaluation.deciles),
            )
        )
        (out / "metrics.json").write_text(
            json.dumps(summary(manifest, evaluation, deciles=True), indent=2) + "\n",
            encoding="utf-8",
        )
    else:
        sections.append(
            _section(
                "Quality",
                None,
                "Not measured: give held-out ratings (<code>--test FILE</code>) for the "
                "metrics and the recall by popularity decile.",
            )
        )

    losses = _losses(manifest)
    if losses:
        _save(loss_figure(losses, str(settings.get("objective", ""))), out / "loss.png")
        sections.append(
            _section(
                "Training loss",
                "loss.png",
                "The objective's mean loss over each epoch (natural log, so nats): comparable "
                "between epochs of one run, not between objectives or datasets.",
            )
        )
    else:
        sections.append(
            _section(
                "Training loss",
                None,
                "Not recorded in this artifact's manifest (<code>training.loss</code>): it "
                "predates per-epoch losses, or its objective (als) reports none.",
            )
        )

    counts = np.bincount(artifacts.histories.rows, minlength=len(artifacts.movies))
    if map_movies < 10 or len(artifacts.movies) < 10:
        sections.append(
            _section(
                "Movie vectors in 2-D",
                None,
                "Left out (<code>--map-movies</code> under 10, or fewer than 10 movies).",
            )
        )
    else:
        start = time.perf_counter()
        figure, shown = map_figure(artifacts.vectors, artifacts.movies, counts, map_movies, seed)
        _save(figure, out / "map.png")
        log.info("embedding map of %d movies in %.1fs", shown, time.perf_counter() - start)
        which = (
            f"all {shown:,} movies"
            if shown == len(artifacts.movies)
            else f"the {shown:,} most rated of {len(artifacts.movies):,} movies"
        )
        sections.append(
            _section(
                "Movie vectors in 2-D",
                "map.png",
                f"<code>vectors.npy</code> ({which}) reduced to 50 dimensions by PCA, then to "
                "2 by t-SNE: movies near each other have similar vectors; distances between "
                "far-apart groups, and the axes, mean nothing. Colour: the movie's main genre, "
                "the rarest of its genres in the catalogue (so an animated comedy counts as "
                "Animation). Labelled: the most rated movies that fit without overlapping.",
            )
        )

    sections.append(_section("Model", None, "", _settings_table(manifest)))
    page = _page(f"movierec report: model {manifest['model_version']}", _summary(manifest),
                 sections)  # fmt: skip
    path = out / REPORT
    path.write_text(page, encoding="utf-8")
    return path


# --- anchors -------------------------------------------------------------------------------


def read_anchors(paths: Sequence[Path]) -> Anchors:
    """Reference figures to draw beside the model, {name: {metric: value}}, from any of:

    * JSON or TOML ``{name: {metric: value}}``; metric names as in EVALUATION.md, in any case
      and spelling ("NDCG@10", "ndcg_10"); other keys (e.g. training seconds) are ignored;
    * a ``movierec evaluate --json`` output or a report's ``metrics.json``: its model, named
      after the file (or, for metrics.json, its folder), to compare with an earlier run;
    * Markdown with a table whose header names metrics (``ANCHORS.md``, the README's quality
      table): one anchor per row, named by its first cell; "—" cells are skipped.
    """
    anchors: Anchors = {}
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--anchors {path}: {e.strerror or e}") from None
        if path.suffix.lower() in (".md", ".markdown"):
            found = _markdown_anchors(text)
        else:
            found = _structured_anchors(path, text)
        if not found:
            raise UsageError(
                f"--anchors {path}: no metrics found; expected {{name: {{metric: value}}}} "
                f"with metrics among {', '.join(LABELS.values())}"
            )
        for name, metrics in found.items():
            while name in anchors or name in ("model", "popularity"):
                name = (
                    f"{name} ({path.stem})" if not name.endswith(f"({path.stem})") else name + "'"
                )
            anchors[name] = metrics
    return anchors


def _structured_anchors(path: Path, text: str) -> Anchors:
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise UsageError(f"--anchors {path}: not valid {kind} ({e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--anchors {path}: expected an object {{name: {{metric: value}}}}")
    if "model_version" in data and isinstance(data.get("model"), dict):
        label = path.parent.name if path.stem == "metrics" and path.parent.name else path.stem
        data = {label: data["model"]}
    anchors: Anchors = {}
    for name, values in data.items():
        if not isinstance(values, dict):
            continue
        metrics = {}
        for key, value in values.items():
            metric = _METRIC_KEYS.get(re.sub(r"[^a-z0-9]", "", str(key).lower()))
            if metric is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"--anchors {path}: {name}.{key} is {value!r}, not a number")
            metrics[metric] = float(value)
        if metrics:
            anchors[str(name)] = metrics
    return anchors


def _markdown_anchors(text: str) -> Anchors:
    anchors: Anchors = {}
    columns: dict[int, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            columns = {}
            continue
        cells = [_plain(c) for c in line.strip("|").split("|")]
        if all(re.fullmatch(r":?-+:?", c) for c in cells if c):
            continue  # the separator row
        keys = {i: _METRIC_KEYS.get(re.sub(r"[^a-z0-9]", "", c.lower())) for i, c in
                enumerate(cells)}  # fmt: skip
        if any(keys.values()):
            columns = {i: m for i, m in keys.items() if m}  # a header row
            continue
        metrics = {}
        for i, metric in columns.items():
            # "—", an empty cell, "0.203 / 0.206": not one figure, skipped
            with contextlib.suppress(ValueError, IndexError):
                metrics[metric] = float(cells[i])
        if cells and cells[0] and metrics:
            anchors[cells[0]] = metrics
    return anchors


def _plain(cell: str) -> str:
    """A Markdown table cell as text: no bold, italics or code marks."""
    return re.sub(r"[*_`]{1,2}(.+?)[*_`]{1,2}", r"\1", cell.strip()).strip()


# --- figures -------------------------------------------------------------------------------


def metrics_figure(evaluation: Evaluation, anchors: Mapping[str, Mapping[str, float]]) -> Figure:
    """One horizontal bar panel per metric, every system on the same rows, sorted by NDCG@10."""
    rows: dict[str, Mapping[str, float]] = {
        name: s.as_dict() for name, s in evaluation.scores.items()
    }
    rows.update(anchors)
    order = sorted(rows, key=lambda n: rows[n].get("ndcg@10", -1.0))  # best at the top
    colours = [
        MODEL_COLOUR if n == "model" else POPULARITY_COLOUR if n == "popularity" else ANCHOR_COLOUR
        for n in order
    ]
    fig = Figure(figsize=(13, 1.6 + 0.32 * len(order)), layout="constrained")
    axes = fig.subplots(1, len(METRICS), sharey=True)
    y = np.arange(len(order))
    for ax, metric in zip(axes, METRICS, strict=True):
        values = [rows[n].get(metric, math.nan) for n in order]
        ax.barh(y, np.nan_to_num(values), color=colours, height=0.7)
        top = max((v for v in values if not math.isnan(v)), default=1.0) or 1.0
        ax.set_xlim(0, top * 1.3)
        for yi, v in zip(y, values, strict=True):
            text = "—" if math.isnan(v) else f"{v:.3f}"
            ax.text(0 if math.isnan(v) else v, yi, " " + text, va="center", fontsize=8)
        ax.set_title(LABELS[metric], fontsize=11)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].set_yticks(y, [_short(n) for n in order], fontsize=9)
    for label, name in zip(axes[0].get_yticklabels(), order, strict=True):
        if name == "model":
            label.set_fontweight("bold")
    users = evaluation.scores["model"].users
    fig.suptitle(f"Model vs popularity baseline{' and anchors' * bool(anchors)} "
                 f"({users:,} evaluated users)", fontsize=13)  # fmt: skip
    return fig


def deciles_figure(deciles: Mapping[str, DecileRecall]) -> Figure:
    """Grouped bars: recall@k per popularity decile, model and popularity side by side."""
    model = deciles["model"]
    fig = Figure(figsize=(11, 5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(model.relevant))
    width = 0.4
    styles = {"model": MODEL_COLOUR, "popularity": POPULARITY_COLOUR}
    for i, (name, d) in enumerate(deciles.items()):
        values = np.nan_to_num(d.recall)
        offset = (i - (len(deciles) - 1) / 2) * width
        bars = ax.bar(x + offset, values, width, label=name, color=styles.get(name, ANCHOR_COLOUR))
        ax.bar_label(bars, [f"{v:.3f}" if v else "0" for v in values], fontsize=7, padding=2)
    ax.set_xticks(
        x,
        [
            f"{d + 1}\n{lo}" + (f"–{hi}" if hi != lo else "") + f"\nn={n:,}"
            for d, (lo, hi, n) in enumerate(
                zip(model.fewest, model.most, model.relevant, strict=True)
            )
        ],
        fontsize=8,
    )
    ax.set_xlabel(
        "popularity decile of the held-out movie (1 = least rated tenth of the catalogue),\n"
        "its movies' training ratings, and n = held-out liked movies in it",
        fontsize=9,
    )
    ax.set_ylabel(f"recall@{model.k} within the decile")
    top = max((v for d in deciles.values() for v in np.nan_to_num(d.recall)), default=0.0)
    ax.set_ylim(0, max(top * 1.15, 0.05))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", frameon=False)
    total = sum(model.relevant) + model.unindexed
    if model.unindexed:
        ax.text(
            0.01, 0.80,
            f"not shown: {model.unindexed:,} of {total:,} held-out liked movies "
            f"({model.unindexed / total:.0%}) have no catalogue row",
            transform=ax.transAxes, fontsize=8, color="#555555",
        )  # fmt: skip
    ax.set_title(f"Does the model find the long tail? Recall@{model.k} by popularity decile")
    return fig


def loss_figure(losses: Sequence[float], objective: str) -> Figure:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    epochs = np.arange(1, len(losses) + 1)
    ax.plot(epochs, losses, marker="o", markersize=3.5, color=MODEL_COLOUR)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (nats)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, len(losses) + 0.5)
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    drop = f"{losses[0]:.3f} → {losses[-1]:.3f}" if len(losses) > 1 else f"{losses[0]:.3f}"
    ax.set_title(
        f"Training loss per epoch{f' ({objective})' if objective else ''}: {drop}", fontsize=12
    )
    return fig


def map_figure(
    vectors: npt.NDArray[np.float32],
    movies: Sequence[Movie],
    counts: npt.NDArray[np.int64],
    limit: int = MAP_MOVIES,
    seed: int = 0,
    labels: int = 14,
) -> tuple[Figure, int]:
    """t-SNE map of the ``limit`` most rated movies, coloured by main genre; returns the
    figure and how many movies it shows."""
    rows = np.sort(np.argsort(-counts, kind="stable")[:limit])
    xy = project(np.asarray(vectors[rows], dtype=np.float32), seed)
    genre = main_genres(movies)
    shown = [genre[r] for r in rows]
    palette = [g for g, _ in Counter(g for g in shown if g).most_common(10)]
    colours = dict(zip(palette, _TAB10, strict=False))
    fig = Figure(figsize=(11, 8), layout="constrained")
    ax = fig.subplots()
    other = np.array([g not in colours for g in shown])
    ax.scatter(xy[other, 0], xy[other, 1], s=7, color="#c7c7c7", linewidths=0,
               label=f"other ({other.sum():,})")  # fmt: skip
    for g in palette:
        mask = np.array([s == g for s in shown])
        ax.scatter(xy[mask, 0], xy[mask, 1], s=9, color=colours[g], linewidths=0, alpha=0.85,
                   label=f"{g} ({mask.sum():,})")  # fmt: skip
    _label_famous(ax, xy, rows, counts, movies, labels)
    ax.set_xticks([])
    ax.set_yticks([])
    handles, names = ax.get_legend_handles_labels()
    order = [*range(1, len(handles)), 0]  # genres by size, "other" last
    ax.legend(
        [handles[i] for i in order],
        [names[i] for i in order],
        title="main genre",
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        frameon=False,
        markerscale=2.5,
    )
    which = "all" if len(rows) == len(movies) else f"the {len(rows):,} most rated of"
    ax.set_title(f"Movie vectors in 2-D (t-SNE), {which} {len(movies):,} movies", fontsize=12)
    return fig, len(rows)


def project(vectors: npt.NDArray[np.float32], seed: int = 0) -> npt.NDArray[np.float64]:
    """2-D coordinates: PCA to at most 50 dimensions (denoises, and makes t-SNE's neighbour
    search cheap), then Barnes-Hut t-SNE with 500 iterations (1,000 gave the same picture in
    twice the time on ml-latest-small).

    One thread: t-SNE's OpenMP loops synchronise every iteration, and on a shared 2-core
    machine two threads took 30 s where one took 5.7 s (2,982 movies)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n, dim = vectors.shape
    with threadpool_limits(1):
        x = PCA(50, random_state=seed).fit_transform(vectors) if min(n, dim) > 50 else vectors
        tsne = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", max_iter=500,
                    random_state=seed)  # fmt: skip
        result: npt.NDArray[np.float64] = tsne.fit_transform(x)
    return result


def main_genres(movies: Sequence[Movie]) -> list[str | None]:
    """Each movie's most specific genre: the rarest of its genres in the catalogue (formats
    such as IMAX are not genres); None for a movie without one."""
    freq = Counter(g for m in movies for g in m.genres if g not in _NOT_GENRES)
    return [
        min((g for g in m.genres if g in freq), key=lambda g: (freq[g], g), default=None)
        for m in movies
    ]


def _label_famous(
    ax: Axes,
    xy: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64],
    movies: Sequence[Movie],
    limit: int,
) -> None:
    """Name the most rated movies, skipping any label that would overlap one already placed
    or leave the axes (measured on the rendered figure, not guessed)."""
    fig = ax.get_figure()
    assert isinstance(fig, Figure)
    fig.draw_without_rendering()  # settle the layout before measuring text
    renderer = FigureCanvasAgg(fig).get_renderer()  # type: ignore[no-untyped-call]
    frame = ax.get_window_extent(renderer)
    middle = (xy[:, 0].min() + xy[:, 0].max()) / 2
    placed: list[Bbox] = []
    for i in np.argsort(-counts[rows], kind="stable"):
        if len(placed) == limit:
            break
        title = movies[int(rows[i])].title
        title = title if len(title) <= 32 else title[:31] + "…"
        right = xy[i, 0] > middle  # labels point inwards
        text = ax.annotate(title, xy[i], xytext=(-5 if right else 5, 3),
                           textcoords="offset points", ha="right" if right else "left",
                           fontsize=7.5, color="#222222")  # fmt: skip
        box = text.get_window_extent(renderer).padded(2)
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
        if not inside or any(box.overlaps(b) for b in placed):
            text.remove()
            continue
        placed.append(box)
        ax.scatter(
            xy[i, 0], xy[i, 1], s=20, facecolors="none", edgecolors="#222222", linewidths=0.8
        )


_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79"]  # fmt: skip


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=110)


def _short(name: str, width: int = 42) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _losses(manifest: Mapping[str, Any]) -> list[float]:
    """training.loss if it is a list of finite numbers; [] otherwise (older artifacts)."""
    training = manifest.get("training")
    loss = training.get("loss") if isinstance(training, dict) else None
    if not isinstance(loss, list) or not all(
        isinstance(v, int | float) and math.isfinite(v) for v in loss
    ):
        return []
    return [float(v) for v in loss]


# --- HTML ----------------------------------------------------------------------------------


def _section(title: str, image: str | None, caption: str, table: str = "") -> str:
    img = f'<img src="{image}" alt="{html.escape(title)}">' if image else ""
    note = f'<p class="{"caption" if image else "note"}">{caption}</p>' if caption else ""
    return f"<section><h2>{html.escape(title)}</h2>{img}{note}{table}</section>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any, tag: str) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        cls = ' class="num"' if isinstance(v, int | float) else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_table(evaluation: Evaluation, anchors: Mapping[str, Mapping[str, float]]) -> str:
    rows: list[list[Any]] = [[name, *s.as_dict().values()] for name, s in evaluation.scores.items()]
    rows += [[name, *(m.get(k, "—") for k in METRICS)] for name, m in anchors.items()]
    return _table(["", *LABELS.values()], rows)


def _deciles_table(deciles: Mapping[str, DecileRecall]) -> str:
    model = deciles["model"]
    rows: list[list[Any]] = [
        [
            d + 1,
            f"{lo}–{hi}",
            n,
            *(deciles[s].hits[d] for s in deciles),
            *(deciles[s].recall[d] for s in deciles),
        ]  # fmt: skip
        for d, (lo, hi, n) in enumerate(zip(model.fewest, model.most, model.relevant, strict=True))
    ]
    header = [
        "decile",
        "training ratings",
        "held-out liked",
        *(f"{s} hits" for s in deciles),
        *(f"{s} recall@{model.k}" for s in deciles),
    ]
    return _table(header, rows)


def _settings_table(manifest: Mapping[str, Any]) -> str:
    counts = manifest.get("counts", {})
    facts: list[tuple[str, Any]] = [
        ("model_version", manifest.get("model_version")),
        ("created_at", manifest.get("created_at")),
        ("movies / users / ratings",
         f"{counts.get('movies', '?'):,} / {counts.get('users', '?'):,} / "
         f"{counts.get('ratings', '?'):,}" if counts else "?"),
        ("dim", manifest.get("dim")),
        ("index", manifest.get("index", {}).get("type")),
        ("aggregation", json.dumps(manifest.get("aggregation"))),
    ]  # fmt: skip
    facts += sorted(manifest.get("settings", {}).items())
    training = {k: v for k, v in (manifest.get("training") or {}).items() if k != "loss"}
    facts += [(f"training.{k}", json.dumps(v)) for k, v in sorted(training.items())]
    return _table(["setting", "value"], [[k, "" if v is None else str(v)] for k, v in facts])


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
img { max-width: 100%; border: 1px solid #ddd; }
.caption, .note { color: #444; max-width: 60em; } .note { font-style: italic; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _summary(manifest: Mapping[str, Any]) -> str:
    """One line: what the model was trained on and how."""
    settings, counts = manifest.get("settings", {}), manifest.get("counts", {})
    parts = [
        f"Trained on <code>{html.escape(str(settings['source']))}</code>"
        if "source" in settings
        else "Trained",
        f"{counts['movies']:,} movies, {counts['users']:,} users, {counts['ratings']:,} ratings"
        if {"movies", "users", "ratings"} <= counts.keys()
        else "",
        ", ".join(
            f"{k} {html.escape(str(settings[k]))}"
            for k in ("objective", "dim", "epochs")
            if k in settings
        ),
        f"{settings['train_seconds']} s of training" if "train_seconds" in settings else "",
    ]
    return "<p>" + "; ".join(p for p in parts if p) + ".</p>"


def _page(title: str, summary: str, sections: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{summary}\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
