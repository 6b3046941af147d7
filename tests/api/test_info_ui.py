"""GET /info (what the diagnostics page polls) and the page's own routes: /, /ui, its assets."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

from service import __version__
from service.algorithms import METHODS
from service.api.routes.ui import ASSETS
from tests.support.api import DemoFiles, Serve, assert_error, demo_rows, put

ROOT = Path(__file__).resolve().parents[2]
KEY = "k3y-for-reads"


def test_info_describes_the_service(client: TestClient, demo: DemoFiles) -> None:
    info = client.get("/info").json()
    ready = client.get("/readyz").json()
    settings = client.app.state.runtime.settings
    assert info == {
        "name": "hubless",
        "version": __version__,
        "dim": 384,
        "methods": list(METHODS),
        "default_method": settings.default_method,
        "invgc": settings.invgc,
        "gallery_size": ready["gallery_size"],
        "gallery_version": ready["version"],
        "encoder": None,
        "auth_reads": False,
    }


def test_info_follows_the_gallery_version(serve: Serve) -> None:
    client = serve(invgc=False, default_method="csls")
    before = client.get("/info").json()
    assert (before["invgc"], before["default_method"]) == (False, "csls")
    ids, embeddings = demo_rows(1900, 1902)
    put(client, ids, embeddings)
    after = client.get("/info").json()
    assert after["gallery_version"] == before["gallery_version"] + 1
    assert after["gallery_size"] == before["gallery_size"] + 2


def test_info_is_503_until_ready(serve: Serve) -> None:
    def never_ready(settings):  # type: ignore[no-untyped-def]
        raise RuntimeError("no engine in this test")

    client = serve(loader=never_ready, ready=False)
    assert_error(client.get("/info"), 503)


def test_page_is_public_and_its_data_need_the_key(serve: Serve) -> None:
    """With HUBLESS_AUTH_READS the page loads (it holds no data) and asks for the key when
    /info answers 401; /info then works with the key like any read."""
    client = serve(api_key=KEY, auth_reads=True)
    assert client.get("/ui").status_code == 200
    assert client.get("/ui/app.js").status_code == 200
    assert_error(client.get("/info"), 401, says="missing API key")
    info = client.get("/info", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["auth_reads"] is True


def test_root_redirects_to_the_page(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "ui"
    assert client.get("/").url.path == "/ui"


def test_page_and_assets(client: TestClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for name, media_type in ASSETS.items():
        if name == "index.html":
            continue
        assert f'"ui/{name}"' in page.text, f"the page does not load {name}"
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == media_type
    # no third-party resource: every src/href of the page is relative (this service)
    for attr in ("src=", "href="):
        for value in page.text.split(attr)[1:]:
            target = value.split('"')[1]
            assert "//" not in target, target
    assert "/ui" not in client.get("/openapi.json").json()["paths"]


def test_unknown_asset_is_a_404_error_body(client: TestClient) -> None:
    for name in ("index.html", "nope.js", "..%2Fapp.py"):
        assert_error(client.get(f"/ui/{name}"), 404)


def test_assets_are_package_data() -> None:
    """`pip install .` (the Docker image) ships every asset the page loads."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    for name in ASSETS:
        path = f"api/static/{name}"
        assert (ROOT / "service" / path).is_file(), path
        assert any(fnmatch.fnmatch(path, p) for p in patterns), f"{path} is not package data"


def test_js_and_python_agree_on_the_methods() -> None:
    """The page lists methods from /info, never from a copy in the JS."""
    script = (ROOT / "service" / "api" / "static" / "app.js").read_text(encoding="utf-8")
    assert not any(f'"{m}"' in script for m in METHODS if m != "raw"), "methods hard-coded"
