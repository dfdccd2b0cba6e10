"""Regenerate movierec/v1/*_pb2*.py{,i} from proto/ with the pinned toolchain.

python scripts/generate_proto.py            # write into the repository
python scripts/generate_proto.py --out DIR  # write elsewhere (the staleness test does)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import google.rpc
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ["movierec/v1/recommender.proto"]


def generate(out: Path) -> None:
    bin_dir = Path(sys.executable).parent  # protoc plugins live beside the interpreter
    # The well-known types ship with grpc_tools, google/rpc/status.proto with
    # googleapis-common-protos (a runtime dependency: the generated code imports it).
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{well_known}",
        f"-I{googleapis}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
