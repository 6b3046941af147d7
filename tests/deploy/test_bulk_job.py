"""deploy/k8s/bulk-load-job.yaml agrees with ``hubless load``: an Indexed Job of N workers whose
arguments the real CLI parses for every index, a merge of the same N on the same state
directory, the image that carries the Milvus client, real settings, non-root pods with
resources, and a volume every worker can read and write."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import build_parser
from service.remote.bulk import Shard
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "k8s" / "bulk-load-job.yaml"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _docs(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return _docs(MANIFEST)


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = _pod(job)["containers"]
    return only


@pytest.fixture(scope="module")
def jobs(objects: dict) -> tuple[dict[str, Any], dict[str, Any]]:
    return objects[("Job", "hubless-bulk-load")], objects[("Job", "hubless-bulk-merge")]


def _option(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return value


def _parse(container: dict[str, Any], index: int | None = None) -> Any:
    """The container's command line as ``hubless`` parses it (``$(JOB_COMPLETION_INDEX)``
    expanded as the kubelet does)."""
    assert container["command"] == ["hubless"]
    args = [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in container["args"]]
    return build_parser().parse_args(args)


def test_workers_are_an_indexed_job_whose_every_index_is_a_valid_shard(jobs) -> None:
    load, merge = jobs
    spec = load["spec"]
    assert spec["completionMode"] == "Indexed"
    count = spec["completions"]
    assert spec["parallelism"] == count >= 1 and _pod(load)["restartPolicy"] == "Never"
    worker = _container(load)
    (index_env,) = [e for e in worker["env"] if e["name"] == "JOB_COMPLETION_INDEX"]
    assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == INDEX_ANNOTATION
    shards = [Shard.parse(_parse(worker, i).shard) for i in range(count)]
    assert shards == [Shard(i, count) for i in range(count)]
    merged = _parse(_container(merge))
    assert merged.merge == count and merged.wait > 0  # started together: the merge waits
    assert merged.state_dir == _parse(worker, 0).state_dir


def test_both_jobs_run_the_milvus_image_with_the_same_settings(objects, jobs) -> None:
    (compose,) = [d for d in yaml.safe_load_all((ROOT / "deploy/milvus/compose.yaml").open())]
    milvus_image = compose["x-hubless"]["image"]
    sources = []
    for job in jobs:
        container = _container(job)
        assert container["image"] == milvus_image  # the image with pymilvus in it
        sources.append([s["configMapRef"]["name"] for s in container["envFrom"]])
        names = {e["name"] for e in container["env"]} - {"JOB_COMPLETION_INDEX"}
        assert all(n.removeprefix("HUBLESS_").lower() in Settings.model_fields for n in names)
    assert sources[0] == sources[1] == ["hubless-config", "hubless-bulk-config"]
    service = _docs(ROOT / "deploy/k8s/configmap.yaml")[("ConfigMap", "hubless-config")]["data"]
    bulk = objects[("ConfigMap", "hubless-bulk-config")]["data"]
    merged = {**service, **bulk}  # envFrom: the later source wins
    fields = {name.removeprefix("HUBLESS_").lower(): value for name, value in merged.items()}
    assert set(fields) <= set(Settings.model_fields)
    settings = Settings(**fields)
    assert settings.backend == "milvus" and settings.milvus_uri


def test_inputs_and_state_are_on_a_volume_every_worker_shares(objects, jobs) -> None:
    claim = objects[("PersistentVolumeClaim", "hubless-bulk")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on any node
    bulk = objects[("ConfigMap", "hubless-bulk-config")]["data"]
    for job in jobs:
        container = _container(job)
        volumes = {v["name"]: v for v in _pod(job)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        (root,) = [p for p, n in mounts.items() if "persistentVolumeClaim" in volumes[n]]
        assert volumes[mounts[root]]["persistentVolumeClaim"]["claimName"] == "hubless-bulk"
        state = _option(container["args"], "--state-dir")
        paths = [state, *(bulk[n] for n in bulk if re.search(r"_(GALLERY|IDS|BANK)$", n))]
        assert len(paths) == 5 and all(Path(p).is_relative_to(root) for p in paths), paths
        if container["securityContext"].get("readOnlyRootFilesystem"):
            assert "/tmp" in mounts


def test_job_pods_run_as_non_root_with_resources(jobs) -> None:
    for job in jobs:
        pod = _pod(job)
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        assert pod["enableServiceLinks"] is False  # no HUBLESS_* variables from Services
        container = _container(job)
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys()


def test_the_bulk_load_is_run_on_demand_not_by_kustomize() -> None:
    (kustomization,) = yaml.safe_load_all((MANIFEST.parent / "kustomization.yaml").open())
    assert MANIFEST.name not in kustomization["resources"]
