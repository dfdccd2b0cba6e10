"""Operating the real server over loopback: tokens, TLS, admission, deadlines, metrics, the
access log and hot reload."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from movierec.artifacts import read_artifacts
from movierec.client import Client
from movierec.errors import FailedPrecondition, InvalidArgument, StatusError, UsageError
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc
from server.app import RunningServer, build_server
from server.options import ServerOptions
from server.recommender import MAX_HISTORY, Recommender, Request
from server.security import Tokens
from trainer.config import TrainConfig
from trainer.pipeline import run_training

from .conftest import SAMPLE_CONFIG, LoopThread


@contextmanager
def server(
    loop_thread: LoopThread,
    recommender: Recommender,
    options: ServerOptions | None = None,
    artifacts: Path | None = None,
) -> Iterator[RunningServer]:
    options = options or ServerOptions(port=0)
    running = loop_thread.run(build_server(recommender, options, artifacts=artifacts))
    try:
        yield running
    finally:
        loop_thread.run(running.stop(None))


def code_of(fn) -> str:  # type: ignore[no-untyped-def]
    """The status code name a call fails with, through our client or a raw stub."""
    try:
        fn()
    except StatusError as e:
        return e.code
    except grpc.RpcError as e:
        return str(e.code().name)
    raise AssertionError("the call did not fail")


# --- tokens --------------------------------------------------------------------------------


def test_bearer_tokens(loop_thread: LoopThread, recommender: Recommender, tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("s3cret\nother\n")
    options = ServerOptions(port=0, tokens_file=tmp_path / "tokens")
    movie = int(recommender.artifacts.movie_ids[0])
    with server(loop_thread, recommender, options) as running:
        target = f"127.0.0.1:{running.port}"
        for token in (None, "wrong", "s3cre", "s3cret2"):
            with Client(target, token=token) as c:
                assert code_of(lambda c=c: c.similar(movie, 3)) == "UNAUTHENTICATED"
                assert c.health() == "SERVING"  # health checks stay open
        for token in ("s3cret", "other"):
            with Client(target, token=token) as c:
                assert len(c.similar(movie, 3).recommendations) == 3
        with grpc.insecure_channel(target) as channel:  # the scheme is part of the header
            stub = pb_grpc.RecommenderServiceStub(channel)
            request = pb.GetMovieRequest(movie_id=movie)
            basic = (("authorization", "Basic s3cret"),)
            assert code_of(lambda: stub.GetMovie(request, metadata=basic, timeout=5)) == (
                "UNAUTHENTICATED"
            )


def test_tokens_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# ops\nalpha\n\n  beta#ci  \r\n")
    assert Tokens.load(file, env="").values == (b"alpha", b"beta#ci")  # a # is part of a token
    assert Tokens.load(None, env="a#b, c").values == (b"a#b", b"c")
    file.write_text("# nothing\n")
    with pytest.raises(UsageError, match="holds no token"):
        Tokens.load(file, env="")
    file.write_text("two words\n")
    with pytest.raises(UsageError, match="a token has a space"):
        Tokens.load(file, env="")
    assert not Tokens.load(env="").enabled


def test_a_token_with_a_hash_is_whole(
    loop_thread: LoopThread, recommender: Recommender, tmp_path: Path
) -> None:
    """Cut at the '#', the token 'abc#Zq8' used to let 'Bearer abc' in and lock itself out."""
    (tmp_path / "tokens").write_text("abc#Zq8x1\n")
    (tmp_path / "admin").write_text("adm#1n\n")
    options = ServerOptions(port=0, tokens_file=tmp_path / "tokens",
                            admin_tokens_file=tmp_path / "admin")  # fmt: skip
    movie = int(recommender.artifacts.movie_ids[0])
    with server(loop_thread, recommender, options) as running:
        target = f"127.0.0.1:{running.port}"
        with Client(target, token="abc") as c:
            assert code_of(lambda: c.movie(movie)) == "UNAUTHENTICATED"
        with Client(target, token="abc#Zq8x1") as c:
            assert c.movie(movie).movie_id == movie
            assert code_of(lambda: c.reload_model()) == "UNAUTHENTICATED"  # not an admin token
        with Client(target, token="adm") as c:
            assert code_of(lambda: c.reload_model()) == "UNAUTHENTICATED"
        with Client(target, token="adm#1n") as c:
            assert code_of(lambda: c.movie(movie)) == "UNAUTHENTICATED"  # not a client token


# --- TLS -----------------------------------------------------------------------------------


def _cert(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, object] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())  # type: ignore[arg-type]


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all made here."""
    out = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("movierec test CA", ca_key, None)
    files = {"ca": _pem(ca)}
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        files[name] = _pem(_cert(f"movierec {name}", key, (ca, ca_key)))
        files[f"{name}_key"] = _pem(key)
    paths = {}
    for name, data in files.items():
        (out / f"{name}.pem").write_bytes(data)
        paths[name] = out / f"{name}.pem"
    return paths


