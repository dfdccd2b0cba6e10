"""`pip install movierec` without extras is the client: the wheel installed into a fresh
virtual environment, with only the client's dependencies beside it (grpcio, protobuf, the
health stubs, googleapis' status; no numpy, FAISS or torch), talks to a running server with
the sync and the async client and through the CLI. Offline: the wheel is built here and the
dependencies are this environment's own packages, linked in one by one."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.app import RunningServer

from .conftest import LoopThread

ROOT = Path(__file__).resolve().parents[1]
# What `dependencies` in pyproject.toml pulls in, as import names and distribution names.
CLIENT_PACKAGES = ["grpc", "grpc_health", "google", "typing_extensions.py"]
CLIENT_DISTRIBUTIONS = ["grpcio", "grpcio_health_checking", "protobuf",
                        "googleapis_common_protos", "typing_extensions"]  # fmt: skip

SCRIPT = """
import asyncio, importlib.util, sys
from movierec.client import AsyncClient, Client, event, make_filter
from movierec.errors import NotFound

absent = [m for m in ("numpy", "faiss", "torch", "pandas", "server.recommender")
          if m.partition(".")[0] != "server" and importlib.util.find_spec(m) is not None]
assert not absent, absent
target = sys.argv[1]
with Client(target) as c:
    assert c.health() == "SERVING"
    r = c.recommend(movies=[1, 2, 3], k=4, filter=make_filter(genres_none=["Horror"]))
    assert len(r.recommendations) == 4
    try:
        c.movie(-5)
    except NotFound as e:
        assert e.code == "NOT_FOUND"
    else:
        raise AssertionError("no NotFound")

async def main():
    async with AsyncClient(target) as c:
        assert await c.health() == "SERVING"
        r = await c.recommend(1, k=3)
        assert len(r.recommendations) == 3
        assert (await c.similar(1, k=2)).recommendations
        try:
            await c.recommend(1, k=-1)
        except Exception as e:
            assert type(e).__name__ == "InvalidArgument", e
asyncio.run(main())
print("client ok")
"""


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("client-only")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp / "dist"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next((tmp / "dist").glob("movierec-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        assert "movierec/v1/recommender.proto" in z.namelist()  # the contract ships too
        assert "movierec/py.typed" in z.namelist()  # for users' type checkers
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # The client's dependencies, and nothing else, from this environment.
    here = Path(sysconfig.get_paths()["purelib"])
    deps = tmp / "deps"
    deps.mkdir()
    for name in CLIENT_PACKAGES:
        (deps / name).symlink_to(here / name)
    for dist in CLIENT_DISTRIBUTIONS:
        for info in here.glob(f"{dist}-*.dist-info"):
            (deps / info.name).symlink_to(info)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)  # fmt: skip
    (Path(site.stdout.strip()) / "client_deps.pth").write_text(f"{deps}\n")
    return venv


@pytest.fixture(scope="module")
def target(loop_thread: LoopThread, running_server: RunningServer) -> Iterator[str]:
    yield f"127.0.0.1:{running_server.port}"


def test_the_client_alone_talks_to_a_server(fresh_venv: Path, target: str) -> None:
    result = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", SCRIPT, target],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "client ok"


def test_the_client_commands_work_and_the_rest_say_what_to_install(
    fresh_venv: Path, target: str, tmp_path: Path
) -> None:
    movierec = str(fresh_venv / "bin" / "movierec")
    version = subprocess.run([movierec, "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("movierec ")
    table = subprocess.run([movierec, "recommend", "--target", target, "--user", "1", "-k", "3"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["MovieId", "Title", "Genres", "Similarity"]
    for command, extra in (
        (["serve", "--artifacts", str(tmp_path)], "server"),
        (["train", "--data", str(tmp_path), "--out", str(tmp_path / "a")], "train"),
        (["sample", "--out", str(tmp_path / "s")], "train"),
    ):
        result = subprocess.run([movierec, *command], capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'movierec[{extra}]'" in lines[0], result.stderr
