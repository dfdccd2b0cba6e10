"""The Kubernetes manifests (deploy/kubernetes): every kustomization is rendered with the real
kubectl and each resource validated against the Kubernetes schemas (strict: unknown fields
fail) at the oldest release we claim and the newest known; then the numbers that must agree
are checked against each other and against the server's own --help. Offline throughout."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy_support import (
    CONTRACT_ENV,
    KUBERNETES,
    REPO,
    check_flag,
    find,
    flag_values,
    project_version,
    render,
    render_with,
)

BASE = KUBERNETES / "base"
REDIS = KUBERNETES / "overlays" / "redis"
ARTIFACT_IMAGE = KUBERNETES / "components" / "artifact-image"
MTLS = KUBERNETES / "components" / "mtls"
LOADER = KUBERNETES / "tools" / "artifact-loader.yaml"

# Oldest release the manifests claim (deploy/README.md) and the newest the schemas know.
# Image volumes (components/artifact-image) are on by default only from 1.35.
OLDEST, NEWEST, IMAGE_VOLUMES = "1.30", "1.37", "1.35"


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def redis() -> list[dict[str, Any]]:
    return render(REDIS)


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The redis overlay with both components: the largest combination."""
    return render_with(tmp_path_factory.mktemp("k"), REDIS, [ARTIFACT_IMAGE, MTLS])


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render_with(tmp_path_factory.mktemp("k"), BASE, [MTLS])


def validate(resources: list[dict[str, Any]], version: str) -> None:
    assert resources
    for resource in resources:
        kubernetes_validate.validate(resource, version, strict=True)


def server(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Deployment's pod spec and its server container."""
    pod = find(resources, "Deployment", "movierec")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    return pod, containers["server"]


def args_of(container: dict[str, Any]) -> dict[str, str]:
    assert container["command"] == ["movierec", "serve"]
    return flag_values(container["args"])


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def mount_path(pod: dict[str, Any], container: dict[str, Any], volume_name: str) -> str:
    mounts = [m for m in container["volumeMounts"] if m["name"] == volume_name]
    assert len(mounts) == 1, f"volume {volume_name} mounted {len(mounts)} times"
    assert any(v["name"] == volume_name for v in pod["volumes"])
    path: str = mounts[0]["mountPath"]
    return path


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in pod["volumes"] if v["name"] == name]
    return found


def under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_base_and_redis_overlay_validate(
    base: list[dict[str, Any]],
    redis: list[dict[str, Any]],
    mtls: list[dict[str, Any]],
    version: str,
) -> None:
    validate(base, version)
    validate(redis, version)
    validate(mtls, version)
    validate([yaml.safe_load(LOADER.read_text())], version)


@pytest.mark.parametrize("version", [IMAGE_VOLUMES, NEWEST])
def test_artifact_image_component_validates(everything: list[dict[str, Any]], version: str) -> None:
    validate(everything, version)


def test_the_validator_is_not_vacuous(base: list[dict[str, Any]]) -> None:
    """A misspelt field, a string where a number goes and a missing required field must all
    fail: otherwise the validations above would prove nothing. (The schemas do not bound
    numbers: a port of 70000 passes them, one reason for the checks further down.)"""
    deployment = find(base, "Deployment")
    breakages = [
        lambda c: c.__setitem__("readinesProbe", c.pop("readinessProbe")),
        lambda c: c["livenessProbe"]["grpc"].__setitem__("port", "health"),
        lambda c: c.pop("name"),
    ]
    for breakage in breakages:
        broken = copy.deepcopy(deployment)
        breakage(broken["spec"]["template"]["spec"]["containers"][0])
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, OLDEST, strict=True)


# --- the server's flags ------------------------------------------------------------------


def deployment_flags() -> list[str]:
    flags = set()
    for resources in (render(BASE), render(REDIS)):
        flags |= set(args_of(server(resources)[1]))
    return sorted(flags)


@pytest.mark.parametrize("flag", deployment_flags())
def test_deployment_flags_are_accepted_by_serve(flag: str) -> None:
    check_flag(flag)


def test_environment_names_are_the_servers(
    base: list[dict[str, Any]], redis: list[dict[str, Any]]
) -> None:
    for resources in (base, redis):
        names = set(env_of(server(resources)[1]))
        assert names <= CONTRACT_ENV, f"not movierec settings: {names - CONTRACT_ENV}"


