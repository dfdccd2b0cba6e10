# The two commands a newcomer needs:
#   make demo   install, train on the built-in sample, serve it on localhost:50051
#   make test   install, lint, type-check and run the whole test suite (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check proto bench

$(BIN)/movierec: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,train,dev]'
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

bench: $(BIN)/movierec
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_grpc.py --synthetic 62423
	$(BIN)/python benchmarks/bench_grpc.py --synthetic 62423 --processes 2
	$(BIN)/movierec train --data ../shared/data/ml-latest-small --out artifacts/mls --quiet
	$(BIN)/python benchmarks/bench_ann.py --artifacts artifacts/mls
