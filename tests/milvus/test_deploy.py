"""deploy/milvus and docs/milvus.md stay consistent with the code: one writer, read-only
readers sharing nothing but Milvus, writes routed to the writer, every HUBLESS_* variable a
real setting, and the settings table of docs/milvus.md naming the real Milvus settings with
their real defaults."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "milvus"
DOCS = ROOT / "docs" / "milvus.md"


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
    for service in (writer, reader):  # healthy means ready: the bank state is loaded
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert "volumes" not in service  # Milvus is the only shared state
    assert "writer" not in reader["depends_on"]  # a reader waits for the first commit itself


def test_every_variable_is_a_setting() -> None:
    names = set(Settings.model_fields)
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


def test_docs_settings_table_matches_the_settings() -> None:
    """Every row of the table is a real setting whose default the table states; every setting
    of the Milvus backend (and the backend choice) has a row."""
    rows = re.findall(r"^\| `HUBLESS_(\w+)` \| ([^|]+) \|", DOCS.read_text("utf-8"), re.M)
    documented = {name.lower(): default.strip() for name, default in rows}
    expected = {"backend"} | {name for name in Settings.model_fields if name.startswith("milvus_")}
    assert set(documented) == expected
    for name, default in documented.items():
        value = Settings.model_fields[name].default
        if value is None:
            assert default.startswith("unset"), name
        else:
            assert default.startswith(f"`{str(value).lower()}`"), (name, default)
