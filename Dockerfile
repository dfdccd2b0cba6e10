# Serving image: the gRPC server and its [server] dependencies only (no torch, no pandas).
#   make image                      reproducible build: labels from git, times clamped (buildx)
#   docker build -t movierec .      plain build
#   docker run --rm -p 50051:50051 -v "$PWD/artifacts/mls:/artifacts:ro" movierec
# Train outside the image and mount the artifact directory read-only (deploy/README.md shows
# Kubernetes and compose). Settings come from MOVIEREC_* variables or flags after the image name.
#
# Reproducible: the base is pinned by digest, every dependency by version and sha256
# (requirements/*.lock, `make lock`), the wheel is built by a locked hatchling (which clamps its
# file times), and bytecode is hash-based, not timestamped.

# python:3.11-slim-bookworm (CPython 3.11.16), by the digest of its multi-platform index.
# To move it: docker buildx imagetools inspect python:3.11-slim-bookworm, then `make lock`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first, from the locks alone: this layer is rebuilt only when a lock changes.
# --require-hashes checks every downloaded file against the lock; --no-deps lets nothing
# unlocked in (pip check below catches a lock that misses one). The runtime venv gets no pip
# or setuptools of its own: the base image's pip installs into it with --python.
COPY requirements/server.lock requirements/build.lock requirements/
RUN python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-compile --require-hashes --no-deps \
        -r requirements/server.lock \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.lock
# The code. Keep this list in step with pyproject's wheel packages and .dockerignore
# (tests/test_deploy_image.py checks both).
COPY pyproject.toml README.md LICENSE ./
COPY movierec/ movierec/
COPY server/ server/
COPY trainer/ trainer/
RUN /opt/build/bin/pip wheel --no-build-isolation --no-deps --wheel-dir /dist . \
 && pip --python /opt/venv/bin/python install --no-compile --no-deps /dist/*.whl \
 && pip --python /opt/venv/bin/python check \
 && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/venv \
 && /opt/venv/bin/python -c "import faiss, grpc, numpy, redis, server.app"

FROM ${PYTHON_IMAGE}
ARG VERSION=0.0.0+unknown
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="movierec" \
      org.opencontainers.image.description="Vector-search movie recommendations served over gRPC (FAISS); serving only, no training stack" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"
# Not root: a system user and group, named by number below so any runtime (and Kubernetes'
# runAsNonRoot) can check it. /var/lib/movierec is the state directory (the embedded event
# store); mount a volume there to keep it, as the root filesystem may be read-only.
RUN groupadd --system --gid 999 movierec \
 && useradd --system --uid 999 --gid 999 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin movierec \
 && install -d -o 999 -g 999 -m 0750 /var/lib/movierec
COPY --from=build /opt/venv /opt/venv
# One OpenMP/BLAS thread per search: the server runs searches on its own worker threads.
# MOVIEREC_DRAIN: seconds to keep answering, NOT_SERVING, after SIGTERM (load balancers see
# it and stop sending); MOVIEREC_GRACE: then seconds for in-flight calls. Stop timeouts must
# exceed their sum (docker stop -t, compose stop_grace_period, terminationGracePeriodSeconds).
# The health-only listener (plaintext, health service only) serves the HEALTHCHECK and
# Kubernetes probes even when the main port requires mutual TLS.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    MOVIEREC_HOST=0.0.0.0 MOVIEREC_PORT=50051 MOVIEREC_HEALTH_PORT=50052 \
    MOVIEREC_STATE_DIR=/var/lib/movierec MOVIEREC_DRAIN=0 MOVIEREC_GRACE=10
USER 999:999
WORKDIR /var/lib/movierec
EXPOSE 50051 50052
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sh", "-c", "exec movierec health --target \"127.0.0.1:${MOVIEREC_HEALTH_PORT}\" --timeout 3"]
ENTRYPOINT ["movierec", "serve", "--artifacts", "/artifacts"]
