"""The adversarial-hub attack (SPEC.md, "Hubs and adversarial hubs") on a running engine.

One vector, the L2-normalised mean of the query bank, is upserted through the engine's own
change path (screening included); every method and view is searched before and after. The
benchmark ``benchmarks/adversarial_hubs.py`` reports it, the tests assert it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.algorithms import METHODS, RobustScale
from service.engine import Engine
from service.settings import Settings

HUB_ID = "injected-hub"
K = 10


@dataclass(frozen=True)
class AttackRow:
    method: str
    invgc: bool
    in_top10: float  # share of test queries whose top-10 holds the injected item
    top1: float  # share of test queries whose top-1 it is
    r1_before: float
    r1_after: float


@dataclass(frozen=True)
class Attack:
    gallery_size: int
    queries: int
    bank_occurrence: int  # query-bank k-occurrence of the injected item (screening, k = hub_k)
    z: float  # its robust z at upsert
    flagged: bool
    rows: list[AttackRow]


def injected_hub(query_bank: np.ndarray) -> np.ndarray:
    """The attack vector: the normalised mean of the (normalised) query bank."""
    bank = query_bank / np.linalg.norm(query_bank, axis=1, keepdims=True)
    mean = bank.mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def _top10(engine: Engine, queries: np.ndarray, method: str, invgc: bool) -> list[list[str]]:
    return engine.search(queries, k=K, method=method, invgc=invgc).ids


def run_attack(engine: Engine, queries: np.ndarray, truth: list[str]) -> Attack:
    """Search every method and view, inject the hub (screened as any upsert), search again.

    queries: (m, d) L2-normalised; truth: each query's true gallery id."""
    views = [False] + ([True] if engine.state.adjusted is not None else [])
    pairs = [(method, invgc) for invgc in views for method in METHODS]
    before = {pair: _top10(engine, queries, *pair) for pair in pairs}
    result = engine.upsert([HUB_ID], injected_hub(engine.banks.query_bank)[None], [None])
    flagged = any(w.id == HUB_ID for w in result.warnings)
    state = engine.state
    occurrence = state.original.query_top.occurrence(state.size, engine.screening.k)
    row = state.rows[HUB_ID]
    z = float(RobustScale.of(occurrence).z(occurrence[row]))
    rows = []
    for pair in pairs:
        after = _top10(engine, queries, *pair)

        def r1(lists: list[list[str]]) -> float:
            return float(np.mean([hits[0] == t for hits, t in zip(lists, truth, strict=True)]))

        rows.append(
            AttackRow(
                *pair,
                in_top10=float(np.mean([HUB_ID in hits for hits in after])),
                top1=float(np.mean([hits[0] == HUB_ID for hits in after])),
                r1_before=r1(before[pair]),
                r1_after=r1(after),
            )
        )
    return Attack(state.size - 1, len(truth), int(occurrence[row]), z, flagged, rows)


def settings_for(dataset: Path, data_dir: Path, **overrides: object) -> Settings:
    """The settings the service would run with on ``dataset`` (environment included), with
    no cache and the 'warn' policy so the injection goes through."""
    files = {
        "gallery": dataset / "gallery.npy",
        "gallery_ids": dataset / "gallery_ids.txt",
        "query_bank": dataset / "query_bank.npy",
        "gallery_bank": dataset / "gallery_bank.npy",
    }
    overrides = {"data_dir": data_dir, "cache": False, "hub_policy": "warn", **overrides}
    return Settings(**files, **overrides)
