"""The ``movierec`` command. Each subcommand imports only its own side, so serving and
querying never load torch or pandas.

    movierec demo                                   # sample -> train -> serve, the quickstart
    movierec train --data DIR --out ARTIFACTS       # any MovieLens layout, detected
    movierec train --interactions FILE [--items FILE] --out ARTIFACTS  # your own log
    movierec serve --artifacts ARTIFACTS --port 50051
    movierec recommend --target localhost:50051 --user 1 -k 10
    movierec similar --target localhost:50051 --movie 1 -k 10
    movierec evaluate --split SPLIT --out DIR         # train, score, DIR/report.html
    movierec report ARTIFACTS --test FILE --out DIR  # a report for an existing model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from movierec import __version__
from movierec.errors import MovierecError, StatusError, UsageError
from movierec.ids import as_key
from movierec.logs import configure_logging

log = logging.getLogger("movierec")
DEFAULT_TARGET = "localhost:50051"
RELOAD_TIMEOUT = 120.0
# Optional dependencies by the extra that installs them, for a one-line hint instead of a
# traceback when a command needs more than this installation has.
_EXTRAS = {
    **dict.fromkeys(("numpy", "faiss", "prometheus_client", "grpc_reflection",
                     "redis"), "server"),
    **dict.fromkeys(("torch", "pandas", "tqdm", "matplotlib", "sklearn", "pyarrow"), "train"),
    "implicit": "als",
}  # fmt: skip
# The extra that gives a whole command what it needs ([train] includes [server]).
_COMMAND_EXTRAS = {**dict.fromkeys(("train", "evaluate", "report", "sample", "demo", "data"),
                                   "train"), "serve": "server", "events": "server"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = _parser(_train_file(argv))
    except UsageError as e:  # a --config file that cannot work
        print(f"movierec train: error: {e}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to re-run it under torchrun
    configure_logging(logging.DEBUG if args.verbose else logging.INFO, args.log_format == "json")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        result: int = args.handler(args)
        return result
    except StatusError as e:  # a call the server refused: its status code says how
        print(f"movierec {args.command}: {e.code}: {e}", file=sys.stderr)
        return 1
    except (MovierecError, OSError) as e:
        print(f"movierec {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        package = (e.name or "").partition(".")[0]
        if package not in _EXTRAS:
            raise
        extra = _EXTRAS[package]  # the als objective's extra, or what the whole command needs
        extra = extra if extra == "als" else _COMMAND_EXTRAS.get(args.command, extra)
        print(f"movierec {args.command}: needs {package}, which this installation lacks: "
              f"pip install 'movierec[{extra}]'", file=sys.stderr)  # fmt: skip
        return 1


# --- training side -----------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> Any:
    from trainer.config import TrainConfig

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**fields)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _train(args: argparse.Namespace) -> int:
    from trainer import distributed
    from trainer.interactions import Columns
    from trainer.pipeline import run_training

    config = _train_config(args)
    if args.out is None:
        raise UsageError("--out is required (the artifact directory to write)")
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume needs --checkpoint")
    if (args.data is None) == (args.interactions is None):
        raise UsageError("give --data DIR (a MovieLens folder) or --interactions FILE")
    if args.items is not None and args.interactions is None:
        raise UsageError("--items goes with --interactions")
    columns = Columns(**{name: getattr(args, f"{name}_col") for name in _COLUMNS})
    if args.data is not None and columns != Columns():
        raise UsageError("--*-col flags name the columns of --interactions/--items files")
    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.nproc_per_node > 1 and args.tune is not None:
        raise UsageError("--tune runs in one process (no --nproc-per-node)")
    if args.nproc_per_node > 1 and not distributed.launched():
        if config.objective == "als":
            raise UsageError("the als objective trains in one process (no --nproc-per-node)")
        distributed.device(config.device)  # refused here once rather than in every process
        distributed.launch(args.nproc_per_node, args.argv)  # rank 0 prints what it wrote
        return 0
    if distributed.rank() > 0:  # one log of the run: rank 0's
        logging.getLogger().setLevel(logging.WARNING)
    tune = None
    if args.tune is not None:
        from trainer.tune import parse_budget

        tune = parse_budget(args.tune)
    manifest = run_training(
        args.out,
        config,
        data=args.data,
        interactions=args.interactions,
        items=args.items,
        columns=columns,
        show_progress=not args.quiet,
        checkpoint=args.checkpoint,
        resume=args.resume,
        tune=tune,
    )
    if manifest is None:  # another rank wrote it
        return 0
    print(_data_summary(manifest["training"].get("data", {})))
    if "tune" in manifest["training"]:
        from trainer.tune import table

        print(table(manifest["training"]["tune"]))
    counts = manifest["counts"]
    world = manifest["training"].get("world_size", 1)
    unindexed = counts["catalogue"] - counts["movies"]
    print(
        f"wrote {args.out}: model {manifest['model_version']}, {counts['movies']} movies "
        f"indexed"
        + (f" ({unindexed} more catalogued without a vector)" if unindexed else "")
        + f", {counts['users']} users, dim {manifest['dim']}, "
        f"trained in {manifest['settings']['train_seconds']:.1f}s"
        f" on {manifest['training'].get('device', 'cpu')}"
        + (f" in {world} processes" if world > 1 else "")
    )
    return 0


def _data_summary(facts: dict[str, Any]) -> str:
    """'read 7 interactions of 3 users and 3 items (...); ...' from the manifest's facts."""
    if not facts:
        return "read the data"

    def n(count: int, noun: str) -> str:
        return f"{count:,} {noun}{'' if count == 1 else 's'}"

    line = f"read {n(facts['interactions'], 'interaction')} of {n(facts['users'], 'user')} " \
        f"and {n(facts['items'], 'item')}"  # fmt: skip
    if facts.get("implicit"):
        line += (f" (no rating column: every row a positive; {n(facts['repeats_merged'], 'repeat')}"
                 " of a user and item added weight)")  # fmt: skip
    unknown = facts.get("items_without_metadata", 0)
    if unknown == facts["items"]:
        line += "; no items file: items are titled by their id"
    elif unknown:
        line += (f"; {n(unknown, 'item')} not in the items file (named by "
                 f"{n(facts['interactions_without_metadata'], 'interaction')}) kept, titled by "
                 "their id")  # fmt: skip
    return line


