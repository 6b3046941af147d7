"""Adversarial hubs over HTTP: PUT /gallery warns about (or refuses) an injected hub, and
GET /diagnostics lists it first among the top hubs of raw cosine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.evaluation.adversarial import injected_hub
from tests.support.api import Serve, assert_error
from tests.support.demo import DEMO_DIR, DemoFiles


def _hub(demo: DemoFiles) -> list[float]:
    """The attack vector on the served (sliced) demo: the normalised mean of its query bank."""
    return injected_hub(np.load(demo.query_bank)).tolist()


def _ordinary(count: int) -> list[dict]:
    """Held-out demo gallery items: ordinary items of the same kind as the served ones."""
    rows = np.load(DEMO_DIR / "val_gallery.npy")[:count].astype(np.float32)
    return [{"id": f"val-{i}", "embedding": row.tolist()} for i, row in enumerate(rows)]


def test_warn_lists_the_hub_and_diagnostics_ranks_it_first(serve: Serve, demo: DemoFiles) -> None:
    client = serve()
    hub = {"id": "injected", "embedding": _hub(demo), "metadata": {"source": "attack"}}
    response = client.put("/gallery", json={"items": [*_ordinary(5), hub]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["inserted"], body["size"]) == (6, 306)
    (warning,) = body["warnings"]  # the ordinary items are not flagged
    assert (warning["id"], warning["code"]) == ("injected", "suspected_hub")
    assert warning["bank_occurrence"] > 0.9 * 400  # nearly every bank query's top-10
    assert warning["z"] > client.app.state.runtime.settings.hub_z

    report = client.get("/diagnostics").json()
    for m in report["methods"]:
        if m["method"] == "raw":
            first = m["top_hubs"]["items"][0]
            assert (first["id"], first["metadata"]) == ("injected", {"source": "attack"})
            assert first["z"] == max(h["z"] for h in m["top_hubs"]["items"])


def test_reject_refuses_the_whole_batch_and_changes_nothing(
    serve: Serve, demo: DemoFiles, tmp_path: Path
) -> None:
    data_dir = tmp_path / "var"
    client = serve(hub_policy="reject", data_dir=data_dir)
    items = [*_ordinary(2), {"id": "injected", "embedding": _hub(demo)}]
    error = assert_error(client.put("/gallery", json={"items": items}), 422, "items")
    assert error["code"] == "suspected_hub" and "'injected'" in error["message"]
    assert "val-0" not in error["message"]  # only the suspects are named
    page = client.get("/gallery").json()
    assert (page["version"], page["total"]) == (1, 300)
    assert client.get("/gallery/val-0").status_code == 404
    # nothing reached the change log either: a restart serves the same gallery
    again = serve(data_dir=data_dir)
    assert again.get("/gallery").json()["total"] == 300
    # ordinary items still go in, without warnings
    response = client.put("/gallery", json={"items": _ordinary(3)})
    assert response.status_code == 200 and response.json()["warnings"] == []
