"""The Kubernetes manifests and the compose file agree with the code: probe paths are routes of
the app, ports agree, every configured variable is a real setting, the pod runs as non-root
with resources set, and the state volume is mounted where the service keeps its state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from service.api.runtime import PUBLIC_PATHS
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PORT = Settings.model_fields["port"].default


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s, by (kind, name)."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _load(path):
            if doc["kind"] != "Kustomization":
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.fixture(scope="module")
def pod(objects: dict) -> dict[str, Any]:
    return objects[("Deployment", "hubless")]["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod: dict) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def config(objects: dict) -> dict[str, str]:
    return objects[("ConfigMap", "hubless-config")]["data"]


def _get_routes() -> set[str]:
    """GET paths of the app, from its OpenAPI schema (included routers are listed there)."""
    schema = create_app(Settings.model_construct(), configure_logs=False).openapi()
    return {path for path, operations in schema["paths"].items() if "get" in operations}


def _setting(name: str) -> str:
    """The Settings field an environment variable sets (fails if it sets none)."""
    assert name.startswith("HUBLESS_"), name
    field = name.removeprefix("HUBLESS_").lower()
    assert field in Settings.model_fields, f"{name} is not a setting of service/settings.py"
    return field


def test_every_manifest_parses_and_names_its_kind(objects: dict) -> None:
    kinds = {kind for kind, _ in objects}
    expected = {"Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim", "Pod"}
    assert expected <= kinds
    for (kind, name), doc in objects.items():
        assert doc["apiVersion"] and name, (kind, name)


def test_kustomization_applies_the_service_but_not_the_examples() -> None:
    (kustomization,) = _load(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert all((K8S / name).is_file() for name in resources)
    assert {"deployment.yaml", "service.yaml", "configmap.yaml", "pvc.yaml"} <= set(resources)
    assert "secret.example.yaml" not in resources  # a real key is created, never committed
    assert "data-loader.yaml" not in resources


def test_one_replica_never_two_writers(objects: dict) -> None:
    spec = objects[("Deployment", "hubless")]["spec"]
    assert spec["replicas"] == 1  # each replica has its own gallery state: see the comment
    assert spec["strategy"]["type"] == "Recreate"
    text = (K8S / "deployment.yaml").read_text()
    assert "Milvus" in text and "replica" in text  # the why, and the pointer, stay written


def test_probes_hit_real_routes_on_the_container_port(container: dict) -> None:
    routes = _get_routes()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, f"{probe} path {get['path']} is not a GET route"
        assert ports.get(get["port"], get["port"]) == PORT
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/readyz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # room to precompute
    # the kubelet sends no API key: the probes must work with HUBLESS_AUTH_READS=true too
    assert set(paths.values()) <= PUBLIC_PATHS


def test_ports_agree_from_service_to_app(objects: dict, pod: dict, container: dict) -> None:
    service = objects[("Service", "hubless")]["spec"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [PORT]
    for port in service["ports"]:
        target = port["targetPort"]
        assert ports.get(target, target) == PORT
    assert service["selector"].items() <= pod["metadata"]["labels"].items()


def test_config_map_sets_only_real_settings_with_valid_values(config: dict) -> None:
    fields = {_setting(name): value for name, value in config.items()}
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values are strings"
    settings = Settings(**fields)  # parses and validates exactly as the pod will
    assert settings.host == "0.0.0.0" and settings.port == PORT
    assert "HUBLESS_API_KEY" not in config, "the key comes from the Secret, not the ConfigMap"


def test_api_key_comes_from_the_secret(objects: dict, container: dict) -> None:
    (env,) = [e for e in container["env"] if e["name"] == "HUBLESS_API_KEY"]
    ref = env["valueFrom"]["secretKeyRef"]
    secret = objects[("Secret", ref["name"])]
    assert ref["key"] in secret["stringData"]
    assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["hubless-config"]
    for variable in container["env"]:
        _setting(variable["name"])


@pytest.mark.parametrize("kind_name", [("Deployment", "hubless"), ("Pod", "hubless-data-loader")])
def test_pods_run_as_non_root_with_resources(objects: dict, kind_name: tuple[str, str]) -> None:
    doc = objects[kind_name]
    spec = doc["spec"]["template"]["spec"] if kind_name[0] == "Deployment" else doc["spec"]
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0 and security["runAsGroup"] != 0
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys(), (kind_name, kind)


def test_state_volume_is_mounted_at_the_data_dir(
    objects: dict, pod: dict, container: dict, config: dict
) -> None:
    claim = objects[("PersistentVolumeClaim", "hubless-data")]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data_dir = config["HUBLESS_DATA_DIR"]
    claim_name = volumes[mounts[data_dir]]["persistentVolumeClaim"]["claimName"]
    assert claim_name == claim["metadata"]["name"]
    for name in ("HUBLESS_GALLERY", "HUBLESS_GALLERY_IDS", "HUBLESS_QUERY_BANK"):
        assert Path(config[name]).is_relative_to(data_dir), f"{name} is not on the volume"
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in mounts  # the one other place a process may write


def test_compose_runs_the_image_with_a_named_volume_and_healthcheck() -> None:
    (compose,) = _load(DEPLOY / "compose.yaml")
    (service,) = compose["services"].values()
    build = service["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    environment = service["environment"]
    for name in environment:
        _setting(name)
    data_dir = environment["HUBLESS_DATA_DIR"]
    volume, _, path = next(v for v in service["volumes"] if v.endswith(f":{data_dir}")).partition(
        ":"
    )
    assert path == data_dir and volume in compose["volumes"]  # a named volume, not a bind
    assert any(p.endswith(f":{PORT}") for p in service["ports"])
    test = " ".join(service["healthcheck"]["test"])
    assert "/healthz" in test and "urllib" in test and "curl" not in test
    assert service["user"].split(":")[0] != "0"


def test_deploy_readme_covers_every_manifest() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for path in K8S.glob("*.yaml"):
        assert path.name in readme, f"deploy/README.md does not mention {path.name}"


def test_no_service_link_variables_enter_the_settings_namespace(pod: dict) -> None:
    """A Service named "hubless" would inject HUBLESS_PORT=tcp://… and friends."""
    assert pod["spec"]["enableServiceLinks"] is False
