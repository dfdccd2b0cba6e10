"""The serving image, checked without a container engine: hadolint on the Dockerfile, the
reproducibility rules (base by digest, hashed lock covering exactly the [server] extra,
installed hash-checked), the build context (.dockerignore lets through what COPY needs), and
that the image's settings are the server's."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy_support import CONTRACT_ENV, REPO, tool

DOCKERFILE = (REPO / "Dockerfile").read_text()
LOCK = REPO / "requirements" / "server.lock"
BUILD_LOCK = REPO / "requirements" / "build.lock"
TRAIN_ONLY = {"torch", "pandas", "tqdm", "matplotlib", "scikit-learn"}


def pyproject() -> dict:  # type: ignore[type-arg]
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "-"],
        input=DOCKERFILE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_base_image_is_pinned_by_digest() -> None:
    args = dict(a.split("=", 1) for i, a in instructions() if i == "ARG" and "=" in a)
    froms = [a.split()[0] for i, a in instructions() if i == "FROM"]
    assert froms
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        assert re.fullmatch(r"[\w./:-]+@sha256:[0-9a-f]{64}", image), image


def locked() -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, hashes) from a hashed requirements file."""
    entries = re.sub(r"\s*\\\n\s*", " ", LOCK.read_text())
    pins = {}
    for line in entries.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)((?: --hash=sha256:[0-9a-f]{64})+)\s*", line)
        assert match, f"not a hashed pin: {line}"
        pins[canonicalize_name(match[1])] = (Version(match[2]), match[3].split())
    return pins


def test_lock_pins_exactly_the_server_dependencies() -> None:
    project = pyproject()["project"]
    pins = locked()
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["server"]]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a server dependency but not locked: make lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{name}=={pins[name][0]} does not satisfy {requirement}: make lock"
        )
    assert not TRAIN_ONLY & set(pins), "the serving image must not carry the training stack"
    assert canonicalize_name("movierec") not in pins


def test_locks_record_how_they_were_made() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^lock:", makefile, re.M)
    for lock in (LOCK, BUILD_LOCK):
        assert "#    make lock" in lock.read_text()
    # The lock is resolved for the base image's Python.
    (version,) = re.findall(r"--python-version (\S+)", makefile)
    assert f"python:{version}-slim" in DOCKERFILE


def test_dependencies_are_installed_only_from_the_locks() -> None:
    installs = [a for i, a in instructions() if i == "RUN" and " install " in a]
    pip_installs = re.findall(r"pip (?:--python \S+ )?install ([^&]*)", " ".join(installs))
    assert pip_installs
    for args in pip_installs:
        if "-r " in args:
            assert "--require-hashes" in args and "--no-deps" in args, args
        else:  # only the wheel just built from this source
            assert args.split()[-1] == "/dist/*.whl" and "--no-deps" in args, args
    assert "pip --python /opt/venv/bin/python check" in DOCKERFILE
    assert "apt-get" not in DOCKERFILE, "system packages would be unpinned"


def test_labels_come_from_build_args() -> None:
    labels = " ".join(a for i, a in instructions() if i == "LABEL")
    values = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', labels))
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert values.get(f"org.opencontainers.image.{key}"), key
    assert values["org.opencontainers.image.version"] == "${VERSION}"
    assert values["org.opencontainers.image.revision"] == "${REVISION}"
    assert values["org.opencontainers.image.source"] == "${SOURCE}"
    assert values["org.opencontainers.image.licenses"] == pyproject()["project"]["license"]["text"]
    makefile = (REPO / "Makefile").read_text()
    for arg in ("VERSION", "REVISION", "SOURCE"):
        assert f"--build-arg {arg}=" in makefile


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = [a for i, a in instructions() if i == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def env() -> dict[str, str]:
    pairs = " ".join(a for i, a in instructions() if i == "ENV")
    return dict(re.findall(r"(\w+)=(\S+)", pairs))


def test_settings_are_the_servers_and_drain_is_one() -> None:
    settings = {k: v for k, v in env().items() if k.startswith("MOVIEREC_")}
    assert set(settings) <= CONTRACT_ENV, set(settings) - CONTRACT_ENV
    assert "MOVIEREC_DRAIN" in settings and "MOVIEREC_GRACE" in settings
    assert settings["MOVIEREC_HOST"] == "0.0.0.0", "a container must listen beyond loopback"


def test_healthcheck_asks_the_health_listener() -> None:
    (healthcheck,) = [a for i, a in instructions() if i == "HEALTHCHECK"]
    assert "movierec health --target" in healthcheck
    assert "127.0.0.1:${MOVIEREC_HEALTH_PORT}" in healthcheck
    exposed = " ".join(a for i, a in instructions() if i == "EXPOSE").split()
    assert env()["MOVIEREC_HEALTH_PORT"] in exposed and env()["MOVIEREC_PORT"] in exposed


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negated
    return excluded


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for instruction, args in instructions():
        if instruction == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    for source in sources:
        files = [f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")]
        assert files, f"COPY {source}: nothing in the repository"
        for f in files:
            if not f.endswith(".pyc"):
                assert not dockerignore_excludes(f, patterns), f"{f} is excluded by .dockerignore"
    # The wheel's packages are all copied; nothing else of the tree needs to be.
    packages = pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert {f"{p}/" for p in packages} <= set(sources)
    for secret_or_bulk in (".venv/bin/python", "artifacts/demo/manifest.json", "tests/conftest.py"):
        assert dockerignore_excludes(secret_or_bulk, patterns), secret_or_bulk


@pytest.mark.parametrize("name", ["LICENSE", "CHANGELOG.md"])
def test_license_and_changelog(name: str) -> None:
    text = (REPO / name).read_text()
    if name == "LICENSE":
        assert text.startswith("MIT License") and "movierec authors" in text
        assert pyproject()["project"]["license"]["text"] == "MIT"
    else:
        assert "## [Unreleased]" in text and "keepachangelog.com" in text