# --- probes, shutdown, resources ------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "redis", "mtls"])
def test_every_probe_asks_the_health_listener(variant: str, request: pytest.FixtureRequest) -> None:
    """gRPC probes on --health-port: a plaintext listener, so they pass when the main port
    requires client certificates (the kubelet has none)."""
    pod, container = server(request.getfixturevalue(variant))
    args = args_of(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    health = int(args["--health-port"])
    assert ports["health"] == health
    assert ports["grpc"] == int(args["--port"]) != health
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": health}, probe


def test_mtls_component_secures_the_main_port_only(mtls: list[dict[str, Any]]) -> None:
    pod, container = server(mtls)
    args = args_of(container)
    tls_dir = mount_path(pod, container, "tls")
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca"):
        assert under(args[flag], tls_dir), flag
    assert volume(pod, "tls")["secret"]["secretName"] == "movierec-tls"


def test_a_draining_pod_is_neither_killed_nor_cut_short(base: list[dict[str, Any]]) -> None:
    """After SIGTERM the server answers NOT_SERVING for --drain s, then finishes calls within
    --grace s. The kubelet's SIGKILL must come later, and liveness must not call a pod that
    is draining on purpose dead."""
    pod, container = server(base)
    args = args_of(container)
    stop = float(args["--drain"]) + float(args["--grace"])
    assert float(args["--drain"]) > 0, "without a drain, calls race the endpoint removal"
    assert pod["terminationGracePeriodSeconds"] > stop
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > stop
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < float(args["--drain"])


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("variant", ["base", "redis"])
def test_resources_match_processes_and_workers(
    variant: str, request: pytest.FixtureRequest
) -> None:
    pod, container = server(request.getfixturevalue(variant))
    args = args_of(container)
    processes, workers = int(args["--processes"]), int(args["--workers"])
    resources = container["resources"]
    assert resources["requests"] == resources["limits"], "Guaranteed QoS: requests = limits"
    cores = cpu(resources["limits"]["cpu"])
    assert processes == cores, "one process per core of the CPU limit"
    assert processes * max(workers, 1) <= cores, "more search threads than cores"
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("variant", ["base", "redis"])
def test_metrics_ports_and_annotations(variant: str, request: pytest.FixtureRequest) -> None:
    """Process i of --processes serves /metrics on --metrics-port + i: each gets a port, and
    the scrape annotation names process 0's."""
    deployment = find(request.getfixturevalue(variant), "Deployment", "movierec")
    pod, container = server(request.getfixturevalue(variant))
    args = args_of(container)
    first, processes = int(args["--metrics-port"]), int(args["--processes"])
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    metrics = {n: p for n, p in declared.items() if n.startswith("metrics-")}
    assert metrics == {f"metrics-{i}": first + i for i in range(processes)}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == first
    assert args["--metrics-host"] == "0.0.0.0", "loopback metrics cannot be scraped"


# --- security and files -------------------------------------------------------------------


def dockerfile_user() -> int:
    (user,) = re.findall(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.M)
    return int(user)


@pytest.mark.parametrize("variant", ["base", "redis", "everything"])
def test_runs_locked_down(variant: str, request: pytest.FixtureRequest) -> None:
    pod, container = server(request.getfixturevalue(variant))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # A Service named movierec would inject MOVIEREC_PORT=tcp://...: the server's own setting.
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # Every path the server writes is a volume: the state directory and /tmp.
    env = env_of(container)
    assert mount_path(pod, container, "state") == env["MOVIEREC_STATE_DIR"]
    assert mount_path(pod, container, "tmp") == "/tmp"


@pytest.mark.parametrize("variant", ["base", "redis", "everything"])
def test_artifacts_are_mounted_read_only(variant: str, request: pytest.FixtureRequest) -> None:
    pod, container = server(request.getfixturevalue(variant))
    args = args_of(container)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "artifacts"]
    assert mount["readOnly"] is True
    assert under(args["--artifacts"], mount["mountPath"])
    source = volume(pod, "artifacts")
    assert ("persistentVolumeClaim" in source) != ("image" in source)
    if "persistentVolumeClaim" in source:
        assert source["persistentVolumeClaim"]["readOnly"] is True


@pytest.mark.parametrize("variant", ["base", "redis"])
def test_tokens_come_from_secret_files(variant: str, request: pytest.FixtureRequest) -> None:
    """Bearer tokens and admin tokens from two Secrets, mounted as directories (no subPath, so
    a rotated Secret reaches the pod), read-only."""
    pod, container = server(request.getfixturevalue(variant))
    args = args_of(container)
    secrets = {}
    for flag, volume_name in (("--tokens-file", "tokens"), ("--admin-tokens-file", "admin-tokens")):
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume_name]
        assert mount["readOnly"] is True and "subPath" not in mount
        assert under(args[flag], mount["mountPath"])
        secrets[flag] = volume(pod, volume_name)["secret"]["secretName"]
    assert len(set(secrets.values())) == 2, "admin tokens need their own Secret"
    assert not any(r["kind"] == "Secret" for r in render(BASE)), "no secret is committed"


# --- the event store ---------------------------------------------------------------------


