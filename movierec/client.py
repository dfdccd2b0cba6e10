"""A small typed client for RecommenderService, used by the CLI and the tests; copy it.

Usage::

    with RecommenderClient("localhost:50051") as client:
        for r in client.recommend(user_id=1, k=10).recommendations:
            print(r.movie_id, r.title, r.similarity)
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc


class RecommenderClient:
    def __init__(
        self,
        target: str,
        timeout: float = 5.0,
        *,
        token: str | None = None,
        tls_ca: bytes | None = None,
        tls: bool = False,
        client_cert: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``target`` is host:port; ``timeout`` is each call's deadline in seconds.
        ``token`` is sent as ``authorization: Bearer``. TLS is used when ``tls`` is set or any
        of ``tls_ca`` (PEM roots; default: the system's) and ``client_cert`` ((PEM chain,
        PEM key), for mutual TLS) is given."""
        self.timeout = timeout
        if tls or tls_ca or client_cert:
            key, chain = (client_cert[1], client_cert[0]) if client_cert else (None, None)
            credentials = grpc.ssl_channel_credentials(tls_ca, key, chain)
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.RecommenderServiceStub(self._channel)
        self._admin = pb_grpc.AdminServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def recommend(
        self, user_id: int, k: int = 10, include_watched: bool = False, explain: int = 0
    ) -> pb.RecommendResponse:
        """``explain`` > 0: each recommendation names that many contributing watched movies."""
        request = pb.RecommendRequest(
            user_id=user_id, k=k, include_watched=include_watched, explain=explain
        )
        return self._stub.Recommend(request, timeout=self.timeout, metadata=self._metadata)

    def recommend_for_movies(
        self,
        movie_ids: Sequence[int],
        k: int = 10,
        include_watched: bool = False,
        explain: int = 0,
    ) -> pb.RecommendResponse:
        request = pb.RecommendRequest(
            movie_ids=movie_ids, k=k, include_watched=include_watched, explain=explain
        )
        return self._stub.Recommend(request, timeout=self.timeout, metadata=self._metadata)

    def similar(self, movie_id: int, k: int = 10) -> pb.SimilarMoviesResponse:
        request = pb.SimilarMoviesRequest(movie_id=movie_id, k=k)
        return self._stub.SimilarMovies(request, timeout=self.timeout, metadata=self._metadata)

    def movie(self, movie_id: int) -> pb.Movie:
        request = pb.GetMovieRequest(movie_id=movie_id)
        return self._stub.GetMovie(request, timeout=self.timeout, metadata=self._metadata).movie

    def reload_model(self) -> pb.ReloadModelResponse:
        """Ask the server to re-read its artifact directory (AdminService.ReloadModel)."""
        request = pb.ReloadModelRequest()
        return self._admin.ReloadModel(
            request, timeout=max(self.timeout, 60), metadata=self._metadata
        )

    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... as the standard gRPC health service reports it."""
        request = health_pb2.HealthCheckRequest(service=service)
        status = self._health.Check(request, timeout=self.timeout).status
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
