"""deploy/milvus stays consistent with the code: one writer, read-only readers, writes routed
to the writer, every HUBLESS_* variable a real setting (or one the Milvus settings add)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "milvus"
#: the settings the Milvus backend needs (docs/milvus.md); the rest must exist already
MILVUS_SETTINGS = {
    "backend",
    "milvus_uri",
    "milvus_token",
    "milvus_collection",
    "milvus_index",
    "milvus_read_only",
}


def _services() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))["services"]


def test_one_writer_and_read_only_readers() -> None:
    services = _services()
    assert {"etcd", "minio", "standalone", "writer", "reader", "proxy"} <= set(services)
    writer, reader = services["writer"], services["reader"]
    assert writer["deploy"]["replicas"] == 1
    assert writer["environment"]["HUBLESS_MILVUS_READ_ONLY"] == "false"
    assert reader["environment"]["HUBLESS_MILVUS_READ_ONLY"] == "true"
    for service in (writer, reader):
        assert service["environment"]["HUBLESS_BACKEND"] == "milvus"
        assert service["environment"]["HUBLESS_MILVUS_URI"] == "http://standalone:19530"
    assert "writer-data:/writer:ro" in reader["volumes"]


def test_every_variable_is_a_setting() -> None:
    names = set(Settings.model_fields) | MILVUS_SETTINGS
    for service in ("writer", "reader"):
        for variable in _services()[service]["environment"]:
            assert variable.removeprefix("HUBLESS_").lower() in names, variable


def test_proxy_sends_writes_to_the_writer() -> None:
    conf = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    mapping = re.search(r"map \$request_method \$gallery_upstream \{(.*?)\}", conf, re.S)
    assert mapping
    rules = dict(line.split()[:2] for line in mapping.group(1).splitlines() if line.strip())
    assert rules == {"GET": "readers;", "HEAD": "readers;", "default": "writer;"}
    assert re.search(r"location /admin/ \{\s*proxy_pass http://writer;", conf)
