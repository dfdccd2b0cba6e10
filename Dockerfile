# Serving image: the gRPC server and its light dependencies only (no torch, no pandas).
#   docker build -t movierec .
#   docker run --rm -p 50051:50051 -v "$PWD/artifacts/mls:/artifacts:ro" movierec
# Train outside the image (or in a separate stage with the [train] extra) and mount the
# artifact directory read-only.

FROM python:3.11-slim-bookworm AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
p = d['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['server']))" \
    > requirements.txt \
 && pip install -r requirements.txt
COPY movierec/ movierec/
COPY server/ server/
COPY trainer/ trainer/
RUN pip install --no-deps . && python -m compileall -q /opt/venv

FROM python:3.11-slim-bookworm
# Not root: a system user, named by its numeric id below so any runtime can resolve it.
RUN useradd --system --uid 999 --no-create-home movierec
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
    MOVIEREC_HOST=0.0.0.0 MOVIEREC_PORT=50051
USER 999
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["movierec", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["movierec", "serve", "--artifacts", "/artifacts"]
