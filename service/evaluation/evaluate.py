"""Evaluate every configuration on a split with the algorithm core, as the service computes it.

For each gallery variant (original, InvGC LocalAdj, InvGC full) the gallery is prepared once
(:func:`~service.algorithms.prepare_items` / :func:`~service.algorithms.adjusted_view`, timed as
"precompute"); each method then plans and searches its queries (timed as "search": the work a
service does per request batch) and is scored from exact ranks (:func:`ranks_of`, not timed).
Everything is blocked, so memory stays bounded by the block budget of the core.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from service.algorithms import (
    Banks,
    GalleryView,
    InvGCParams,
    NormParams,
    adjusted_view,
    degeneration,
    get_normaliser,
    hubness,
    k_occurrence,
    plan_queries,
    prepare_items,
    ranks_of,
    retrieval_quality,
    search,
)
from service.evaluation.methods import Config, Split, Variant
from service.evaluation.sweep import GalleryProfile, Similarities

HUBNESS_K = 10
#: Log grid of the diagnostic R@1-vs-β curve (test split).
CURVE_BETAS: tuple[float, ...] = tuple(float(b) for b in np.geomspace(1e-3, 400, 23).round(6))


@dataclass
class Row:
    """One configuration's figures. ``retrieval`` and ``hubness`` are the core's reports as
    dicts; ``occurrence`` (k-occurrence per gallery item) feeds the plots, not the JSON."""

    config: Config
    retrieval: dict[str, Any]
    hubness: dict[str, Any]
    degeneration: float | None
    precompute_seconds: float | None
    search_seconds: float
    occurrence: np.ndarray = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.config.key,
            "label": self.config.label,
            "method": self.config.method,
            "invgc": self.config.invgc,
            "retrieval": self.retrieval,
            "hubness": self.hubness,
            "degeneration": self.degeneration,
            "precompute_seconds": self.precompute_seconds,
            "search_seconds": self.search_seconds,
        }


@dataclass
class Evaluation:
    """The result of one ``hubless evaluate`` run."""

    mode: str  # "offline" (algorithm core) or "service" (over HTTP)
    dataset: dict[str, Any]
    params: dict[str, Any]
    rows: list[Row]
    curve: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        return next((r for r in self.rows if r.config.key == key), None)

    def best(self) -> Row:
        """Highest R@1, ties broken by MRR (the first such row)."""
        best = self.rows[0]
        for row in self.rows[1:]:
            score = (row.retrieval["r1"], row.retrieval["mrr"])
            if score > (best.retrieval["r1"], best.retrieval["mrr"]):
                best = row
        return best

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "dataset": self.dataset,
            "params": self.params,
            "hubness_k": HUBNESS_K,
            "best": self.best().config.key,
            "results": [r.as_dict() for r in self.rows],
            "beta_curve": self.curve,
            "notes": self.notes,
        }


def params_dict(norm: NormParams, invgc: InvGCParams) -> dict[str, Any]:
    return {"norm": asdict(norm), "invgc": asdict(invgc)}


class _Views:
    """Each gallery variant prepared once, on first use, with its precompute time and Δdeg."""

    def __init__(self, split: Split, banks: Banks, norm: NormParams, invgc: InvGCParams) -> None:
        self.split, self.banks, self.norm, self.invgc = split, banks, norm, invgc
        self._views: dict[Variant, tuple[GalleryView, float, float]] = {}

    def get(self, variant: Variant) -> tuple[GalleryView, float, float]:
        if variant not in self._views:
            gallery = self.split.gallery
            started = time.perf_counter()
            if variant == "off":
                view = prepare_items(gallery, self.banks, self.norm, None).original
            else:
                params = replace(self.invgc, adjacency=variant)
                view = adjusted_view(gallery, self.banks, self.norm, params)
            seconds = time.perf_counter() - started
            self._views[variant] = (view, seconds, degeneration(view.embeddings).value)
        return self._views[variant]

    def prepared(self, variant: Variant) -> GalleryView | None:
        """The view if it was prepared (no work otherwise)."""
        return self._views[variant][0] if variant in self._views else None


def evaluate_offline(
    split: Split,
    banks: Banks,
    norm: NormParams,
    invgc: InvGCParams,
    configs: Sequence[Config],
    *,
    k: int = HUBNESS_K,
    progress: bool = True,
) -> tuple[list[Row], GalleryView | None]:
    """Rows for ``configs`` on ``split``, and the original view if it was prepared."""
    from tqdm.auto import tqdm

    views = _Views(split, banks, norm, invgc)
    queries = split.queries
    rows = []
    for config in tqdm(configs, desc="evaluate", unit="config", disable=not progress):
        view, precompute, degen = views.get(config.invgc)
        normaliser = get_normaliser(config.method)
        started = time.perf_counter()
        plan = plan_queries(normaliser, queries, view, norm)
        top, _ = search(queries, view, plan, k)
        seconds = time.perf_counter() - started
        ranks = ranks_of(queries, view, plan, split.truth)
        occurrence = k_occurrence(top, view.size)
        rows.append(
            Row(
                config,
                retrieval_quality(ranks).as_dict(),
                hubness(occurrence, k, queries.shape[0]).as_dict(),
                degen,
                precompute,
                seconds,
                occurrence,
            )
        )
    return rows, views.prepared("off")


def beta_curve(
    split: Split,
    banks: Banks,
    norm: NormParams,
    betas: Sequence[float] = CURVE_BETAS,
    view: GalleryView | None = None,
) -> dict[str, Any]:
    """DIAGNOSTIC R@1 against β on ``split`` (the test split: never use it to choose β).

    Curves on the original gallery: IS over β_q; DualIS over β_q = β_g; DualIS over β_q with
    β_g fixed at the configured value. Also R@1 at the configured β pair and at the released
    DBNorm code's defaults (β_q = 1/1.99, β_g = 3), and raw's R@1 for reference.
    """
    released = NormParams()
    extra = (norm.beta_query_bank, norm.beta_gallery_bank)
    extra += (released.beta_query_bank, released.beta_gallery_bank)
    profile = GalleryProfile.build(split.gallery, banks, norm, [*betas, *extra], view=view)
    sims = Similarities.of_split(split)

    def r1(method: str, beta_q: float, beta_g: float) -> float:
        params = replace(norm, beta_query_bank=beta_q, beta_gallery_bank=beta_g)
        ranks = sims.method_ranks(method, params, profile.stats(beta_q, beta_g), profile.view)
        return retrieval_quality(ranks).r1

    fixed_g = norm.beta_gallery_bank
    return {
        "split": split.name,
        "diagnostic": True,
        "betas": list(betas),
        "raw_r1": r1("raw", betas[0], betas[0]),
        "curves": {
            "is: beta_query_bank": [r1("is", b, b) for b in betas],
            "dualis: beta_query_bank = beta_gallery_bank": [r1("dualis", b, b) for b in betas],
            f"dualis: beta_query_bank (beta_gallery_bank = {fixed_g:g})": [
                r1("dualis", b, fixed_g) for b in betas
            ],
        },
        "points": {
            "configured": {
                "beta_query_bank": norm.beta_query_bank,
                "beta_gallery_bank": norm.beta_gallery_bank,
                "is_r1": r1("is", norm.beta_query_bank, norm.beta_query_bank),
                "dualis_r1": r1("dualis", norm.beta_query_bank, norm.beta_gallery_bank),
            },
            "released_defaults": {
                "beta_query_bank": released.beta_query_bank,
                "beta_gallery_bank": released.beta_gallery_bank,
                "is_r1": r1("is", released.beta_query_bank, released.beta_query_bank),
                "dualis_r1": r1("dualis", released.beta_query_bank, released.beta_gallery_bank),
            },
        },
    }