def test_tls_and_mutual_tls(
    loop_thread: LoopThread, recommender: Recommender, pki: dict[str, Path]
) -> None:
    movie = int(recommender.artifacts.movie_ids[0])
    ca = pki["ca"].read_bytes()
    client_cert = (pki["client"].read_bytes(), pki["client_key"].read_bytes())
    tls = ServerOptions(port=0, tls_cert=pki["server"], tls_key=pki["server_key"])
    with server(loop_thread, recommender, tls) as running:
        target = f"127.0.0.1:{running.port}"
        with Client(target, tls_ca=ca) as c:
            assert c.movie(movie).movie_id == movie
        with Client(target, timeout=2) as plaintext:
            assert code_of(lambda: plaintext.movie(movie)) == "UNAVAILABLE"
    mutual = ServerOptions(
        port=0, tls_cert=pki["server"], tls_key=pki["server_key"], tls_client_ca=pki["ca"]
    )
    with server(loop_thread, recommender, mutual) as running:
        target = f"127.0.0.1:{running.port}"
        with Client(target, tls_ca=ca, client_cert=client_cert) as c:
            assert c.movie(movie).movie_id == movie
        with Client(target, timeout=2, tls_ca=ca) as anonymous:
            assert code_of(lambda: anonymous.movie(movie)) == "UNAVAILABLE"


# --- load: admission and deadlines -----------------------------------------------------------


async def _burst(port: int, requests: list[pb.RecommendRequest], timeout: float) -> list[str]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RecommenderServiceStub(channel)

        async def one(request: pb.RecommendRequest) -> str:
            try:
                await stub.Recommend(request, timeout=timeout)
                return "OK"
            except grpc.aio.AioRpcError as e:
                return str(e.code().name)

        return list(await asyncio.gather(*(one(r) for r in requests)))


def heavy_request(recommender: Recommender) -> pb.RecommendRequest:
    """A slow call within the cost limit: a full inline history and k 200."""
    ids = recommender.artifacts.movie_ids.tolist()
    return pb.RecommendRequest(movie_ids=(ids * MAX_HISTORY)[:MAX_HISTORY], k=200)


def test_a_burst_past_max_inflight_is_shed_at_once(
    loop_thread: LoopThread, recommender: Recommender
) -> None:
    options = ServerOptions(port=0, max_inflight=3, workers=1)
    with server(loop_thread, recommender, options) as running:
        codes = asyncio.run(_burst(running.port, [heavy_request(recommender)] * 60, timeout=30))
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert codes.count("RESOURCE_EXHAUSTED") > 0 and codes.count("OK") >= 3
        with Client(f"127.0.0.1:{running.port}") as c:  # and it recovers
            assert c.health() == "SERVING"
            movies = recommender.artifacts.movie_ids[:3].tolist()
            assert len(c.recommend(movies=movies, k=5).recommendations) == 5
        assert running.metrics.registry.get_sample_value("movierec_inflight_requests") == 0


def test_expired_deadlines_are_not_worked_on(
    loop_thread: LoopThread, recommender: Recommender
) -> None:
    options = ServerOptions(port=0, max_inflight=1000, workers=1)
    with server(loop_thread, recommender, options) as running:
        codes = asyncio.run(_burst(running.port, [heavy_request(recommender)] * 80, timeout=0.02))
        assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
        assert codes.count("DEADLINE_EXCEEDED") > 0
        worked = running.metrics.registry.get_sample_value(
            "movierec_requests_total",
            {"method": "/movierec.v1.RecommenderService/Recommend", "code": "OK"},
        )
        assert (worked or 0) < 80  # calls that expired while queued were never run


# --- metrics and the access log --------------------------------------------------------------


def test_metrics_endpoint_and_access_log(
    loop_thread: LoopThread, recommender: Recommender, caplog: pytest.LogCaptureFixture
) -> None:
    user = int(recommender.artifacts.histories.user_ids[0])
    caplog.set_level(logging.INFO, logger="movierec.access")
    with server(loop_thread, recommender, ServerOptions(port=0, metrics_port=0)) as running:
        with Client(f"127.0.0.1:{running.port}") as c:
            c.recommend(user, k=7)
            code_of(lambda: c.similar(-1, 3))
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    method = "/movierec.v1.RecommenderService/Recommend"
    assert f'movierec_requests_total{{code="OK",method="{method}"}} 1.0' in text
    assert 'code="NOT_FOUND",method="/movierec.v1.RecommenderService/SimilarMovies"' in text
    assert f'movierec_model_info{{model_version="{recommender.model_version}"}} 1.0' in text
    assert f'movierec_request_seconds_count{{method="{method}"}} 1.0' in text
    assert "movierec_inflight_requests 0.0" in text
    lines = [r for r in caplog.records if r.name == "movierec.access"]
    assert [(r.method, r.code, r.k) for r in lines] == [  # type: ignore[attr-defined]
        (method, "OK", 7),
        ("/movierec.v1.RecommenderService/SimilarMovies", "NOT_FOUND", 3),
    ]
    standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
    for record in lines:  # what a line carries, and nothing about the user
        assert set(vars(record)) - standard == {"method", "code", "ms", "k", "peer"}
        assert "user" not in record.getMessage()


