"""Serving never imports the trainer's stack (torch, pandas, and the report's matplotlib and
scikit-learn): load artifacts and answer an RPC in a fresh interpreter, then look at
sys.modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, sys
from movierec.client import Client
from server.app import build_server, load_recommender

async def main():
    running = await build_server(load_recommender(sys.argv[1]))
    def call():
        with Client(f"127.0.0.1:{running.port}") as c:
            return c.recommend(movies=[1, 2], k=3)
    response = await asyncio.to_thread(call)
    await running.stop(None)
    assert len(response.recommendations) == 3
asyncio.run(main())
heavy = sorted(m for m in ("torch", "pandas", "tqdm", "trainer", "matplotlib", "sklearn")
               if m in sys.modules)
print("heavy:", heavy)
"""


def test_serving_imports_none_of_the_training_stack(artifacts_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(artifacts_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "heavy: []"


def test_cli_query_commands_import_neither() -> None:
    code = (
        "import sys; from movierec.cli import _parser; _parser(); "
        "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_export_and_als_need_no_torch() -> None:
    """Training's output crosses into the artifact as numpy: the exporter and the ALS
    objective load without torch."""
    code = (
        "import sys; import trainer.export, trainer.als, trainer.embeddings; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