def _download(args: argparse.Namespace) -> int:
    from trainer.download import download

    folder = download(args.release, args.dest, args.base_url, show_progress=not args.quiet)
    print(f"{folder}: ready. Train on it with:\n"
          f"  movierec train --data {folder} --out artifacts/{args.release}")  # fmt: skip
    return 0


def _sample(args: argparse.Namespace) -> int:
    from trainer.sample import make_sample

    folder = make_sample(seed=args.seed).write(args.out)
    print(f"wrote the built-in sample to {folder}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The quickstart: generate the sample, train on it, serve it."""
    from trainer.pipeline import run_training
    from trainer.sample import make_sample

    workdir = Path(args.workdir)
    data = make_sample(seed=0).write(workdir / "sample")
    manifest = run_training(
        workdir / "artifacts", _train_config(args), data=data, show_progress=not args.quiet
    )
    assert manifest is not None  # one process: it wrote the artifact
    print(f"trained model {manifest['model_version']} on the built-in sample ({data})")
    args.artifacts = workdir / "artifacts"
    return _serve(args)


def _evaluate(args: argparse.Namespace) -> int:
    """Score a model (trained first with --split); with --out also write the report there."""
    if (args.split is None) == (args.artifacts is None):
        raise UsageError("give --artifacts ART --test FILE, or --split DIR (train, then score)")
    if args.artifacts is not None and args.test is None:
        raise UsageError("--artifacts needs --test, the held-out ratings file")
    from trainer.pipeline import run_training

    anchors = _read_anchors(args)  # before training: a bad file fails in a second, not minutes
    with tempfile.TemporaryDirectory(prefix="movierec-evaluate-") as tmp:
        if args.split is not None:
            from trainer.movielens import split_test_file

            # the split's own layout: test.csv, test.dat or test.data (found before training)
            args.test = args.test or split_test_file(args.split)
            artifacts = (args.out or Path(tmp)) / "artifacts"
            run_training(
                artifacts, _train_config(args), data=args.split / "train",
                show_progress=not args.quiet,
            )  # fmt: skip
            args.artifacts = artifacts
        _score_and_report(args, args.out, anchors)
    return 0


def _report(args: argparse.Namespace) -> int:
    """A report from an existing artifact directory (the metrics too with --test)."""
    if args.anchors and args.test is None:
        raise UsageError("--anchors needs --test: anchors are drawn beside the model's metrics")
    out = args.out or args.artifacts.resolve().with_name(args.artifacts.resolve().name + "-report")
    _score_and_report(args, out, _read_anchors(args))
    return 0


def _read_anchors(args: argparse.Namespace) -> Any:
    if not args.anchors:
        return {}
    from trainer.report import read_anchors

    return read_anchors(args.anchors)


def _score_and_report(args: argparse.Namespace, out: Path | None, anchors: Any) -> None:
    """Evaluate args.artifacts on args.test (if given), print the figures, and write the
    report into ``out`` (if given)."""
    from server.app import load_recommender
    from trainer import movielens
    from trainer.evaluate import evaluate_in_full, format_table, summary
    from trainer.report import write_report

    recommender = load_recommender(args.artifacts)
    evaluation = None
    if args.test is not None:
        evaluation = evaluate_in_full(recommender, movielens.read_ratings(args.test))
        manifest = recommender.artifacts.manifest
        if args.json:
            print(json.dumps(summary(manifest, evaluation), indent=2))
        else:
            print(format_table(evaluation.scores))
    if out is not None:
        page = write_report(
            out, recommender.artifacts, evaluation, anchors,
            test=str(args.test) if args.test else None, map_movies=args.map_movies,
        )  # fmt: skip
        print(f"wrote {page}", file=sys.stderr if args.json else sys.stdout)


def _events_export(args: argparse.Namespace) -> int:
    from server.events import export_events

    rows = export_events(args.events, args.out, args.base)
    print(
        f"wrote {args.out}: {rows} rows from events"
        + (f" after {args.base}'s" if args.base else "")
    )
    return 0


# --- serving side --------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    # One BLAS thread per call, as FAISS gets one OpenMP thread (server.app): calls and
    # processes are the parallelism. numpy reads this once, when it loads (just below): an ALS
    # model's per-call solve otherwise spun every core (p50 168 ms vs 2.7 ms beside one busy
    # core). The image sets it too.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from server.app import remember_hup_until_serving
    from server.processes import run

    remember_hup_until_serving()  # before the slow part: loading the model
    options = _server_options(args)
    host = "localhost" if options.host in ("127.0.0.1", "::1") else options.host
    tokens = bool(options.tokens_file or os.environ.get("MOVIEREC_TOKENS"))
    flags = " --tls-ca CA.pem" * bool(options.tls_cert) + " --token TOKEN" * tokens

    def ready(port: int, health_port: int | None, metrics_port: int | None) -> None:
        target, movierec = f"{host}:{port}", _this_command()
        processes = f" in {options.processes} processes" if options.processes > 1 else ""
        print(
            f"movierec is serving {args.artifacts} on {options.address(port)}{processes}"
            f"{' (TLS)' if options.tls_cert else ''}"
            f"{', bearer tokens required' if tokens else ''}. Try:\n"
            f"  {movierec} recommend --target {target}{flags} --user 1 -k 10\n"
            f"  {movierec} recommend --target {target}{flags} --movies 1,2,3 --genre Comedy\n"
            f"  {movierec} similar   --target {target}{flags} --movie 1 -k 10\n"
            + (
                f'  grpcurl -plaintext -d \'{{"user_id": 1, "k": 5}}\' {target} '
                "movierec.v1.RecommenderService/Recommend\n"
                if not options.tls_cert and not tokens
                else ""
            )
            + (f"  {movierec} health --target {host}:{health_port}\n" if health_port else "")
            + (f"  curl -s {options.metrics_host}:{metrics_port}/metrics\n" if metrics_port else "")
            + "Reload the model with SIGHUP; stop with Ctrl-C.",
            flush=True,
        )

    return run(Path(args.artifacts), options, _open_store, ready)


def _this_command() -> str:
    """How to run movierec from here: 'movierec' when it is on PATH, else this interpreter's
    copy (e.g. '.venv/bin/movierec' after `make demo`, which does not activate the venv)."""
    on_path = shutil.which("movierec")
    mine = Path(sys.executable).parent / "movierec"
    if on_path and Path(on_path).resolve() == mine.resolve():
        return "movierec"
    if not mine.exists():
        return "movierec"
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


def _server_options(args: argparse.Namespace) -> Any:
    from server.options import ServerOptions, settings

    return ServerOptions(**{name: getattr(args, name) for name, *_ in settings()})


def _open_store(options: Any) -> Any:
    from server.events import open_store

    return open_store(options.events, max_events_per_user=options.max_events_per_user)


def _recommend(args: argparse.Namespace) -> int:
    if (args.user is None) == (args.movies is None):
        raise UsageError("give exactly one of --user or --movies")
    with _client(args) as client:
        response = client.recommend(
            args.user, movies=args.movies or (), weights=args.weights or (),
            dislikes=args.dislike or (), k=args.k, filter=_filter(args),
            include_watched=args.include_watched, explain=args.explain,
            diversity=args.diversity,
        )  # fmt: skip
    _print_results(response, args.json)
    ignored = [*response.ignored_movie_ids, *response.ignored_movie_keys]
    if ignored and not args.json:
        print(f"ignored unknown movie ids: {ignored}")
    return 0


def _similar(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_results(client.similar(args.movie, args.k, _filter(args)), args.json)
    return 0


def _movie(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.movie(args.movie))
    return 0


def _events(args: argparse.Namespace) -> int:
    from movierec.client import event

    with _client(args) as client:
        r = client.record_events([event(args.user, args.movie, args.type, args.rating)])
    ignored = [*r.ignored_movie_ids, *r.ignored_movie_keys]
    print(f"recorded {r.recorded} event(s)" + (f"; unknown movie {ignored[0]}" if ignored else ""))
    return 0


def _client(args: argparse.Namespace) -> Any:
    from movierec.client import Client

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    if bool(args.client_cert) != bool(args.client_key):
        raise UsageError("--client-cert and --client-key go together")
    cert, key = read(args.client_cert), read(args.client_key)
    return Client(
        args.target,
        timeout=args.timeout,
        token=args.token,
        tls=args.tls,
        tls_ca=read(args.tls_ca),
        client_cert=(cert, key) if cert and key else None,
    )


def _filter(args: argparse.Namespace) -> Any:
    from movierec.client import make_filter

    low, high = args.years or (0, 0)
    return make_filter(args.genre or (), args.not_genre or (), low, high, args.exclude or (),
                       args.allow or ())  # fmt: skip


def _reload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        r = client.reload_model()
    print(f"serving {r.model_version} (was {r.previous_model_version}), loaded in "
          f"{r.load_seconds:.2f}s")  # fmt: skip
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _because(r: Any) -> str:
    """'Toy Story (1995) 0.21, Up (2009) 0.13' from an explained recommendation."""
    return ", ".join(f"{c.title} {c.share:.2f}" for c in r.explanation.top)


def _print_json(message: Any) -> None:
    """Protobuf messages as JSON with the proto's own (snake_case) field names."""
    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))


