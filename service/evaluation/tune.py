"""Grid search of every method's parameters on the VALIDATION split (never the test split).

Stages (each exact, each cheap thanks to :mod:`service.evaluation.sweep`):

1. every normaliser on the original validation gallery: β on a log grid (β_q for IS/DIS, the
   (β_q, β_g) product grid for DualIS/DualDIS), NNN's α on a linear grid, DBSN's τ on a log
   grid (T as configured);
2. InvGC LocalAdj alone (raw scores): the (r_gallery_bank × r_query_bank × pool_rate) grid;
3. every normaliser again on the gallery adjusted with stage 2's best InvGC parameters
   (a coordinate-wise search: the joint grid would be the product of both).

The objective is R@1, ties broken by MRR, then by grid order. A service has ONE β pair shared
by IS, DIS, DualIS and DualDIS, so the env file carries the β of the best configuration overall
(the "default"); :attr:`TuneResult.notes` says where each written value comes from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from service.algorithms import (
    Banks,
    InvGCParams,
    NormParams,
    invgc_adjust,
    retrieval_quality,
)
from service.evaluation.methods import NORMALISING, Config, Split
from service.evaluation.sweep import GalleryProfile, Similarities, invgc_sweep

#: 1-2-5 log grid from 0.001 to 50, then 100, 200, 400 (the range peers search): 18 values.
DEFAULT_BETAS: tuple[float, ...] = (
    *(float(f"{m}e{e}") for e in range(-3, 2) for m in (1, 2, 5)),
    100.0,
    200.0,
    400.0,
)
DEFAULT_RATES: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(11))
DEFAULT_POOL_RATES: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1)
DEFAULT_NNN_ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 10) for i in range(16))
#: DBSN's Sinkhorn temperature: a 1-2-5 log grid around the paper's 0.01 (one solve each).
DEFAULT_TAUS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

BETA_METHODS = ("is", "dis", "dualis", "dualdis")
DUAL_METHODS = ("dualis", "dualdis")


@dataclass(frozen=True)
class Grid:
    """The values searched; each tuple is one axis."""

    betas: tuple[float, ...] = DEFAULT_BETAS
    rates: tuple[float, ...] = DEFAULT_RATES
    pool_rates: tuple[float, ...] = DEFAULT_POOL_RATES
    nnn_alphas: tuple[float, ...] = DEFAULT_NNN_ALPHAS
    taus: tuple[float, ...] = DEFAULT_TAUS

    def size(self) -> int:
        """Number of grid points :func:`tune` evaluates."""
        b, a, t = len(self.betas), len(self.nnn_alphas), len(self.taus)
        # raw, is+dis, dualis+dualdis, nnn, csls, dbsn
        per_gallery = 1 + 2 * b + 2 * b * b + a + 1 + t
        return 2 * per_gallery - 1 + len(self.pool_rates) * len(self.rates) ** 2

    def as_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Point:
    """One evaluated grid point: a configuration, the parameters it varied, its val quality."""

    config: Config
    params: dict[str, float]
    r1: float
    mrr: float

    def beats(self, other: Point | None) -> bool:
        return other is None or (self.r1, self.mrr) > (other.r1, other.mrr)


def _point(config: Config, params: dict[str, float], ranks: np.ndarray) -> Point:
    report = retrieval_quality(ranks)
    return Point(config, params, report.r1, report.mrr)


def _normaliser_points(
    sims: Similarities,
    profile: GalleryProfile,
    base: NormParams,
    grid: Grid,
    variant: str,
    fixed: dict[str, float],
) -> Iterator[Point]:
    """Every normaliser's grid on one gallery (``fixed``: the InvGC params that made it)."""
    view = profile.view

    def run(method: str, norm: NormParams, stats: np.ndarray, varied: dict[str, float]) -> Point:
        ranks = sims.method_ranks(method, norm, stats, view)
        return _point(Config(method, variant), {**fixed, **varied}, ranks)  # type: ignore[arg-type]

    if variant == "off":  # on the adjusted gallery, raw is stage 2's best point
        yield run("raw", base, view.stats, {})
    for method in NORMALISING:
        if method in ("is", "dis"):
            for beta in grid.betas:
                # the gallery-bank column has coefficient 0 for IS/DIS: any β there will do
                norm = replace(base, beta_query_bank=beta)
                yield run(method, norm, profile.stats(beta, beta), {"beta_query_bank": beta})
        elif method in DUAL_METHODS:
            for beta_q in grid.betas:
                for beta_g in grid.betas:
                    norm = replace(base, beta_query_bank=beta_q, beta_gallery_bank=beta_g)
                    varied = {"beta_query_bank": beta_q, "beta_gallery_bank": beta_g}
                    yield run(method, norm, profile.stats(beta_q, beta_g), varied)
        elif method == "nnn":
            for alpha in grid.nnn_alphas:
                yield run(method, replace(base, nnn_alpha=alpha), view.stats, {"nnn_alpha": alpha})
        elif method == "dbsn":
            for tau in grid.taus:
                norm = replace(base, dbsn_tau=tau)
                yield run(method, norm, profile.dbsn_stats(norm), {"dbsn_tau": tau})
        else:  # csls: no parameter searched
            yield run(method, base, view.stats, {})


