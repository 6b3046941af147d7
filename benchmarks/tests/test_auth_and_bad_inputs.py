"""Against one real server with an API key: auth refusals, the key never in the logs, and the
survey of bad inputs (every one a 4xx with a JSON error, as docs/reliability.md says)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.load_test import DOCS, SURVEY_LIMITS, bad_inputs, survey, survey_table
from service.harness import Server, write_gallery

KEY = secrets.token_hex(16)
ITEM = {"items": [{"id": "auth-item", "embedding": [0.1] * 384}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("auth")
    env = write_gallery(workdir / "input", rows=200, bank_rows=300) | SURVEY_LIMITS
    # DEBUG: the most the server ever logs, so the key check below is the strictest one
    env |= {"HUBLESS_API_KEY": KEY, "HUBLESS_LOG_LEVEL": "DEBUG"}
    with Server(workdir / "data", env) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        yield http


def _version(client: httpx.Client) -> int:
    return client.get("/readyz").json()["version"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY[:-1]}"},  # all but the last character
        {"Authorization": f"Basic {KEY}"},  # not a bearer token
        {"X-API-Key": "wrong"},
        {"X-API-Key": f"{KEY}0"},  # one character too many
    ],
    ids=["none", "wrong-bearer", "truncated", "basic-scheme", "wrong-x-api-key", "longer"],
)
def test_writes_without_the_right_key_are_refused(
    client: httpx.Client, headers: dict[str, str]
) -> None:
    before = _version(client)
    for method, path, body in [
        ("PUT", "/gallery", ITEM),
        ("DELETE", "/gallery/auth-item", None),
        ("POST", "/gallery/delete", {"ids": ["auth-item"]}),
        ("POST", "/admin/snapshot", None),
        ("POST", "/admin/query-bank/refresh", None),
    ]:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert _version(client) == before, "a refused write changed the gallery"


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_writes_with_the_key_are_accepted(client: httpx.Client, header: str) -> None:
    headers = {header: f"Bearer {KEY}" if header == "Authorization" else KEY}
    put = client.put("/gallery", json=ITEM, headers=headers)
    assert put.status_code == 200, put.text
    delete = client.delete("/gallery/auth-item", headers=headers)
    assert delete.status_code == 200, delete.text


def test_reads_need_no_key_by_default(client: httpx.Client) -> None:
    assert client.post("/search", json={"query": [0.1] * 384, "k": 3}).status_code == 200
    assert client.get("/gallery", params={"limit": 2}).status_code == 200


def test_the_key_never_reaches_logs_or_responses(server: Server, client: httpx.Client) -> None:
    """Right and wrong keys in every place a client may put one (headers, query string, a
    body field that fails validation): none is ever echoed to a response or written to the
    server's stdout/stderr, even at DEBUG."""
    responses = [
        client.put("/gallery", json=ITEM, headers={"Authorization": f"Bearer {KEY}"}),
        client.put("/gallery", json=ITEM, headers={"X-API-Key": KEY}),
        client.put("/gallery", json=ITEM, headers={"Authorization": f"Bearer {KEY}x"}),
        client.put("/gallery", json=ITEM, params={"api_key": KEY}),
        client.post("/search", json={"query": [0.1] * 384, "method": KEY}),
        client.post("/admin/snapshot", headers={"X-API-Key": KEY}),
        client.get("/metrics"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 401, 422, 200, 200]
    for response in responses:
        assert KEY not in response.text
        assert KEY not in str(response.headers)
    logs = server.logs()
    assert '"path": "/gallery"' in logs, "the requests above were not logged at all"
    assert KEY not in logs


@pytest.fixture(scope="module")
def survey_rows(server: Server) -> list[dict[str, Any]]:
    ids = Path(server.env["HUBLESS_GALLERY_IDS"]).read_text().split()
    with httpx.Client(base_url=server.url, timeout=60.0) as http:
        before = _version(http)
        rows = survey(http, KEY, bad_inputs(384, ids[0]))
        assert _version(http) == before, "a rejected request changed the gallery"
    return rows


def test_every_bad_input_gets_its_4xx_with_a_json_error(survey_rows: list[dict]) -> None:
    wrong = [
        f"{row['case'].name}: expected {row['case'].expect}, got {row['status']} {row['message']}"
        for row in survey_rows
        if row["status"] != row["case"].expect or not row["code"] or not row["message"]
    ]
    assert not wrong, "\n".join(wrong)


def _table_rows(table: str) -> list[tuple[str, str, str]]:
    """(input, status, code) of each row of a survey table."""
    rows = []
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        rows.append((cells[0], cells[2], cells[3]))
    return rows


def test_the_documented_table_is_what_the_server_answers(survey_rows: list[dict]) -> None:
    """docs/reliability.md and README.md carry the survey's table; regenerate it with
    ``python benchmarks/load_test.py`` when this fails."""
    answered = _table_rows(survey_table(survey_rows))
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        documented = text.split("<!-- bad-inputs:start -->")[1].split("<!-- bad-inputs:end -->")[0]
        assert _table_rows(documented.strip()) == answered, doc.name
