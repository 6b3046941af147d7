"""``hubless evaluate``: the table, JSON and PNGs on a tiny dataset, sane figures that agree
with plain numpy, and client mode agreeing with the offline numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.algorithms import Banks
from service.app import create_app
from service.cli import main
from service.client import HublessClient
from service.datasets.build import load_dataset
from service.evaluation.evaluate import evaluate_offline
from service.evaluation.methods import DEFAULT_CONFIGS, Config, Split, parse_configs
from service.evaluation.remote import evaluate_service
from service.evaluation.report import markdown_table
from service.settings import Settings

from . import write_tiny_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def evaluated(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tune (a small grid), then evaluate with both its env file and its grid JSON."""
    out = tmp_path_factory.mktemp("results")
    grid = ["--betas", "1,20", "--rates", "0,0.5", "--pool-rates", "0.05", "--nnn-alphas", "0.5"]
    assert main(["tune", "--dataset", str(dataset), "--out", str(out), "--quiet", *grid]) == 0
    argv = ["evaluate", "--dataset", str(dataset), "--out", str(out), "--quiet"]
    argv += ["--params", str(out / "tuned.env"), "--tuned", str(out / "tune.json")]
    assert main(argv) == 0
    return out


def _tables(out: Path) -> dict[str, dict]:
    report = json.loads((out / "results.json").read_text("utf-8"))
    return {table["key"]: table for table in report["tables"]}


def _test_split(dataset: Path) -> tuple[Split, Banks]:
    ds = load_dataset(dataset)
    split = Split.from_arrays("test", ds.queries, ds.gallery, ds.gallery_ids, ds.query_truth)
    return split, Banks.from_arrays(ds.query_bank, ds.gallery_bank)


def test_outputs_hold_every_configuration(evaluated: Path) -> None:
    markdown = (evaluated / "results.md").read_text("utf-8")
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    # two tables (each configuration tuned alone; one service's parameters): header + rows
    assert len(lines) == 2 * (1 + len(DEFAULT_CONFIGS))
    labels = [line.split("|")[1].strip() for line in lines[1 : 1 + len(DEFAULT_CONFIGS)]]
    assert labels == [c.label for c in DEFAULT_CONFIGS]
    assert "DualIS" in markdown and "InvGC LocalAdj + DualIS" in markdown
    assert "![" in markdown and "Reproduce" in markdown
    for name in ("k_occurrence.png", "beta_curve.png"):
        data = (evaluated / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) <= 150 * 1024


def test_json_values_are_sane(evaluated: Path) -> None:
    report = json.loads((evaluated / "results.json").read_text("utf-8"))
    env = Settings(_env_file=evaluated / "tuned.env")  # type: ignore[call-arg]
    assert report["params"]["norm"]["beta_query_bank"] == env.beta_query_bank
    assert report["params"]["invgc"]["pool_rate"] == env.pool_rate == 0.05
    tables = _tables(evaluated)
    assert list(tables) == ["per_config", "shared"]
    results = {r["key"]: r for r in tables["shared"]["results"]}
    assert list(results) == [c.key for c in DEFAULT_CONFIGS]
    assert results["dualis"]["params"] == {
        "beta_query_bank": env.beta_query_bank,
        "beta_gallery_bank": env.beta_gallery_bank,
    }
    for row in [*results.values(), *tables["per_config"]["results"]]:
        q, h = row["retrieval"], row["hubness"]
        assert 0 <= q["r1"] <= q["r5"] <= q["r10"] <= 1
        assert q["r1"] <= q["mrr"] <= 1
        assert q["median_rank"] >= 1
        assert h["k"] == 10 and h["probes"] == q["queries"]
        assert math.isfinite(h["skewness"])
        assert 0 <= h["antihub_rate"] <= 1 and 0 <= h["hub_occurrence"] <= 1
        assert 0 < row["degeneration"] <= 1
        assert row["precompute_seconds"] >= 0 and row["search_seconds"] >= 0
    # Δdeg is a property of the gallery variant, and InvGC LocalAdj moves the gallery
    assert results["raw"]["degeneration"] == results["dualis"]["degeneration"]
    assert results["invgc"]["degeneration"] == results["invgc+dualis"]["degeneration"]
    assert results["invgc"]["degeneration"] != results["raw"]["degeneration"]
    curve = report["beta_curve"]
    assert curve["points"]["configured"]["beta_query_bank"] == env.beta_query_bank
    assert curve["split"] == "test" and curve["diagnostic"] is True
    for values in curve["curves"].values():
        assert len(values) == len(curve["betas"])
        assert all(0 <= v <= 1 for v in values)


