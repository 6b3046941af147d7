"""Evaluate every configuration on a split with the algorithm core, as the service computes it.

Each (gallery variant, parameters) pair — original, InvGC LocalAdj or InvGC full — is prepared
once (:func:`~service.algorithms.prepare_items` / :func:`~service.algorithms.adjusted_view`,
timed as "precompute"); each method then plans and searches its queries (timed as "search":
the work a service does per request batch) and is scored from exact ranks (:func:`ranks_of`,
not timed).
Everything is blocked, so memory stays bounded by the block budget of the core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    dicts; ``params`` the parameters it ran with; ``occurrence`` (k-occurrence per gallery
    item) feeds the plots, not the JSON."""

    config: Config
    retrieval: dict[str, Any]
    hubness: dict[str, Any]
    degeneration: float | None
    precompute_seconds: float | None
    search_seconds: float
    occurrence: np.ndarray = field(repr=False)
    params: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.config.key,
            "label": self.config.label,
            "method": self.config.method,
            "invgc": self.config.invgc,
            "params": self.params,
            "retrieval": self.retrieval,
            "hubness": self.hubness,
            "degeneration": self.degeneration,
            "precompute_seconds": self.precompute_seconds,
            "search_seconds": self.search_seconds,
        }


@dataclass
class Table:
    """Rows computed under one parameter policy (e.g. "each tuned alone", "one service")."""

    key: str
    title: str
    description: str
    rows: list[Row]

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
            "key": self.key,
            "title": self.title,
            "description": self.description,
            "best": self.best().config.key,
            "results": [r.as_dict() for r in self.rows],
        }


@dataclass
class Evaluation:
    """The result of one ``hubless evaluate`` run: one or more tables; the first is the main
    one (plots and comparisons use it)."""

    mode: str  # "offline" (algorithm core) or "service" (over HTTP)
    dataset: dict[str, Any]
    params: dict[str, Any]
    tables: list[Table]
    curve: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> Table:
        return self.tables[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "dataset": self.dataset,
            "params": self.params,
            "hubness_k": HUBNESS_K,
            "tables": [t.as_dict() for t in self.tables],
            "beta_curve": self.curve,
            "notes": self.notes,
        }


Params = tuple[NormParams, InvGCParams]


def params_dict(norm: NormParams, invgc: InvGCParams) -> dict[str, Any]:
    return {"norm": asdict(norm), "invgc": asdict(invgc)}


def tuned_params(base: Params, best: dict[str, dict[str, float]]) -> Callable[[Config], Params]:
    """Per configuration: ``base`` overridden by that configuration's own best validation
    parameters (``tune.json``'s ``best[key]["params"]``); untuned configurations keep ``base``."""
    norm_fields, invgc_fields = (
        set(NormParams.__dataclass_fields__),
        set(InvGCParams.__dataclass_fields__),
    )

    def params_for(config: Config) -> Params:
        found = best.get(config.key, {})
        norm = replace(base[0], **{k: v for k, v in found.items() if k in norm_fields})
        invgc = replace(base[1], **{k: v for k, v in found.items() if k in invgc_fields})
        return norm, invgc

    return params_for


class _Views:
    """Each (gallery variant, parameters) prepared once, with its precompute time and Δdeg."""

    def __init__(self, split: Split, banks: Banks) -> None:
        self.split, self.banks = split, banks
        self._views: dict[tuple[Variant, NormParams, InvGCParams], tuple[GalleryView, float, float]]
        self._views = {}

    def get(
        self, variant: Variant, norm: NormParams, invgc: InvGCParams
    ) -> tuple[GalleryView, float, float]:
        invgc = replace(invgc, adjacency="local" if variant == "off" else variant)
        # NNN's α only weights a stat column: the prepared view does not depend on it
        key = (variant, replace(norm, nnn_alpha=0.0), invgc if variant != "off" else InvGCParams())
        if key not in self._views:
            gallery = self.split.gallery
            started = time.perf_counter()
            if variant == "off":
                view = prepare_items(gallery, self.banks, norm, None).original
            else:
                view = adjusted_view(gallery, self.banks, norm, invgc)
            seconds = time.perf_counter() - started
            self._views[key] = (view, seconds, degeneration(view.embeddings).value)
        return self._views[key]


def _varied(config: Config, norm: NormParams, invgc: InvGCParams) -> dict[str, Any]:
    """The parameters that matter to ``config`` (for the report)."""
    names = {
        "is": ("beta_query_bank",),
        "dis": ("beta_query_bank", "dis_topk"),
        "dualis": ("beta_query_bank", "beta_gallery_bank"),
        "dualdis": ("beta_query_bank", "beta_gallery_bank", "dis_topk"),
        "nnn": ("nnn_alpha", "nnn_topk"),
        "csls": ("csls_topk",),
        "dbsn": ("dbsn_tau", "dbsn_iterations"),
    }.get(config.method, ())
    out: dict[str, Any] = {n: getattr(norm, n) for n in names}
    if config.invgc != "off":
        out |= {n: getattr(invgc, n) for n in ("r_gallery_bank", "r_query_bank", "pool_rate")}
    return out


def evaluate_offline(
    split: Split,
    banks: Banks,
    configs: Sequence[Config],
    params_for: Callable[[Config], Params],
    *,
    k: int = HUBNESS_K,
    progress: bool = True,
) -> list[Row]:
    """Rows for ``configs`` on ``split``, each run with ``params_for(config)``."""
    from tqdm.auto import tqdm

    views = _Views(split, banks)
    queries = split.queries
    rows = []
    for config in tqdm(configs, desc="evaluate", unit="config", disable=not progress):
        norm, invgc = params_for(config)
        view, precompute, degen = views.get(config.invgc, norm, invgc)
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
                _varied(config, norm, invgc),
            )
        )
    return rows


def beta_curve(
    split: Split,
    banks: Banks,
    norm: NormParams,
    betas: Sequence[float] = CURVE_BETAS,
) -> dict[str, Any]:
    """DIAGNOSTIC R@1 against β on ``split`` (the test split: never use it to choose β).

    Curves on the original gallery: IS over β_q; DualIS over β_q = β_g; DualIS over β_q with
    β_g fixed at the configured value. Also R@1 at the configured β pair and at the released
    DBNorm code's defaults (β_q = 1/1.99, β_g = 3), and raw's R@1 for reference.
    """
    released = NormParams()
    extra = (norm.beta_query_bank, norm.beta_gallery_bank)
    extra += (released.beta_query_bank, released.beta_gallery_bank)
    profile = GalleryProfile.build(split.gallery, banks, norm, [*betas, *extra])
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