def _print_results(response: Any, as_json: bool) -> None:
    if as_json:
        _print_json(response)
        return
    rows = [
        (r.movie_key, r.title, "|".join(r.genres), f"{r.similarity:.4f}", _because(r))
        for r in response.recommendations
    ]
    explained = any(row[4] for row in rows)
    header = ("MovieId", "Title", "Genres", "Similarity", "Because of" if explained else "")
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(header)
    ]
    for row in (header, *rows):
        print(
            "  ".join(
                cell.rjust(w) if i in (0, 3) else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    popular = any(r.reason == 2 for r in response.recommendations)  # POPULAR
    note = ", fewer passed the filter" * response.exhausted + (
        ", most popular: no history to go on" * popular)  # fmt: skip
    print(f"(model {response.model_version}{note})")


# --- argument parsing ----------------------------------------------------------------------


def _key(text: str) -> int | str:
    """An id as typed: an integer when it is one written plainly ("42", an int64), else a
    string id of your own ("042", "+7" and "1_0" are SKUs, not 42, 7 and 10; the server
    treats "42" and 42 alike)."""
    number = as_key(text, "int")
    return number if number is not None else text


def _keys(text: str) -> list[int | str]:
    return [_key(x) for x in text.replace(",", " ").split()]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _years(text: str) -> tuple[int, int]:
    """'1990-1999', '1990-' or '-1999'."""
    low, dash, high = text.partition("-")
    try:
        if not dash:
            raise ValueError
        return _int32(low or "0"), _int32(high or "0")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected years like 1990-1999, got {text!r}") from None


def _count(text: str) -> int:
    try:
        return _int32(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None


def _int32(text: str) -> int:
    """A number >= 0 that the proto's int32 fields (k, explain, years) can carry; the server
    says which range each allows."""
    value = int(text)
    if not 0 <= value < 2**31:
        raise ValueError(text)
    return value


# train --interactions/--items column flags (--user-col ...) and what is looked for without
# them (trainer.interactions and trainer.items list the names)
_COLUMNS = {
    "user": "user_id, userId, user, ...",
    "item": "item_id, itemId, movie_id, movieId, item, ... (items file: also id)",
    "rating": "rating or stars; none: implicit ('' ignores one)",
    "time": "timestamp, time, ts, ...; none: file order ('' ignores one)",
    "title": "title or name (items file)",
    "genres": "genres, genre, categories or category (items file)",
    "year": "year or release_year (items file); none: a year in the title",
}
_PATH_SETTINGS = ("interactions", "items", "data", "out", "checkpoint")


def _train_file(argv: Sequence[str] | None) -> dict[str, Any]:
    """The settings in ``train --config FILE``, read before the command line is parsed so
    that they become the defaults the flags override. Relative paths in it are relative to
    the file."""
    import tomllib

    words = list(sys.argv[1:] if argv is None else argv)
    if "train" not in words:
        return {}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    path = pre.parse_known_args(words[words.index("train") + 1 :])[0].config
    if path is None:
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    settings = {key.replace("-", "_"): value for key, value in raw.items()}
    for key in _PATH_SETTINGS:
        if isinstance(settings.get(key), str):
            settings[key] = str(path.parent / settings[key])  # absolute paths stay absolute
    settings["config"] = str(path)
    return settings


def _apply_file_settings(p: argparse.ArgumentParser, settings: Mapping[str, Any]) -> None:
    """Make a --config file's settings the train command's defaults, refusing a key that is
    no option of it or a value of the wrong type."""
    actions = {a.dest: a for a in p._actions if a.dest not in ("help", argparse.SUPPRESS)}
    where = settings.get("config", "--config")
    for key, value in settings.items():
        action = actions.get(key)
        if action is None:
            raise UsageError(
                f"{where}: {key!r} is not a train option; use one of {', '.join(sorted(actions))}"
            )
        flag = action.option_strings[0]
        if isinstance(value, bool):
            ok = isinstance(action.default, bool)
        elif isinstance(value, int | float):
            ok = action.type is float or (action.type is int and isinstance(value, int))
        else:
            ok = isinstance(value, str)
        if not ok:
            raise UsageError(f"{where}: {key} = {value!r} does not fit {flag}")
    p.set_defaults(**settings)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from trainer.config import options

    group = p.add_argument_group("model settings (stored in the manifest)")
    for name, kind, default, help_text in options():
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=default, help=help_text)  # fmt: skip
        else:
            group.add_argument(flag, dest=name, type=kind, default=default, help=help_text)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_client_options(p: argparse.ArgumentParser, timeout: float) -> None:
    p.add_argument(
        "--target",
        default=os.environ.get("MOVIEREC_TARGET", DEFAULT_TARGET),
        help="server host:port (env MOVIEREC_TARGET)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("MOVIEREC_TOKEN"),
        help="bearer token, if the server requires one (env MOVIEREC_TOKEN)",
    )
    p.add_argument("--timeout", type=float, default=timeout, help="seconds before giving up")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    p.add_argument("--tls-ca", type=Path, help="use TLS, trusting this PEM CA")
    p.add_argument("--client-cert", type=Path, help="mutual TLS: this client certificate")
    p.add_argument("--client-key", type=Path, help="mutual TLS: the client certificate's key")


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--anchors", type=Path, action="append", default=[], metavar="FILE",
        help="reference figures to plot beside the model (repeatable): JSON or TOML "
        "{name: {metric: value}}, an earlier run's metrics.json or --json output, or a "
        "Markdown table such as ANCHORS.md",
    )  # fmt: skip
    p.add_argument(
        "--map-movies", type=int, default=3000, metavar="N",
        help="the N most rated movies go into the embedding map (t-SNE: 7-14 s for 3,000, "
        "~45 s for 10,000); 0 leaves the map out",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    """Flags from server.options.ServerOptions: one place states each default."""
    from server.options import from_environment, settings

    group = p.add_argument_group("server settings (each also from its environment variable)")
    for name, kind, default, help_text, env in settings():
        flag = f"--{name.replace('_', '-')}"
        value = from_environment(name, kind, default, env)
        group.add_argument(flag, dest=name, type=kind, default=value,
                           help=help_text + (f" (env {env})" if env else ""))  # fmt: skip


def _parser(train_file: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``train_file`` holds the settings of ``train --config``."""
    train_file = train_file or {}
    parser = argparse.ArgumentParser(prog="movierec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"movierec {__version__}")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("MOVIEREC_LOG_FORMAT", "text"),
        help="one readable line per event, or one JSON object per line (env MOVIEREC_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        p.set_defaults(handler=handler)
        return p

    p = command(
        "train", _train, "train embeddings on your interactions or MovieLens, export artifacts"
    )
    p.add_argument(
        "--config", type=Path, metavar="FILE",
        help="a TOML file of these options (keys as the flags: interactions = \"log.csv\", "
        "user_col = \"visitor\", epochs = 20); flags given as well win",
    )  # fmt: skip
    p.add_argument("--data", type=Path, help="a MovieLens folder (layout detected)")
    p.add_argument(
        "--interactions", type=Path, metavar="FILE",
        help="who interacted with what: CSV, TSV (with a header), JSON lines or Parquet; "
        ".gz/.bz2 text too; without a rating "
        "column every row is a positive and repeats add weight",
    )  # fmt: skip
    p.add_argument(
        "--items", type=Path, metavar="FILE",
        help="optional catalogue for --interactions: an id column, optionally title, genres "
        "('|'-separated), year",
    )  # fmt: skip
    for name, found in _COLUMNS.items():
        p.add_argument(f"--{name}-col", metavar="NAME", help=f"column name; default: {found}")
    p.add_argument("--out", type=Path, required=not train_file.get("out"),
                   help="artifact directory to write")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, help="save training state here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument(
        "--nproc-per-node", type=int, default=1, metavar="N",
        help="train in N processes on this machine (PyTorch DDP, each on its share of every "
        "step; a GPU each with --device cuda). Several machines: torchrun, see README",
    )  # fmt: skip
    p.add_argument(
        "--tune",
        nargs="?",
        const="10m",
        metavar="BUDGET",
        help="first search the settings on a holdout of the data for BUDGET (600, 90s, 10m, "
        "1h; 10m if not given), then train on all of it with the best",
    )
    _add_train_options(p)
    _apply_file_settings(p, train_file)

    p = command("evaluate", _evaluate, "score a model under docs/EVALUATION.md (recall, NDCG, ...)")
    p.add_argument("--artifacts", type=Path, help="a trained artifact directory")
    p.add_argument("--test", type=Path, help="held-out ratings file")
    p.add_argument(
        "--split", type=Path, help="a split folder (train/ + test.csv, .dat or .data): train first"
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR",
        help="write the report here (report.html, PNG plots, metrics.json); with --split the "
        "model is trained into DIR/artifacts (without --out: a temporary folder, table only)",
    )  # fmt: skip
    _add_report_options(p)
    _add_train_options(p)

    p = command("report", _report, "an HTML report with plots from an existing artifact directory")
    p.add_argument("artifacts", type=Path, help="a trained artifact directory")
    p.add_argument("--test", type=Path, help="held-out ratings file: adds metrics and deciles")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write it (default: ARTIFACTS-report)"
    )
    _add_report_options(p)

    p = command("data", _download, "fetch MovieLens data: movierec data download RELEASE")
    p.add_argument("action", choices=["download"])
    p.add_argument("release", help="ml-latest-small, ml-100k, ml-1m or ml-25m")
    p.add_argument("--dest", type=Path, default=Path("data"), help="where to unpack it")
    p.add_argument(
        "--base-url",
        help="a mirror of files.grouplens.org/datasets/movielens (env MOVIEREC_DATA_URL)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command("sample", _sample, "write the built-in sample dataset (MovieLens CSV layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)

    p = command("events", None, "record events by hand, or export the stored ones as ratings")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    record = actions.add_parser(
        "record",
        help="record one event through a running server (RecordEvents)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    record.set_defaults(handler=_events)
    record.add_argument("--user", type=_key, required=True)
    record.add_argument("--movie", type=_key, required=True)
    record.add_argument("--type", choices=["watch", "like", "dislike"], default="watch")
    record.add_argument("--rating", type=float, help="stars, if the user rated it")
    _add_client_options(record, timeout=5.0)
    p = actions.add_parser(
        "export",
        help="write the events as a ratings.csv the trainer reads",
        description="Write the recorded events as a MovieLens ratings.csv (WATCH: its stars, "
        "else 4.0; LIKE 5.0; DISLIKE 0.5; one row per user and movie, from the latest event), "
        "after the rows of --base if given: train on it with --interactions OUT --items "
        "movies.csv.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.set_defaults(handler=_events_export)
    p.add_argument(
        "--events",
        help="the store: sqlite:///PATH, redis://HOST:PORT/DB (default: events.sqlite3 in the "
        "state directory, $MOVIEREC_STATE_DIR or ~/.local/state/movierec)",
    )
    p.add_argument("--out", type=Path, required=True, help="the ratings .csv to write")
    p.add_argument("--base", type=Path, help="an existing ratings.csv to copy first")

    p = command("demo", _demo, "generate the sample, train on it and serve it")
    p.add_argument("--workdir", type=Path, default=Path("artifacts/demo"))
    _add_train_options(p)
    _add_serve_options(p)

    p = command("serve", _serve, "serve an artifact directory over gRPC")
    p.add_argument("--artifacts", type=Path, required=True)
    _add_serve_options(p)

    for name, handler, help_text in (
        ("recommend", _recommend, "recommend movies for a user or an inline history"),
        ("similar", _similar, "movies similar to one movie"),
        ("movie", _movie, "one movie's metadata, as JSON"),
        ("health", _health, "query the standard gRPC health service (exit 0 if SERVING)"),
        ("reload", _reload, "make a running server re-read its artifact directory"),
    ):
        p = command(name, handler, help_text)
        _add_client_options(p, timeout=RELOAD_TIMEOUT if name == "reload" else 5.0)
        if name == "recommend":
            p.add_argument("--user", type=_key, help="a user id (unknown users get popular movies)")
            p.add_argument("--movies", type=_keys, help="inline history: ids, comma-separated")
            p.add_argument("--weights", type=_floats, help="one weight per --movies id")
            p.add_argument("--dislike", type=_keys, help="disliked movie ids, comma-separated")
            p.add_argument("--include-watched", action="store_true")
            p.add_argument("--diversity", type=float, default=0.0, help="0 (off) to 1")
            p.add_argument(
                "--explain", type=_count, default=0, metavar="N",
                help="name the N history movies that contributed most to each result",
            )  # fmt: skip
        if name in ("similar", "movie"):
            p.add_argument("--movie", type=_key, required=True)
        if name in ("recommend", "similar"):
            p.add_argument("-k", type=_count, default=10, help="number of results")
            p.add_argument("--genre", action="append", help="only these genres (repeatable)")
            p.add_argument("--not-genre", action="append", help="not these genres (repeatable)")
            p.add_argument("--years", type=_years, help="release years, e.g. 1990-1999")
            p.add_argument("--exclude", type=_keys, help="never these movie ids")
            p.add_argument("--allow", type=_keys, help="only these movie ids")
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "health":
            p.add_argument("--service", default="", help="'' is the whole server")
    return parser