def test_raw_row_matches_plain_numpy(dataset: Path, evaluated: Path) -> None:
    split, _ = _test_split(dataset)
    scores = split.queries @ split.gallery.T
    true = scores[np.arange(len(split.truth)), split.truth]
    ranks = (scores > true[:, None]).sum(axis=1) + 1
    raw = _tables(evaluated)["shared"]["results"][0]
    assert raw["key"] == "raw"
    assert raw["retrieval"]["r1"] == pytest.approx(np.mean(ranks == 1))
    assert raw["retrieval"]["r10"] == pytest.approx(np.mean(ranks <= 10))
    assert raw["retrieval"]["median_rank"] == np.median(ranks)


def test_per_config_table_uses_each_configurations_best_parameters(evaluated: Path) -> None:
    best = json.loads((evaluated / "tune.json").read_text("utf-8"))["best"]
    rows = {r["key"]: r for r in _tables(evaluated)["per_config"]["results"]}
    for key in ("dualis", "nnn", "invgc", "invgc+dualdis"):
        assert rows[key]["params"].items() >= best[key]["params"].items(), key
    # InvGC full is not tuned: it keeps the env file's rates
    env = Settings(_env_file=evaluated / "tuned.env")  # type: ignore[call-arg]
    assert rows["invgc-full"]["params"]["r_gallery_bank"] == env.r_gallery_bank


def test_method_selection() -> None:
    assert parse_configs("raw, invgc+dualis,raw") == (Config("raw"), Config("dualis", "local"))
    assert parse_configs(None) == DEFAULT_CONFIGS
    assert Config("csls", "full") in parse_configs("invgc-full+csls")
    with pytest.raises(ValueError, match="unknown configuration 'dualiss'"):
        parse_configs("dualiss")


def test_client_mode_agrees_with_offline(dataset: Path, tmp_path: Path) -> None:
    """The service (here in-process) holding the test gallery reproduces the offline R@k."""
    settings = Settings(
        gallery=dataset / "gallery.npy",
        gallery_ids=dataset / "gallery_ids.txt",
        query_bank=dataset / "query_bank.npy",
        gallery_bank=dataset / "gallery_bank.npy",
        data_dir=tmp_path,
        log_json=False,
        invgc=True,  # both views (InvGC is off by default)
    )
    split, banks = _test_split(dataset)
    methods = ["raw", "dualdis", "dbsn"]
    app = create_app(settings, configure_logs=False)
    with TestClient(app) as http, HublessClient(http_client=http) as client:
        client.wait_ready(timeout=30)
        remote = evaluate_service(client, split, methods, batch_size=64, progress=False)
    configs = [Config(m, v) for v in ("off", "local") for m in methods]
    params = (settings.norm_params(), settings.invgc_params())
    offline = evaluate_offline(split, banks, configs, lambda config: params, progress=False)
    assert [r.config for r in remote] == configs
    assert remote[0].retrieval["cutoff"] == 10 and "MRR@10" in markdown_table(remote)
    for got, want in zip(remote, offline, strict=True):
        for key in ("r1", "r5", "r10"):
            assert got.retrieval[key] == pytest.approx(want.retrieval[key], abs=0.011), got.config
        assert got.hubness["skewness"] == pytest.approx(want.hubness["skewness"], abs=0.1)
        assert got.degeneration == pytest.approx(want.degeneration, abs=1e-4)


def test_client_mode_refuses_another_gallery(dataset: Path, tmp_path: Path) -> None:
    split, _ = _test_split(dataset)
    app = create_app(Settings(data_dir=tmp_path, log_json=False), configure_logs=False)
    with TestClient(app) as http, HublessClient(http_client=http) as client:
        client.wait_ready(timeout=30)
        with pytest.raises(ValueError, match="HUBLESS_GALLERY"):
            evaluate_service(client, split, ["raw"], progress=False)
