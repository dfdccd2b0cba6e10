"""The ``movierec`` command. Each subcommand imports only its own side, so serving and
querying never load torch or pandas.

    movierec demo                                   # sample -> train -> serve, the quickstart
    movierec train --data DIR --out ARTIFACTS       # any MovieLens layout, detected
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
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from movierec.errors import MovierecError, UsageError
from movierec.logs import configure_logging

log = logging.getLogger("movierec")
DEFAULT_TARGET = "localhost:50051"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO, args.log_format == "json")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        result: int = args.handler(args)
        return result
    except (MovierecError, OSError) as e:
        print(f"movierec {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        import grpc

        if isinstance(e, grpc.RpcError):
            print(f"movierec {args.command}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        raise


# --- training side -----------------------------------------------------------------------


def _train_config(args: argparse.Namespace) -> Any:
    from trainer.config import TrainConfig

    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**fields)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _train(args: argparse.Namespace) -> int:
    try:
        from trainer.pipeline import run_training
    except ImportError as e:
        raise UsageError(f"{e.name} is missing: install 'movierec[train]'") from None
    config = _train_config(args)
    if args.resume and args.checkpoint is None:
        raise UsageError("--resume needs --checkpoint")
    manifest = run_training(
        args.out,
        config,
        data=args.data,
        ratings=args.ratings,
        movies=args.movies,
        show_progress=not args.quiet,
        checkpoint=args.checkpoint,
        resume=args.resume,
    )
    counts = manifest["counts"]
    print(
        f"wrote {args.out}: model {manifest['model_version']}, {counts['movies']} movies, "
        f"{counts['users']} users, dim {manifest['dim']}, "
        f"trained in {manifest['settings']['train_seconds']:.1f}s"
    )
    return 0


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
    print(f"trained model {manifest['model_version']} on the built-in sample ({data})")
    args.artifacts = workdir / "artifacts"
    return _serve(args)


def _evaluate(args: argparse.Namespace) -> int:
    """Score a model (trained first with --split); with --out also write the report there."""
    if (args.split is None) == (args.artifacts is None):
        raise UsageError("give --artifacts ART --test FILE, or --split DIR (train, then score)")
    if args.artifacts is not None and args.test is None:
        raise UsageError("--artifacts needs --test, the held-out ratings file")
    try:
        from trainer.pipeline import run_training
    except ImportError as e:
        raise UsageError(f"{e.name} is missing: install 'movierec[train]'") from None
    anchors = _read_anchors(args)  # before training: a bad file fails in a second, not minutes
    with tempfile.TemporaryDirectory(prefix="movierec-evaluate-") as tmp:
        if args.split is not None:
            artifacts = (args.out or Path(tmp)) / "artifacts"
            run_training(
                artifacts, _train_config(args), data=args.split / "train",
                show_progress=not args.quiet,
            )  # fmt: skip
            args.artifacts, args.test = artifacts, args.test or args.split / "test.csv"
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
    try:
        from trainer import movielens
        from trainer.evaluate import evaluate_in_full, format_table, summary
        from trainer.report import write_report
    except ImportError as e:
        raise UsageError(f"{e.name} is missing: install 'movierec[train]'") from None
    from server.app import load_recommender

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


# --- serving side --------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from server.app import ServerOptions
    from server.processes import run
    from server.security import Tokens

    tls = (args.tls_cert, args.tls_key)
    if any(tls) and not all(tls) or (args.tls_client_ca and not all(tls)):
        raise UsageError("--tls-cert and --tls-key go together (and --tls-client-ca needs both)")
    tokens = Tokens.load(args.tokens_file)
    options = ServerOptions(
        address=f"{args.host}:{args.port}",
        max_inflight=args.max_inflight,
        workers=args.workers,
        tokens=tokens,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
    )
    host = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    flags = " --tls-ca CA.pem" * bool(args.tls_cert) + " --token TOKEN" * tokens.enabled

    def ready(port: int, metrics_port: int | None) -> None:
        target = f"{host}:{port}"
        processes = f" in {args.processes} processes" if args.processes > 1 else ""
        print(
            f"movierec is serving {args.artifacts} on {args.host}:{port}{processes}"
            f"{' (TLS)' if args.tls_cert else ''}"
            f"{', bearer tokens required' if tokens.enabled else ''}. Try:\n"
            f"  movierec recommend --target {target}{flags} --user 1 -k 10\n"
            f"  movierec similar   --target {target}{flags} --movie 1 -k 10\n"
            + (
                f'  grpcurl -plaintext -d \'{{"user_id": 1, "k": 5}}\' {target} '
                "movierec.v1.RecommenderService/Recommend\n"
                if not args.tls_cert and not tokens.enabled
                else ""
            )
            + (f"  curl -s localhost:{metrics_port}/metrics\n" if metrics_port else "")
            + "Reload the model with SIGHUP; stop with Ctrl-C.",
            flush=True,
        )

    if args.processes < 1:
        raise UsageError("--processes must be at least 1")
    if args.workers < 0:
        raise UsageError("--workers must be 0 (run on the event loop) or more")
    return run(Path(args.artifacts), options, args.processes, args.grace, args.drain, ready)


def _recommend(args: argparse.Namespace) -> int:
    if (args.user is None) == (args.movies is None):
        raise UsageError("give exactly one of --user or --movies")
    with _client(args) as client:
        if args.user is not None:
            response = client.recommend(args.user, args.k, args.include_watched, args.explain)
        else:
            response = client.recommend_for_movies(
                args.movies, args.k, args.include_watched, args.explain
            )
    _print_results(response, args.json)
    if response.ignored_movie_ids and not args.json:
        print(f"ignored unknown movie ids: {list(response.ignored_movie_ids)}")
    return 0


def _similar(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_results(client.similar(args.movie, args.k), args.json)
    return 0


def _movie(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with _client(args) as client:
        print(json.dumps(MessageToDict(client.movie(args.movie)), indent=2))
    return 0


def _client(args: argparse.Namespace, timeout: float = 5.0) -> Any:
    from movierec.client import RecommenderClient

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    cert, key = read(args.tls_cert), read(args.tls_key)
    return RecommenderClient(
        args.target,
        timeout,
        token=args.token,
        tls=args.tls,
        tls_ca=read(args.tls_ca),
        client_cert=(cert, key) if cert and key else None,
    )


def _reload(args: argparse.Namespace) -> int:
    with _client(args) as client:
        r = client.reload_model()
    print(f"serving {r.model_version} (was {r.previous_model_version}), loaded in "
          f"{r.load_seconds:.2f}s")  # fmt: skip
    return 0


def _health(args: argparse.Namespace) -> int:
    with _client(args, timeout=args.timeout) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _because(r: Any) -> str:
    """'Toy Story (1995) 0.21, Up (2009) 0.13' from an explained recommendation."""
    return ", ".join(f"{c.title} {c.share:.2f}" for c in r.explanation.top)


def _print_results(response: Any, as_json: bool) -> None:
    if as_json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    rows = [
        (str(r.movie_id), r.title, "|".join(r.genres), f"{r.similarity:.4f}", _because(r))
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
    print(f"(model {response.model_version})")


# --- argument parsing ----------------------------------------------------------------------


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated movie ids, got {text!r}"
        ) from None


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
    p.add_argument(
        "--host",
        default=os.environ.get("MOVIEREC_HOST", "127.0.0.1"),
        help="listen address; 0.0.0.0 must be asked for (env MOVIEREC_HOST)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MOVIEREC_PORT", "50051")),
        help="gRPC port, 0 for any free one (env MOVIEREC_PORT)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds in-flight calls get to finish on shutdown",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="seconds to keep serving after SIGTERM while NOT_SERVING",
    )
    p.add_argument(
        "--max-inflight",
        type=int,
        default=int(os.environ.get("MOVIEREC_MAX_INFLIGHT", "64")),
        help="calls in progress before new ones get RESOURCE_EXHAUSTED (env MOVIEREC_MAX_INFLIGHT)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("MOVIEREC_PROCESSES", "1")),
        help="server processes sharing the port and the loaded model (env MOVIEREC_PROCESSES)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MOVIEREC_WORKERS", str(os.cpu_count() or 1))),
        help="threads running searches (FAISS releases the GIL); default one per core; 0 runs "
        "them on the event loop: faster for small catalogues, but each search holds up every "
        "other call (env MOVIEREC_WORKERS)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics over HTTP on this port, same host (0: any free one)",
    )
    p.add_argument(
        "--tokens-file",
        type=Path,
        default=None,
        help="require 'authorization: Bearer <token>' with a token from this file (one per "
        "line); or set MOVIEREC_TOKENS=tok1,tok2. Health checks stay open",
    )
    p.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate chain")
    p.add_argument("--tls-key", type=Path, help="the certificate's PEM private key")
    p.add_argument(
        "--tls-client-ca", type=Path, help="mutual TLS: accept clients signed by this CA"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movierec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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

    p = command("train", _train, "train embeddings on MovieLens data and export artifacts")
    p.add_argument("--data", type=Path, help="a MovieLens folder (layout detected)")
    p.add_argument("--ratings", type=Path, help="explicit ratings file (with --movies)")
    p.add_argument("--movies", type=Path, help="explicit movies file (with --ratings)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    p.add_argument("--checkpoint", type=Path, help="save training state here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    _add_train_options(p)

    p = command("evaluate", _evaluate, "score a model under EVALUATION.md (recall, NDCG, ...)")
    p.add_argument("--artifacts", type=Path, help="a trained artifact directory")
    p.add_argument("--test", type=Path, help="held-out ratings file")
    p.add_argument("--split", type=Path, help="a split folder (train/ + test.csv): train first")
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
        ("movie", _movie, "one movie's metadata"),
        ("health", _health, "query the standard gRPC health service (exit 0 if SERVING)"),
        ("reload", _reload, "make a running server re-read its artifact directory"),
    ):
        p = command(name, handler, help_text)
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
        p.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
        p.add_argument("--tls-ca", type=Path, help="use TLS, trusting this PEM CA")
        p.add_argument("--tls-cert", type=Path, help="mutual TLS: this client certificate")
        p.add_argument("--tls-key", type=Path, help="mutual TLS: the client certificate's key")
        if name == "recommend":
            p.add_argument("--user", type=int, help="a user id known to the model")
            p.add_argument("--movies", type=_ids, help="inline history: ids, comma-separated")
            p.add_argument("--include-watched", action="store_true")
            p.add_argument(
                "--explain", type=int, default=0, metavar="N",
                help="name the N watched movies that contributed most to each result",
            )  # fmt: skip
        if name in ("similar", "movie"):
            p.add_argument("--movie", type=int, required=True)
        if name in ("recommend", "similar"):
            p.add_argument("-k", type=int, default=10, help="number of results")
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "health":
            p.add_argument("--service", default="", help="'' is the whole server")
            p.add_argument("--timeout", type=float, default=3.0)
    return parser