def test_one_replica_keeps_events_in_sqlite_on_a_volume(base: list[dict[str, Any]]) -> None:
    deployment = find(base, "Deployment", "movierec")
    pod, container = server(base)
    events = env_of(container)["MOVIEREC_EVENTS"]
    assert events.startswith("sqlite:////"), "an absolute path: four slashes"
    state = mount_path(pod, container, "state")
    assert under(events.removeprefix("sqlite:///"), state)
    claim = volume(pod, "state")["persistentVolumeClaim"]["claimName"]
    assert find(base, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One writer per file: one replica, and the old pod gone before the new one starts.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_replicas_share_one_durable_redis(redis: list[dict[str, Any]]) -> None:
    deployment = find(redis, "Deployment", "movierec")
    pod, container = server(redis)
    assert deployment["spec"]["replicas"] > 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # No ReadWriteOnce claim is mounted by pods that may run on several nodes.
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    for claim in claims:
        modes = find(redis, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
        assert "ReadWriteOnce" not in modes, claim
    assert not any(
        r["kind"] == "PersistentVolumeClaim" and r["metadata"]["name"] == "movierec-state"
        for r in redis
    )

    # The URL names the Redis Service and its port; the Service selects the StatefulSet's pods.
    url = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/(\d+)", env_of(container)["MOVIEREC_EVENTS"])
    assert url, env_of(container)["MOVIEREC_EVENTS"]
    service = find(redis, "Service", url[1])
    assert int(url[2]) in [p["port"] for p in service["spec"]["ports"]]
    statefulset = find(redis, "StatefulSet")
    template = statefulset["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]

    # Durable: the data directory redis.conf names is the StatefulSet's persistent claim.
    conf = redis_conf()
    (redis_container,) = template["spec"]["containers"]
    claims = [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]]
    data = [m for m in redis_container["volumeMounts"] if m["name"] in claims]
    assert [m["mountPath"] for m in data] == [conf["dir"]]
    # The config Redis starts with is the generated ConfigMap holding redis.conf.
    config_path = redis_container["command"][1]
    (config_mount,) = [
        m for m in redis_container["volumeMounts"] if under(config_path, m["mountPath"])
    ]
    config_map = volume(template["spec"], config_mount["name"])["configMap"]["name"]
    assert (
        find(redis, "ConfigMap", config_map)["data"][Path(config_path).name]
        == (REDIS / "redis.conf").read_text()
    )
    # maxmemory sits below the container's limit, so Redis refuses writes, not the kernel.
    limit = redis_container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(conf["maxmemory"].removesuffix("mb")) < int(limit[:-2])


def redis_conf() -> dict[str, str]:
    lines = (REDIS / "redis.conf").read_text().splitlines()
    pairs = [line.split(None, 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_redis_acknowledges_only_what_is_on_disk() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "always", "everysec loses up to a second of acknowledged events"
    assert conf["maxmemory-policy"] == "noeviction", "events must never be evicted"


def test_only_the_servers_reach_redis(redis: list[dict[str, Any]]) -> None:
    policy = find(redis, "NetworkPolicy")
    statefulset = find(redis, "StatefulSet")
    redis_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    server_labels = find(redis, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert source["podSelector"]["matchLabels"].items() <= server_labels.items()


# --- services, disruption budget, image ------------------------------------------------------


@pytest.mark.parametrize("variant", ["base", "redis"])
def test_services_and_budget_select_the_servers(
    variant: str, request: pytest.FixtureRequest
) -> None:
    resources = request.getfixturevalue(variant)
    labels = find(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pod, container = server(resources)
    grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    services = [
        r
        for r in resources
        if r["kind"] == "Service" and r["spec"]["selector"].items() <= labels.items()
    ]
    assert services
    for service in services:
        (port,) = service["spec"]["ports"]
        assert (port["name"], port["port"], port["appProtocol"]) == ("grpc", grpc_port, "grpc")
        assert port["targetPort"] == "grpc"
    budget = find(resources, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1


def test_image_tag_follows_the_project_version(base: list[dict[str, Any]]) -> None:
    pod, container = server(base)
    loader = yaml.safe_load(LOADER.read_text())
    expected = f"movierec:{project_version()}"
    assert container["image"] == expected
    assert loader["spec"]["containers"][0]["image"] == expected


def test_loader_writes_the_volume_the_server_reads(base: list[dict[str, Any]]) -> None:
    loader = yaml.safe_load(LOADER.read_text())
    pod, container = server(base)
    claim = volume(pod, "artifacts")["persistentVolumeClaim"]["claimName"]
    (loader_volume,) = [
        v
        for v in loader["spec"]["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    ]
    (mount,) = [
        m
        for m in loader["spec"]["containers"][0]["volumeMounts"]
        if m["name"] == loader_volume["name"]
    ]
    assert mount["mountPath"] == mount_path(pod, container, "artifacts")
    assert not mount.get("readOnly")
    assert loader["spec"]["securityContext"]["runAsUser"] == dockerfile_user()
