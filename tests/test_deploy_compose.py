"""deploy/compose.yaml: valid under the compose specification's JSON schema (the copy
check-jsonschema vendors; nothing is downloaded), and consistent with the image, the server's
settings and the Kubernetes Redis (same configuration file, same pinned image)."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy_support import CONTRACT_ENV, DEPLOY, KUBERNETES, REPO, project_version

COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_compose_file_matches_the_specification(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors


def test_the_schema_check_is_not_vacuous(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    """Misspelt keys and a wrong enum value fail. (Scalars are loose in the specification, which
    allows ${VAR} strings nearly everywhere: the checks below pin the values that matter.)"""
    for breakage in (
        lambda s: s.__setitem__("stop_grace_periode", s.pop("stop_grace_period")),
        lambda s: s["volumes"][0].__setitem__("readonly", True),  # it is read_only
        lambda s: s["depends_on"]["redis"].__setitem__("condition", "service_ready"),
    ):
        broken = copy.deepcopy(compose)
        breakage(broken["services"]["movierec"])
        assert not validator.is_valid(broken)


def server_env(compose: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = compose["services"]["movierec"]["environment"]
    return env


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"write durations in seconds: {duration}"
    return float(match[1])


def test_server_settings_are_the_servers(compose: dict[str, Any]) -> None:
    env = server_env(compose)
    assert set(env) <= CONTRACT_ENV, set(env) - CONTRACT_ENV
    service = compose["services"]["movierec"]
    # docker stop sends SIGKILL after stop_grace_period: it must outlast drain + grace.
    stop = float(env["MOVIEREC_DRAIN"]) + float(env["MOVIEREC_GRACE"])
    assert seconds(service["stop_grace_period"]) > stop
    # The health check asks the plaintext health-only listener.
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "movierec", "health"]
    assert test[test.index("--target") + 1] == f"127.0.0.1:{env['MOVIEREC_HEALTH_PORT']}"


def test_server_uses_the_redis_service_durably(compose: dict[str, Any]) -> None:
    url = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", server_env(compose)["MOVIEREC_EVENTS"])
    assert url
    assert url[1] in compose["services"], "the event store's host is a service of this file"
    redis = compose["services"][url[1]]
    assert compose["services"]["movierec"]["depends_on"][url[1]]["condition"] == "service_healthy"
    # Redis starts with the same redis.conf as Kubernetes (appendfsync always, noeviction)...
    config_path = redis["command"][1]
    (config,) = [v for v in redis["volumes"] if isinstance(v, dict) and v["target"] == config_path]
    assert (COMPOSE.parent / config["source"]).resolve() == KUBERNETES / "overlays/redis/redis.conf"
    assert config["read_only"] is True
    # ...keeps its data directory on a named volume, and is the image Kubernetes runs.
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]
    statefulset = (KUBERNETES / "overlays/redis/redis-statefulset.yaml").read_text()
    assert f"image: {redis['image']}\n" in statefulset
    assert re.search(r"@sha256:[0-9a-f]{64}$", redis["image"])


def test_artifacts_are_bind_mounted_read_only(compose: dict[str, Any]) -> None:
    service = compose["services"]["movierec"]
    (artifacts,) = [
        v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/artifacts"
    ]
    assert artifacts["type"] == "bind" and artifacts["read_only"] is True
    # The image's ENTRYPOINT serves /artifacts.
    assert '"--artifacts", "/artifacts"]' in (REPO / "Dockerfile").read_text()
    assert service["read_only"] is True
    assert any(str(v).endswith(":/var/lib/movierec") for v in service["volumes"])


def test_no_port_is_published_beyond_loopback(compose: dict[str, Any]) -> None:
    """No tokens are configured here, so nothing may listen beyond this machine."""
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_builds_this_repository_at_its_version(compose: dict[str, Any]) -> None:
    service = compose["services"]["movierec"]
    context = (COMPOSE.parent / service["build"]["context"]).resolve()
    assert (context / "Dockerfile").is_file() and context == REPO
    assert service["image"] == f"movierec:${{MOVIEREC_VERSION:-{project_version()}}}"
    assert service["build"]["args"]["VERSION"] == f"${{MOVIEREC_VERSION:-{project_version()}}}"


def test_default_artifacts_are_where_make_demo_puts_them(compose: dict[str, Any]) -> None:
    (artifacts,) = [
        v
        for v in compose["services"]["movierec"]["volumes"]
        if isinstance(v, dict) and v["target"] == "/artifacts"
    ]
    default = re.fullmatch(r"\$\{MOVIEREC_ARTIFACTS:-(.+)\}", artifacts["source"])
    assert default
    # movierec demo --workdir artifacts/demo trains into <workdir>/artifacts.
    assert (COMPOSE.parent / default[1]).resolve() == REPO / "artifacts" / "demo" / "artifacts"
    assert Path(default[1]).parts[0] == ".."