def _invgc_dict(params: InvGCParams) -> dict[str, float]:
    return {
        "r_gallery_bank": params.r_gallery_bank,
        "r_query_bank": params.r_query_bank,
        "pool_rate": params.pool_rate,
    }


def _best(points: Sequence[Point], **where: Any) -> Point | None:
    best = None
    for p in points:
        if all(getattr(p.config, k) == v for k, v in where.items()) and p.beats(best):
            best = p
    return best


@dataclass
class TuneResult:
    """All points, the best per configuration, and the parameters chosen for the env file."""

    split: str
    queries: int
    gallery_size: int
    grid: Grid
    points: list[Point]
    default: Point
    norm: NormParams
    invgc: InvGCParams
    notes: list[str] = field(default_factory=list)

    def _by_config(self) -> dict[str, list[Point]]:
        groups: dict[str, list[Point]] = {}
        for p in self.points:
            groups.setdefault(p.config.key, []).append(p)
        return groups

    def best_per_config(self) -> dict[str, Point]:
        best: dict[str, Point] = {}
        for p in self.points:
            if p.beats(best.get(p.config.key)):
                best[p.config.key] = p
        return best

    def env(self) -> dict[str, str]:
        """``HUBLESS_*`` settings (``Settings`` field names, upper-cased, prefixed)."""
        values: dict[str, Any] = {
            "default_method": self.default.config.method,
            "invgc": "true" if self.default.config.invgc == "local" else "false",
            "invgc_adjacency": "local",
            "beta_query_bank": self.norm.beta_query_bank,
            "beta_gallery_bank": self.norm.beta_gallery_bank,
            "nnn_alpha": self.norm.nnn_alpha,
            "dbsn_tau": self.norm.dbsn_tau,
            "r_gallery_bank": self.invgc.r_gallery_bank,
            "r_query_bank": self.invgc.r_query_bank,
            "pool_rate": self.invgc.pool_rate,
        }
        return {
            f"HUBLESS_{k.upper()}": repr(float(v)) if isinstance(v, float) else str(v)
            for k, v in values.items()
        }

    def env_text(self, source: str) -> str:
        head = [
            f"# hubless tune: grid search on the {self.split} split of {source}",
            f"# ({self.queries} queries, gallery of {self.gallery_size}; objective R@1, then MRR)",
            f"# default configuration: {self.default.config.label} "
            f"(val R@1 {self.default.r1:.4f}, MRR {self.default.mrr:.4f})",
            *(f"# {note}" for note in self.notes),
        ]
        return "\n".join([*head, *(f"{k}={v}" for k, v in self.env().items())]) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """The full grid, compact: per configuration, the parameters it holds fixed, the names
        of those it varies and rows of ``[*varied values, R@1, MRR]`` in grid order."""
        sweeps: dict[str, dict[str, Any]] = {}
        for key, points in self._by_config().items():
            names = list(points[0].params)
            # e.g. the InvGC parameters of every "invgc+…" point
            fixed = [n for n in names if len(points) > 1 and len({p.params[n] for p in points}) < 2]
            varied = [n for n in names if n not in fixed]
            sweeps[key] = {
                "label": points[0].config.label,
                "fixed": {n: points[0].params[n] for n in fixed},
                "params": varied,
                "rows": [
                    [*(p.params[n] for n in varied), round(p.r1, 6), round(p.mrr, 6)]
                    for p in points
                ],
            }
        best = {
            key: {"label": p.config.label, "params": p.params, "r1": p.r1, "mrr": p.mrr}
            for key, p in self.best_per_config().items()
        }
        return {
            "split": self.split,
            "queries": self.queries,
            "gallery_size": self.gallery_size,
            "objective": "R@1, ties broken by MRR",
            "grid": self.grid.as_dict(),
            "default": self.default.config.key,
            "env": self.env(),
            "notes": self.notes,
            "best": best,
            "sweeps": sweeps,
        }


