"""The adversarial-hub attack (SPEC.md, "Hubs and adversarial hubs"), measured end to end.

One vector, the L2-normalised mean of the query bank, is upserted into the served gallery
through the in-process engine (the service's own code path, screening included). For raw and
every method, on the original and the InvGC gallery: the share of the test queries whose top-10
holds the injected item (and whose top-1 it is), and R@1 before and after.

    python -m benchmarks.adversarial_hubs [--dataset DIR] [--markdown OUT]

DIR is a dataset built by ``hubless dataset`` (default: the bundled demo); everything else is
the default settings (read from the environment like the service). Takes about a minute on
the demo (two engines' precompute, 2 × 14 × 2,000 searched queries).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.algorithms import METHODS, RobustScale
from service.datasets.build import load_dataset
from service.engine import Engine
from service.engine.startup import load_engine
from service.settings import DEMO_DIR, Settings

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


def markdown(attack: Attack, settings: Settings) -> str:
    default = (settings.default_method, settings.invgc)
    lines = [
        f"Gallery {attack.gallery_size} items + 1 injected, {attack.queries} test queries, "
        f"top-{K}. Upsert screening: bank occurrence {attack.bank_occurrence}, robust z "
        f"{attack.z:.1f}, {'flagged' if attack.flagged else 'NOT flagged'} "
        f"(HUBLESS_HUB_Z={settings.hub_z:g}).",
        "",
        "| Method | InvGC | Top-10s holding the hub | Top-1s taken | R@1 before | R@1 after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in attack.rows:
        name = f"**{r.method}** (default)" if (r.method, r.invgc) == default else r.method
        lines.append(
            f"| {name} | {'on' if r.invgc else 'off'} | {100 * r.in_top10:.1f}% | "
            f"{100 * r.top1:.1f}% | {100 * r.r1_before:.1f} | {100 * r.r1_after:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEMO_DIR, help="built dataset dir")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset)
    queries = data.queries / np.linalg.norm(data.queries, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(args.dataset, Path(tmp))
        # both views are measured, whichever one is the default (marked in the table)
        engine = load_engine(settings.model_copy(update={"invgc": True}))
        attack = run_attack(engine, queries, data.query_truth)
    text = markdown(attack, settings)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