# --- hot reload ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def second_model(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("v2") / "artifacts"
    run_training(out, TrainConfig(**{**vars(SAMPLE_CONFIG), "seed": 1}), data=sample_dir,
                 show_progress=False)  # fmt: skip
    return out


def test_reload_under_load_never_fails_or_mixes(
    loop_thread: LoopThread,
    artifacts_dir: Path,
    second_model: Path,
    tmp_path: Path,
) -> None:
    versions = {p: read_artifacts(p) for p in (artifacts_dir, second_model)}
    answers = {  # what each model answers, to check that no response mixes two
        a.model_version: [r.movie.movie_id for r in Recommender(a).recommend(
            Request(movies=(1, 2, 3))).items]
        for a in versions.values()
    }  # fmt: skip
    assert len(answers) == 2
    broken = tmp_path / "broken"
    shutil.copytree(second_model, broken)
    with (broken / "index.faiss").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    current = tmp_path / "current"
    current.symlink_to(artifacts_dir)

    def point_at(target: Path) -> None:  # an atomic symlink switch, as a deploy would do
        (tmp_path / "next").symlink_to(target)
        (tmp_path / "next").replace(current)

    first = Recommender(versions[artifacts_dir])
    (tmp_path / "admin").write_text("ops-token\n")
    options = ServerOptions(port=0, admin_tokens_file=tmp_path / "admin")
    with server(loop_thread, first, options, artifacts=current) as running:
        target = f"127.0.0.1:{running.port}"
        seen: list[tuple[str, list[int]]] = []
        errors: list[Exception] = []
        stop = threading.Event()

        def reader() -> None:
            with Client(target) as c:
                while not stop.is_set():
                    try:
                        r = c.recommend(movies=[1, 2, 3], k=10)
                        seen.append((r.model_version, [x.movie_id for x in r.recommendations]))
                    except Exception as e:
                        errors.append(e)

        threads = [threading.Thread(target=reader, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        with Client(target, token="ops-token") as admin:
            for good, bad in ((second_model, broken), (artifacts_dir, broken)):
                point_at(good)
                r = admin.reload_model()
                assert r.model_version == read_artifacts(good).model_version
                point_at(bad)
                with pytest.raises(FailedPrecondition, match="still serving the previous model"):
                    admin.reload_model()
                assert admin.recommend(movies=[1], k=3).model_version == r.model_version
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors[:3]
    assert {v for v, _ in seen} == set(answers)
    assert all(answers[v] == ids for v, ids in seen)
    refused = running.metrics.registry.get_sample_value(
        "movierec_model_reloads_total", {"result": "refused"}
    )
    assert refused == 2


def test_health_answers_while_every_worker_is_busy(
    loop_thread: LoopThread, recommender: Recommender
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def probe_during_burst(port: int) -> tuple[list[float], bool]:
        burst = asyncio.ensure_future(_burst(port, [heavy_request(recommender)] * 100, timeout=60))
        await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            latencies = []
            for _ in range(5):
                start = asyncio.get_running_loop().time()
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                assert r.status == health_pb2.HealthCheckResponse.SERVING
                latencies.append(asyncio.get_running_loop().time() - start)
        busy = not burst.done()
        await burst
        return latencies, busy

    with server(
        loop_thread, recommender, ServerOptions(port=0, workers=1, max_inflight=1000)
    ) as running:
        latencies, busy = asyncio.run(probe_during_burst(running.port))
    assert busy, "the burst ended before the probes; make it heavier"
    assert max(latencies) < 1.0, latencies


def test_workers_search_with_one_openmp_thread(
    loop_thread: LoopThread, recommender: Recommender
) -> None:
    import faiss

    # OpenMP's thread count is per thread: a worker left at FAISS's default (all cores) spun
    # a second core for every single-query search.
    with server(loop_thread, recommender, ServerOptions(port=0, workers=2)) as running:
        counts = [running.pool.submit(faiss.omp_get_max_threads) for _ in range(4)]
        assert [f.result() for f in counts] == [1] * 4


def test_without_workers_the_core_runs_on_the_event_loop(
    loop_thread: LoopThread, recommender: Recommender
) -> None:
    movies = recommender.artifacts.movie_ids[:5].tolist()
    answers = []
    for workers in (0, 2):
        with server(loop_thread, recommender, ServerOptions(port=0, workers=workers)) as running:
            assert (running.pool is None) == (workers == 0)
            with Client(f"127.0.0.1:{running.port}") as c:
                answers.append(c.recommend(movies=movies, k=10))
                with pytest.raises(InvalidArgument):  # errors map to their codes as before
                    c.recommend(movies=movies, k=-1)
    assert answers[0] == answers[1] and len(answers[0].recommendations) == 10
