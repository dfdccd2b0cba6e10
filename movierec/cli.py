"""The ``movierec`` command. Each subcommand imports only its own side, so serving and
querying never load torch or pandas.

    movierec demo                                   # sample -> train -> serve, the quickstart
    movierec train --data DIR --out ARTIFACTS       # any MovieLens layout, detected
    movierec serve --artifacts ARTIFACTS --port 50051
    movierec recommend --target localhost:50051 --user 1 -k 10
    movierec similar --target localhost:50051 --movie 1 -k 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("movierec")
DEFAULT_TARGET = "localhost:50051"


class UsageError(Exception):
    """A problem the user can fix; printed as one line, no traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    from movierec.artifacts import ArtifactError

    try:
        result: int = args.handler(args)
        return result
    except (UsageError, ArtifactError, OSError) as e:
        print(f"movierec {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if type(e).__name__ == "DataError":  # trainer's, imported lazily
            print(f"movierec {args.command}: error: {e}", file=sys.stderr)
            return 1
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
    manifest = run_training(
        args.out,
        config,
        data=args.data,
        ratings=args.ratings,
        movies=args.movies,
        show_progress=not args.quiet,
    )
    counts = manifest["counts"]
    print(
        f"wrote {args.out}: model {manifest['model_version']}, {counts['movies']} movies, "
        f"{counts['users']} users, dim {manifest['dim']}, "
        f"trained in {manifest['settings']['train_seconds']:.1f}s"
    )
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
    try:
        from trainer import movielens
        from trainer.evaluate import evaluate, format_table
        from trainer.pipeline import run_training
    except ImportError as e:
        raise UsageError(f"{e.name} is missing: install 'movierec[train]'") from None
    from server.app import load_recommender

    if (args.split is None) == (args.artifacts is None):
        raise UsageError("give --artifacts ART --test FILE, or --split DIR --out ART")
    if args.split is not None:
        if args.out is None:
            raise UsageError("--split needs --out, where the trained artifacts go")
        run_training(
            args.out, _train_config(args), data=args.split / "train", show_progress=not args.quiet
        )
        args.artifacts, args.test = args.out, args.test or args.split / "test.csv"
    elif args.test is None:
        raise UsageError("--artifacts needs --test, the held-out ratings file")
    recommender = load_recommender(args.artifacts)
    results = evaluate(recommender, movielens.read_ratings(args.test))
    if args.json:
        settings = recommender.artifacts.manifest["settings"]
        print(
            json.dumps(
                {
                    "model_version": recommender.model_version,
                    "train_seconds": settings.get("train_seconds"),
                    **{name: s.as_dict() for name, s in results.items()},
                },
                indent=2,
            )
        )
    else:
        print(format_table(results))
    return 0


# --- serving side --------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from server.app import load_recommender, serve

    recommender = load_recommender(Path(args.artifacts))
    target = f"{'localhost' if args.host in ('127.0.0.1', '::1') else args.host}:{args.port}"

    def ready(port: int) -> None:
        print(
            f"movierec is serving {args.artifacts} on {args.host}:{port}. Try:\n"
            f"  movierec recommend --target {target} --user 1 -k 10\n"
            f"  movierec similar   --target {target} --movie 1 -k 10\n"
            f'  grpcurl -plaintext -d \'{{"user_id": 1, "k": 5}}\' {target} '
            "movierec.v1.RecommenderService/Recommend\n"
            "Stop with Ctrl-C.",
            flush=True,
        )

    asyncio.run(
        serve(
            recommender,
            f"{args.host}:{args.port}",
            grace=args.grace,
            drain=args.drain,
            on_ready=ready,
        )
    )
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from movierec.client import RecommenderClient

    if (args.user is None) == (args.movies is None):
        raise UsageError("give exactly one of --user or --movies")
    with RecommenderClient(args.target) as client:
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
    from movierec.client import RecommenderClient

    with RecommenderClient(args.target) as client:
        _print_results(client.similar(args.movie, args.k), args.json)
    return 0


def _movie(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from movierec.client import RecommenderClient

    with RecommenderClient(args.target) as client:
        print(json.dumps(MessageToDict(client.movie(args.movie)), indent=2))
    return 0


def _health(args: argparse.Namespace) -> int:
    from movierec.client import RecommenderClient

    with RecommenderClient(args.target, timeout=args.timeout) as client:
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
        group.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=kind, default=default, help=help_text
        )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movierec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    _add_train_options(p)

    p = command("evaluate", _evaluate, "score a model under EVALUATION.md (recall, NDCG, ...)")
    p.add_argument("--artifacts", type=Path, help="a trained artifact directory")
    p.add_argument("--test", type=Path, help="held-out ratings file")
    p.add_argument("--split", type=Path, help="a split folder (train/ + test.csv): train first")
    p.add_argument("--out", type=Path, help="with --split: where to write the artifacts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_train_options(p)

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
    ):
        p = command(name, handler, help_text)
        p.add_argument(
            "--target",
            default=os.environ.get("MOVIEREC_TARGET", DEFAULT_TARGET),
            help="server host:port (env MOVIEREC_TARGET)",
        )
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
