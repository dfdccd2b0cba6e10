# The two commands a newcomer needs:
#   make demo   install, train on the built-in sample, serve it on localhost:50051
#   make test   install, lint, type-check and run the whole test suite (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin
# torch==2.13.0 from PyPI is the CUDA build (several GB of nvidia packages). Where this machine
# has no local CPU wheel, take PyTorch's own CPU build:
#   make demo TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
PIP_INSTALL := $(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))

.PHONY: demo test check proto bench lock image

$(BIN)/movierec: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[server,train,dev]'
	touch $@

demo: $(BIN)/movierec
	$(BIN)/movierec demo

check: $(BIN)/movierec
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

test: check
	$(BIN)/pytest

proto: $(BIN)/movierec
	$(BIN)/python scripts/generate_proto.py

# Measurements, not tests (minutes): each prints its numbers and its ratios to a reference
# measured in the same run; bench_targets.py ends with the serving targets' summary table.
bench: $(BIN)/movierec
	$(BIN)/python benchmarks/bench_core.py --quick
	$(BIN)/python benchmarks/bench_events.py
	$(BIN)/movierec train --data ../shared/eval/ml-latest-small/train --out artifacts/mls-split --quiet
	$(BIN)/python benchmarks/bench_service.py --split ../shared/eval/ml-latest-small --artifacts artifacts/mls-split
	$(BIN)/python benchmarks/bench_ann.py --artifacts artifacts/mls-split
	$(BIN)/python benchmarks/bench_targets.py --artifacts artifacts/mls-split --synthetic 62423

# The image's locked dependencies (Dockerfile: pip install --require-hashes --no-deps). Run after
# changing pyproject's dependencies or [server] extra; existing pins are kept where they still
# fit, `make lock LOCK_ARGS=--upgrade` moves everything to the newest. Needs PyPI.
UV_VERSION := 0.13.9
LOCK_FLAGS := --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
	--custom-compile-command 'make lock' $(LOCK_ARGS)
lock: $(BIN)/movierec
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile $(LOCK_FLAGS) --extra server pyproject.toml -o requirements/server.lock
	$(BIN)/uv pip compile $(LOCK_FLAGS) requirements/build.in -o requirements/build.lock

# The serving image, reproducibly: labels from git; buildx reads SOURCE_DATE_EPOCH and clamps
# every file time and the image's creation date to the last commit's. Needs docker buildx
# (BuildKit >= 0.13 for rewrite-timestamp); no engine runs on the development machine.
IMAGE ?= movierec
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' movierec/__init__.py)
image:
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) docker buildx build \
		--build-arg VERSION=$(VERSION) --build-arg REVISION=$$(git rev-parse HEAD) \
		--build-arg SOURCE=$$(git remote get-url origin 2>/dev/null) \
		--output type=docker,name=$(IMAGE):$(VERSION),rewrite-timestamp=true .
