"""The real server on a loopback port, called through the real client."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from movierec.client import Client, make_filter, recommend_request
from movierec.errors import InvalidArgument, NotFound
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc
from server.app import RunningServer
from server.catalogue import Filter
from server.recommender import MAX_BATCH, MAX_EXPLAIN, MAX_HISTORY, MAX_K, Recommender, Request


@pytest.fixture(scope="module")
def stub(running_server: RunningServer):
    with grpc.insecure_channel(f"127.0.0.1:{running_server.port}") as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


def code_and_details(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(request, timeout=5)
    return e.value.code(), e.value.details()


def test_recommend_for_a_user_matches_the_core(client: Client, recommender: Recommender) -> None:
    user = int(recommender.artifacts.histories.user_ids[3])
    response = client.recommend(user, k=10)
    assert len(response.recommendations) == 10
    assert response.model_version == recommender.model_version
    core = recommender.recommend(Request(user=user)).items
    assert [r.movie_id for r in response.recommendations] == [s.movie.movie_id for s in core]
    assert [r.movie_key for r in response.recommendations] == [str(s.movie.movie_id) for s in core]
    assert {r.reason for r in response.recommendations} == {pb.PERSONAL}
    first = response.recommendations[0]
    movie = core[0].movie
    assert (first.title, tuple(first.genres), first.year) == (
        movie.title,
        movie.genres,
        movie.year or 0,
    )
    assert first.similarity == pytest.approx(core[0].score, rel=1e-6)


def test_recommend_for_an_inline_history(client: Client, recommender: Recommender) -> None:
    ids = [int(i) for i in recommender.artifacts.movie_ids[:5]]
    response = client.recommend(movies=[*ids, -1], k=7)
    assert len(response.recommendations) == 7
    assert list(response.ignored_movie_ids) == [-1]
    assert not set(ids) & {r.movie_id for r in response.recommendations}


def test_recommend_explains_over_grpc(client: Client, recommender: Recommender) -> None:
    user = int(recommender.artifacts.histories.user_ids[5])
    response = client.recommend(user, k=5, explain=3)
    core = recommender.recommend(Request(user=user, k=5, explain=3)).items
    for got, want in zip(response.recommendations, core, strict=True):
        assert want.explanation is not None
        why = got.explanation
        assert [c.movie_id for c in why.top] == [c.movie.movie_id for c in want.explanation.top]
        assert why.top[0].title == want.explanation.top[0].movie.title
        total = sum(c.share for c in why.top) + why.rest + why.bias
        assert total == pytest.approx(got.similarity, abs=1e-4)
    assert not client.recommend(user, k=5).recommendations[0].HasField("explanation")


def test_similar_and_get_movie(client: Client, recommender: Recommender) -> None:
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
            f"movie_ids must hold at most {MAX_HISTORY} ids",
        ),
        (
            pb.RecommendRequest(movie_ids=[1], k=5, explain=MAX_EXPLAIN + 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"explain must be between 0 and {MAX_EXPLAIN}, got {MAX_EXPLAIN + 1}",
        ),
        (
            pb.RecommendRequest(user_id=1, user_key="1", k=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "set user_id or user_key, not both",
        ),
        (
            pb.RecommendRequest(user_id=1, filter=pb.Filter(genres_any=["Nope"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown genre 'Nope'",
        ),
        (
            pb.RecommendRequest(movie_ids=[1, 2], weights=[1.0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "weights must hold one value per movie_ids entry",
        ),
        (
            pb.RecommendRequest(movie_keys=["1", "x" * 257]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "movie_keys: a key is over 256 characters or holds a NUL character",
        ),
        (
            pb.RecommendRequest(user_key="7\0"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "user_key: a key is over 256 characters or holds a NUL character",
        ),
        (
            pb.RecommendRequest(user_id=1, filter=pb.Filter(exclude_movie_keys=["2\0"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter.exclude_movie_keys: a key is over 256",
        ),
    ],
)
def test_recommend_errors(stub, request_, code, details) -> None:
    got_code, got_details = code_and_details(stub.Recommend, request_)
    assert got_code == code
    assert details in got_details
    assert "Traceback" not in got_details


def test_k_zero_means_ten(client: Client, recommender: Recommender) -> None:
    user = int(recommender.artifacts.histories.user_ids[3])
    assert len(client.recommend(user, k=0).recommendations) == 10
    assert len(client.similar(int(recommender.artifacts.movie_ids[0]), k=0).recommendations) == 10


def test_unknown_users_get_popular_movies(client: Client, recommender: Recommender) -> None:
    for response in (client.recommend(10**15, k=5), client.recommend(movies=[-1, -2], k=5)):
        assert len(response.recommendations) == 5
        assert {r.reason for r in response.recommendations} == {pb.POPULAR}
    response = client.recommend(10**15, k=5)
    core = recommender.recommend(Request(user=10**15, k=5)).items
    assert [r.movie_id for r in response.recommendations] == [s.movie.movie_id for s in core]
    assert list(client.recommend(movies=[-1, -2], k=5).ignored_movie_ids) == [-2, -1]


def test_filters_dislikes_and_diversity_over_grpc(client: Client, recommender: Recommender) -> None:
    user = int(recommender.artifacts.histories.user_ids[3])
    ids = [int(i) for i in recommender.artifacts.movie_ids[:5]]
    rules = make_filter(genres_any=["Comedy"], genres_none=["Drama"], year_min=1980,
                        exclude=ids[:2])  # fmt: skip
    response = client.recommend(user, k=20, filter=rules, dislikes=ids[2:4], diversity=0.3)
    core = recommender.recommend(Request(
        user=user, k=20, dislikes=tuple(ids[2:4]), diversity=0.3,
        filter=Filter(genres_any=("Comedy",), genres_none=("Drama",), year_min=1980,
                      exclude=tuple(ids[:2]))))  # fmt: skip
    assert [r.movie_id for r in response.recommendations] == [s.movie.movie_id for s in core.items]
    assert response.exhausted == core.exhausted
    for r in response.recommendations:
        assert "Comedy" in r.genres and "Drama" not in r.genres and r.year >= 1980
        assert r.movie_id not in ids[:4]
    nothing = client.recommend(user, filter=make_filter(allow=[-7]))
    assert not nothing.recommendations and nothing.exhausted


def test_ids_and_keys_name_the_same_movies(client: Client, recommender: Recommender) -> None:
    ids = [int(i) for i in recommender.artifacts.movie_ids[:3]]
    by_id = client.recommend(movies=ids, k=5)
    by_key = client.recommend(movies=[str(i) for i in ids], k=5)
    assert list(by_id.recommendations) == list(by_key.recommendations)
    assert client.movie(str(ids[0])) == client.movie(ids[0])
    assert client.movie(ids[0]).indexed
    user = int(recommender.artifacts.histories.user_ids[0])
    assert client.recommend(str(user)) == client.recommend(user)
    ignored = client.recommend(movies=[*ids, "no-such-movie"], k=5).ignored_movie_keys
    assert list(ignored) == ["no-such-movie"]


def test_batch_answers_in_order_and_fails_entries_alone(
    client: Client, recommender: Recommender
) -> None:
    user = int(recommender.artifacts.histories.user_ids[3])
    requests = [
        recommend_request(user, k=4),
        recommend_request(user, k=-1),
        recommend_request(movies=[int(recommender.artifacts.movie_ids[0])], k=3),
        pb.RecommendRequest(user_id=1, user_key="x"),
    ]
    response = client.recommend_batch(requests)
    assert [r.WhichOneof("result") for r in response.results] == [
        "response", "error", "response", "error"]  # fmt: skip
    assert response.results[0].response == client.recommend(user, k=4)
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "k must be between" in response.results[1].error.message
    assert len(response.results[2].response.recommendations) == 3
    with pytest.raises(InvalidArgument, match=f"at most {MAX_BATCH}"):
        client.recommend_batch([requests[0]] * (MAX_BATCH + 1))
    # refused as a whole before any entry is parsed: bad entries do not make it cheaper
    with pytest.raises(InvalidArgument, match=f"at most {MAX_BATCH}"):
        client.recommend_batch([requests[3]] * 5_000)


def test_similar_movies_bounds_its_filter(stub) -> None:
    from server.recommender import MAX_FILTER_IDS

    rules = pb.Filter(exclude_movie_ids=list(range(MAX_FILTER_IDS + 1)))
    code, details = code_and_details(
        stub.SimilarMovies, pb.SimilarMoviesRequest(movie_id=1, k=3, filter=rules)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_FILTER_IDS} ids" in details


def test_client_raises_the_class_of_each_status(client: Client) -> None:
    with pytest.raises(NotFound, match="movie -9 is not in the catalogue") as e:
        client.movie(-9)
    assert e.value.code == "NOT_FOUND"
    with pytest.raises(InvalidArgument):
        client.recommend(1, k=-1)


def test_similar_and_get_movie_errors(stub) -> None:
    assert code_and_details(stub.SimilarMovies, pb.SimilarMoviesRequest(movie_id=-9, k=3)) == (
        grpc.StatusCode.NOT_FOUND,
        "movie -9 is not in the catalogue",
    )
    code, _ = code_and_details(stub.SimilarMovies, pb.SimilarMoviesRequest(movie_id=1, k=-1))
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


def test_health_is_serving(client: Client, running_server: RunningServer) -> None:
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
GENRES = st.sampled_from(["Comedy", "Drama", "Western", "Nope", ""])


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
    dislikes=st.lists(INT64 | st.integers(1, 700), max_size=5),
    weights=st.none() | st.lists(st.floats(allow_nan=True, width=32), max_size=40),
    genres=st.lists(GENRES, max_size=3),
    years=st.tuples(INT32 | st.integers(1900, 2030), INT32 | st.integers(1900, 2030)),
    diversity=st.floats(width=32) | st.floats(0, 1, width=32),
    keys=st.lists(st.text(max_size=8), max_size=5),
)
def test_recommend_fuzz(
    stub, user_id, movie_ids, k, include_watched, explain, dislikes, weights, genres, years,
    diversity, keys,
) -> None:  # fmt: skip
    rules = pb.Filter(genres_any=genres[:1], genres_none=genres[1:], year_min=years[0],
                      year_max=years[1], exclude_movie_ids=dislikes[:2],
                      allow_movie_keys=keys[:2])  # fmt: skip
    request = pb.RecommendRequest(
        movie_ids=movie_ids, k=k, include_watched=include_watched, explain=explain,
        negative_movie_ids=dislikes, weights=weights or [], filter=rules, diversity=diversity,
        movie_keys=keys,
    )  # fmt: skip
    if user_id is not None:
        request.user_id = user_id
    assert outcome(stub.Recommend, request) in EXPECTED


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(movie_id=INT64 | st.integers(0, 700), k=INT32 | st.integers(0, 30))
def test_similar_and_get_movie_fuzz(stub, movie_id, k) -> None:
    assert outcome(stub.SimilarMovies, pb.SimilarMoviesRequest(movie_id=movie_id, k=k)) in EXPECTED
    assert outcome(stub.GetMovie, pb.GetMovieRequest(movie_id=movie_id)) in EXPECTED