def _choose(points: list[Point], base: NormParams) -> tuple[Point, NormParams, list[str]]:
    """The default configuration and the single β pair / NNN α written for it."""
    default = _best(points)
    assert default is not None
    variant, method = default.config.invgc, default.config.method
    notes = [f"default method and InvGC switch: the best configuration, {default.config.key}"]
    best_dual = _best([p for p in points if p.config.method in DUAL_METHODS], invgc=variant)
    assert best_dual is not None
    beta_q = best_dual.params["beta_query_bank"]
    beta_g = best_dual.params["beta_gallery_bank"]
    if method in DUAL_METHODS:
        notes.append(
            f"β pair: tuned for {default.config.key}; one service shares it across "
            "IS/DIS/DualIS/DualDIS, so the other β methods may be served below their own best"
        )
    elif method in BETA_METHODS:
        beta_q = default.params["beta_query_bank"]
        notes.append(
            f"β_q: tuned for {default.config.key}; β_g from the best dual method "
            f"({best_dual.config.key}); the β pair is shared by IS/DIS/DualIS/DualDIS"
        )
    else:
        notes.append(
            f"β pair: from the best dual method ({best_dual.config.key}), since the default "
            "method has no β; the pair is shared by IS/DIS/DualIS/DualDIS"
        )
    best_nnn = _best(points, method="nnn", invgc=variant)
    assert best_nnn is not None
    notes.append(f"NNN α: tuned for {best_nnn.config.key}")
    best_dbsn = _best(points, method="dbsn", invgc=variant)
    assert best_dbsn is not None
    notes.append(f"DBSN τ: tuned for {best_dbsn.config.key}")
    notes.append("InvGC rates and pool rate: tuned for InvGC LocalAdj alone (raw scores)")
    norm = replace(
        base,
        beta_query_bank=beta_q,
        beta_gallery_bank=beta_g,
        nnn_alpha=best_nnn.params["nnn_alpha"],
        dbsn_tau=best_dbsn.params["dbsn_tau"],
    )
    return default, norm, notes


def tune(
    split: Split,
    banks: Banks,
    grid: Grid | None = None,
    base: NormParams | None = None,
    *,
    progress: bool = True,
) -> TuneResult:
    """Search ``grid`` on ``split`` (pass the VALIDATION split) and choose the env parameters.

    ``base``: the parameters not searched (dis_topk, nnn_topk, csls_topk); default NormParams.
    """
    from tqdm.auto import tqdm

    grid = grid or Grid()
    base = base or NormParams()
    betas = np.asarray(grid.betas)
    points: list[Point] = []
    with tqdm(total=grid.size(), desc="tune", unit="point", disable=not progress) as bar:

        def collect(new: Iterator[Point]) -> None:
            for p in new:
                points.append(p)
                bar.update(1)

        bar.set_postfix_str("normalisers")
        sims = Similarities.of_split(split)
        profile = GalleryProfile.build(split.gallery, banks, base, betas)
        collect(_normaliser_points(sims, profile, base, grid, "off", {}))

        bar.set_postfix_str("InvGC")
        sweep = invgc_sweep(
            split,
            sims,
            banks,
            np.asarray(grid.pool_rates),
            np.asarray(grid.rates),
            np.asarray(grid.rates),
        )
        collect(_point(Config("raw", "local"), _invgc_dict(p), r) for p, r in sweep)
        best_invgc = _best(points, invgc="local")
        assert best_invgc is not None
        invgc = InvGCParams(**best_invgc.params)

        bar.set_postfix_str("InvGC + normalisers")
        adjusted = invgc_adjust(split.gallery, banks.query_bank, banks.gallery_bank, invgc)
        sims = Similarities.of(split.queries, adjusted, split.truth)
        profile = GalleryProfile.build(adjusted, banks, base, betas)
        collect(_normaliser_points(sims, profile, base, grid, "local", _invgc_dict(invgc)))

    default, norm, notes = _choose(points, base)
    return TuneResult(
        split.name,
        int(split.queries.shape[0]),
        int(split.gallery.shape[0]),
        grid,
        points,
        default,
        norm,
        invgc,
        notes,
    )
