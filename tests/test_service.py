"""The real server on a loopback port, called through the real client."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from movierec.client import RecommenderClient
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc
from server.app import RunningServer
from server.recommender import MAX_EXPLAIN, MAX_HISTORY, MAX_K, Recommender


@pytest.fixture(scope="module")
def stub(running_server: RunningServer):
    with grpc.insecure_channel(f"127.0.0.1:{running_server.port}") as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def code_and_details(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=5)
    return e.value.code(), e.value.details()


def test_recommend_for_a_user_matches_the_core(
    client: RecommenderClient, recommender: Recommender
) -> None:
    user = int(recommender.artifacts.histories.user_ids[3])
    response = client.recommend(user, k=10)
    assert len(response.recommendations) == 10
    assert response.model_version == recommender.model_version
    core = recommender.recommend(user, 10).items
    assert [r.movie_id for r in response.recommendations] == [s.movie.movie_id for s in core]
    first = response.recommendations[0]
    movie = core[0].movie
    assert (first.title, tuple(first.genres), first.year) == (
        movie.title,
        movie.genres,
        movie.year or 0,
    )
    assert first.similarity == pytest.approx(core[0].score, rel=1e-6)


def test_recommend_for_an_inline_history(
    client: RecommenderClient, recommender: Recommender
) -> None:
    ids = [int(i) for i in recommender.artifacts.movie_ids[:5]]
    response = client.recommend_for_movies([*ids, -1], k=7)
    assert len(response.recommendations) == 7
    assert list(response.ignored_movie_ids) == [-1]
    assert not set(ids) & {r.movie_id for r in response.recommendations}


def test_recommend_explains_over_grpc(client: RecommenderClient, recommender: Recommender) -> None:
    user = int(recommender.artifacts.histories.user_ids[5])
    response = client.recommend(user, k=5, explain=3)
    core = recommender.recommend(user, 5, explain=3).items
    for got, want in zip(response.recommendations, core, strict=True):
        assert want.explanation is not None
        why = got.explanation
        assert [c.movie_id for c in why.top] == [c.movie.movie_id for c in want.explanation.top]
        assert why.top[0].title == want.explanation.top[0].movie.title
        total = sum(c.share for c in why.top) + why.rest + why.bias
        assert total == pytest.approx(got.similarity, abs=1e-4)
    assert not client.recommend(user, k=5).recommendations[0].HasField("explanation")


def test_similar_and_get_movie(client: RecommenderClient, recommender: Recommender) -> None:
    movie = recommender.artifacts.movies[0]
    similar = client.similar(movie.movie_id, k=5)
    assert len(similar.recommendations) == 5
    assert movie.movie_id not in {r.movie_id for r in similar.recommendations}
    got = client.movie(movie.movie_id)
    assert (got.movie_id, got.title, tuple(got.genres)) == (
        movie.movie_id,
        movie.title,
        movie.genres,
    )


@pytest.mark.parametrize(
    ("request_", "code", "details"),
    [
        (
            pb.RecommendRequest(k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "set exactly one of user_id or movie_ids",
        ),
        (
            pb.RecommendRequest(user_id=1, movie_ids=[1], k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "set exactly one of user_id or movie_ids",
        ),
        (
            pb.RecommendRequest(user_id=1, k=0),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"k must be between 1 and {MAX_K}, got 0",
        ),
        (
            pb.RecommendRequest(user_id=1, k=-3),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"k must be between 1 and {MAX_K}, got -3",
        ),
        (
            pb.RecommendRequest(user_id=1, k=2**31 - 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"k must be between 1 and {MAX_K}",
        ),
        (
            pb.RecommendRequest(movie_ids=[1] * (MAX_HISTORY + 1), k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"movie_ids must hold 1 to {MAX_HISTORY} ids",
        ),
        (
            pb.RecommendRequest(movie_ids=[1], k=5, explain=MAX_EXPLAIN + 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"explain must be between 0 and {MAX_EXPLAIN}, got {MAX_EXPLAIN + 1}",
        ),
        (
            pb.RecommendRequest(user_id=10**15, k=5),
            grpc.StatusCode.NOT_FOUND,
            f"user {10**15} is not known",
        ),
        (
            pb.RecommendRequest(movie_ids=[-1, -2], k=5),
            grpc.StatusCode.NOT_FOUND,
            "none of the movie_ids is in the catalogue: -2, -1",
        ),
    ],
)
def test_recommend_errors(stub, request_, code, details) -> None:
    got_code, got_details = code_and_details(stub.Recommend, request_)
    assert got_code == code
    assert details in got_details
    assert "Traceback" not in got_details


def test_similar_and_get_movie_errors(stub) -> None:
    assert code_and_details(stub.SimilarMovies, pb.SimilarMoviesRequest(movie_id=-9, k=3)) == (
        grpc.StatusCode.NOT_FOUND,
        "movie -9 is not in the catalogue",
    )
    code, _ = code_and_details(stub.SimilarMovies, pb.SimilarMoviesRequest(movie_id=1, k=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_and_details(stub.GetMovie, pb.GetMovieRequest(movie_id=-9))[0]
        == grpc.StatusCode.NOT_FOUND
    )


def test_oversized_message_is_rejected(stub) -> None:
    request = pb.RecommendRequest(movie_ids=[2**62] * 1_200_000, k=5)  # 10.8 MB
    assert request.ByteSize() > 10_000_000
    code, _ = code_and_details(stub.Recommend, request)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_is_serving(client: RecommenderClient, running_server: RunningServer) -> None:
    assert client.health() == "SERVING"
    assert client.health("movierec.v1.RecommenderService") == "SERVING"
    with (
        grpc.insecure_channel(f"127.0.0.1:{running_server.port}") as channel,
        pytest.raises(grpc.RpcError) as e,
    ):
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(running_server: RunningServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{running_server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"movierec.v1.RecommenderService", "grpc.health.v1.Health"} <= names


# Arbitrary field values at every RPC: always a proper status, never a crash or a traceback.
INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
EXPECTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def outcome(call, request) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call(request, timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        assert "Traceback" not in (e.details() or "")
        return e.code()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    user_id=st.none() | INT64 | st.sampled_from([1, 2, 3]),
    movie_ids=st.lists(INT64 | st.integers(1, 700), max_size=40),
    k=INT32 | st.integers(0, 30),
    include_watched=st.booleans(),
    explain=INT32 | st.integers(0, 5),
)
def test_recommend_fuzz(stub, user_id, movie_ids, k, include_watched, explain) -> None:
    request = pb.RecommendRequest(
        movie_ids=movie_ids, k=k, include_watched=include_watched, explain=explain
    )
    if user_id is not None:
        request.user_id = user_id
    assert outcome(stub.Recommend, request) in EXPECTED


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(movie_id=INT64 | st.integers(0, 700), k=INT32 | st.integers(0, 30))
def test_similar_and_get_movie_fuzz(stub, movie_id, k) -> None:
    assert outcome(stub.SimilarMovies, pb.SimilarMoviesRequest(movie_id=movie_id, k=k)) in EXPECTED
    assert outcome(stub.GetMovie, pb.GetMovieRequest(movie_id=movie_id)) in EXPECTED
