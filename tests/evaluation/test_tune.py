"""``hubless tune``: env file readable by Settings, values on the grid, validation split only,
and the fast sweeps agree with the algorithm core they shortcut."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import (
    METHODS,
    Banks,
    InvGCParams,
    NormParams,
    get_normaliser,
    invgc_adjust,
    plan_queries,
    prepare_items,
    ranks_of,
    retrieval_quality,
)
from service.algorithms.blocks import log_mean_exp
from service.cli import main
from service.datasets.build import load_dataset
from service.evaluation import methods as methods_module
from service.evaluation.methods import Split
from service.evaluation.sweep import Similarities, invgc_sweep, lme_grid
from service.evaluation.tune import Grid, tune
from service.settings import Settings

from . import poison_test_split, write_tiny_dataset

GRID_OPTIONS = {
    "--betas": "0.01,1,20,100",
    "--rates": "0,0.5,1",
    "--pool-rates": "0.01,0.1",
    "--nnn-alphas": "0,0.5,1",
    "--taus": "0.005,0.01,0.05",
}
SMALL_GRID = Grid(
    betas=(0.01, 1.0, 20.0, 100.0),
    rates=(0.0, 0.5, 1.0),
    pool_rates=(0.01, 0.1),
    nnn_alphas=(0.0, 0.5, 1.0),
    taus=(0.005, 0.01, 0.05),
)


def _run_tune(dataset: Path, out: Path) -> tuple[Path, dict]:
    argv = ["tune", "--dataset", str(dataset), "--out", str(out), "--quiet"]
    for option, value in GRID_OPTIONS.items():
        argv += [option, value]
    assert main(argv) == 0
    return out / "tuned.env", json.loads((out / "tune.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def tuned(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return _run_tune(dataset, tmp_path_factory.mktemp("tuned"))


def _val_split(dataset: Path) -> tuple[Split, Banks]:
    ds = load_dataset(dataset)
    split = Split.from_arrays(
        "val", ds.val_queries, ds.val_gallery, ds.val_gallery_ids, ds.val_query_truth
    )
    return split, Banks.from_arrays(ds.query_bank, ds.gallery_bank)


def test_env_file_is_read_by_settings_and_values_lie_on_the_grid(tuned: tuple[Path, dict]) -> None:
    env_path, grid_json = tuned
    settings = Settings(_env_file=env_path)  # type: ignore[call-arg]
    assert settings.beta_query_bank in SMALL_GRID.betas
    assert settings.beta_gallery_bank in SMALL_GRID.betas
    assert settings.r_gallery_bank in SMALL_GRID.rates
    assert settings.r_query_bank in SMALL_GRID.rates
    assert settings.pool_rate in SMALL_GRID.pool_rates
    assert settings.nnn_alpha in SMALL_GRID.nnn_alphas
    assert settings.dbsn_tau in SMALL_GRID.taus
    assert settings.default_method in METHODS
    assert settings.invgc_adjacency == "local"
    # every variable written is a Settings field (a typo would be silently ignored otherwise)
    names = {
        line.split("=", 1)[0].removeprefix("HUBLESS_").lower()
        for line in env_path.read_text("utf-8").splitlines()
        if line and not line.startswith("#")
    }
    assert names <= set(Settings.model_fields)
    assert grid_json["split"] == "val"
    assert grid_json["env"]["HUBLESS_DEFAULT_METHOD"] == settings.default_method
    expected = {"invgc", *METHODS}
    assert expected | {f"invgc+{m}" for m in METHODS if m != "raw"} == set(grid_json["sweeps"])
    dual = grid_json["sweeps"]["dualis"]
    assert dual["params"] == ["beta_query_bank", "beta_gallery_bank"]
    assert len(dual["rows"]) == len(SMALL_GRID.betas) ** 2
    assert set(grid_json["sweeps"]["invgc+dualis"]["fixed"]) == {
        "r_gallery_bank",
        "r_query_bank",
        "pool_rate",
    }


def test_default_is_the_best_validation_configuration(tuned: tuple[Path, dict]) -> None:
    _, grid_json = tuned
    best = grid_json["best"]
    top = max((b["r1"], b["mrr"]) for b in best.values())
    assert (best[grid_json["default"]]["r1"], best[grid_json["default"]]["mrr"]) == top


def test_tune_never_reads_the_test_split(
    dataset: Path, tuned: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    original = Split.from_arrays.__func__  # type: ignore[attr-defined]

    def recording(cls: type[Split], name: str, *args: object) -> Split:
        made.append(name)
        return original(cls, name, *args)

    monkeypatch.setattr(methods_module.Split, "from_arrays", classmethod(recording))
    poisoned = poison_test_split(dataset, tmp_path / "poisoned")
    env_path, grid_json = _run_tune(poisoned, tmp_path / "out")
    assert made == ["val"]
    env_before, grid_before = tuned
    strip = {"command"}
    assert {k: v for k, v in grid_json.items() if k not in strip} == {
        k: v for k, v in grid_before.items() if k not in strip
    }

    def settings_lines(path: Path) -> list[str]:
        return [line for line in path.read_text("utf-8").splitlines() if not line.startswith("#")]

    assert settings_lines(env_path) == settings_lines(env_before)


def test_best_points_match_the_algorithm_core(dataset: Path) -> None:
    """The sweep's R@1 for each configuration's best point is what the core computes."""
    split, banks = _val_split(dataset)
    result = tune(split, banks, SMALL_GRID, progress=False)
    best = result.best_per_config()
    for key in ("dis", "dualis", "dualdis", "nnn", "invgc+dualdis", "dbsn", "invgc+dbsn"):
        point = best[key]
        gallery = split.gallery
        if point.config.invgc == "local":
            invgc = InvGCParams(
                r_gallery_bank=point.params["r_gallery_bank"],
                r_query_bank=point.params["r_query_bank"],
                pool_rate=point.params["pool_rate"],
            )
            gallery = invgc_adjust(gallery, banks.query_bank, banks.gallery_bank, invgc)
        fields = NormParams.__dataclass_fields__
        norm_fields = {k: v for k, v in point.params.items() if k in fields}
        norm = NormParams(**norm_fields)
        view = prepare_items(gallery, banks, norm, None).original
        plan = plan_queries(get_normaliser(point.config.method), split.queries, view, norm)
        ranks = ranks_of(split.queries, view, plan, split.truth)
        assert retrieval_quality(ranks).r1 == pytest.approx(point.r1, abs=1 / len(split.truth))


def test_lme_grid_matches_log_mean_exp_at_every_scale(dataset: Path) -> None:
    split, banks = _val_split(dataset)
    betas = np.array([1e-3, 0.05, 0.5, 3.0, 50.0, 400.0])
    fast = lme_grid(split.gallery, banks.query_bank, betas)
    sims = split.gallery @ banks.query_bank.T
    for i, beta in enumerate(betas):
        exact = log_mean_exp(beta * sims.astype(np.float64))
        # compare the part that varies across items, relative to its spread (what ranks see)
        spread = np.ptp(exact)
        np.testing.assert_allclose(fast[i] - exact, 0, atol=2e-4 * spread + 1e-7)


def test_invgc_sweep_matches_invgc_adjust(dataset: Path) -> None:
    split, banks = _val_split(dataset)
    sims = Similarities.of_split(split)
    points = invgc_sweep(
        split, sims, banks, np.array([0.01, 0.1]), np.array([0.0, 0.7]), np.array([0.3])
    )
    for params, ranks in points:
        adjusted = invgc_adjust(split.gallery, banks.query_bank, banks.gallery_bank, params)
        scores = split.queries @ adjusted.T
        true = scores[np.arange(len(split.truth)), split.truth]
        exact = (scores > true[:, None]).sum(axis=1) + 1
        assert np.mean(ranks == exact) > 0.98, params
        assert replace(params, adjacency="local") == params
