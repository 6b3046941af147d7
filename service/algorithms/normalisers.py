"""Score normalisers: every method is raw similarity plus a per-gallery-item bias.

A method's score for query q and gallery item g is

    score(q, g) = w · s(q, g) + Σ_j c_j(q) · stat_j(g) + offset(q)

with ``stat`` the per-item columns of :mod:`service.algorithms.stats`, a constant weight
``w``, coefficients ``c(q)`` that depend on the method (and, for the dynamic methods, on
whether the query's raw top-1 item is in each bank's activation set), and a per-query constant
``offset`` that restores ``log Z`` from log-mean-exp (it never changes a query's ranking).
An inner-product index therefore serves every method exactly: store ``[g, stat(g)]`` and search
with ``[w·q, c(q)]`` (docs/spec.md, "DualIS ... by appending one extra coordinate").

================  ==================================================================
raw               ``s``
is                ``s − log Z_BQ(g)/β_q``                          (query bank, QB-Norm)
dis               ``s − a_Q · log Z_BQ(g)/β_q``                    a_Q = [top1(q) ∈ A_BQ]
dualis            ``s − (log Z_BQ(g) + log Z_BG(g))/(β_q + β_g)``  (DBNorm; ranks as IS·IS)
dualdis           ``s − (a_Q log Z_BQ(g) + a_G log Z_BG(g))/(β_q + β_g)``
nnn               ``s − α · mean top-k_{b∈BQ} s(b, g)``
csls              ``2s − r_BQ(g)``; CSLS's query term −r(q) is omitted (a per-query constant)
dbsn              ``s + τ log u(g)`` = ``s − dbsn(g) + 1 − τ log |BG|``     (Sinkhorn, DBSN)
================  ==================================================================

DBSN's constant ``1 − τ log |BG|`` (the cost's ``1`` and ``τ log a``) is in ``offset``, so the
reported score is SPEC's ``s(q, g) + τ·log u(g)`` while the stored column stays O(1).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from service.algorithms.stats import (
    LME_GALLERY_BANK,
    LME_QUERY_BANK,
    STAT_COLUMNS,
    NormParams,
    log_bank_sizes,
)
from service.algorithms.validation import InputError


@dataclass(frozen=True)
class QueryPlan:
    """How to score a batch of m queries: ``w·s + coefficients @ stat + offsets``.

    weight: scalar w. coefficients: (m, len(STAT_COLUMNS)) float64. offsets: (m,) float64.
    """

    weight: float
    coefficients: np.ndarray
    offsets: np.ndarray


class Normaliser(ABC):
    """One method: which stat columns it uses, with what weight, and whether it is dynamic."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: Dynamic methods gate their bank terms by the query's raw top-1 activation.
    dynamic: ClassVar[bool] = False
    similarity_weight: ClassVar[float] = 1.0

    @abstractmethod
    def stat_weights(self, params: NormParams) -> np.ndarray:
        """Coefficients of the stat columns for a query that activates every bank."""

    def constant(self, params: NormParams, bank_sizes: tuple[int, int]) -> float:
        """A per-query constant of the score beyond the log-mean-exp terms (default none)."""
        return 0.0

    def plan(
        self,
        params: NormParams,
        bank_sizes: tuple[int, int],
        m: int,
        activated: np.ndarray | None = None,
    ) -> QueryPlan:
        """The plan for m queries. activated: (m, 2) bool, the query's raw top-1 item in
        (A_BQ, A_BG); required for dynamic methods, ignored by the others."""
        coef = np.tile(self.stat_weights(params).astype(np.float64), (m, 1))
        if self.dynamic:
            if activated is None:
                raise ValueError(f"method {self.name!r} needs the queries' top-1 activation")
            coef[:, LME_QUERY_BANK] *= activated[:, 0]
            coef[:, LME_GALLERY_BANK] *= activated[:, 1]
        log_sizes = log_bank_sizes(bank_sizes)
        offsets = coef[:, LME_QUERY_BANK] * log_sizes[0] + coef[:, LME_GALLERY_BANK] * log_sizes[1]
        offsets += self.constant(params, bank_sizes)
        return QueryPlan(self.similarity_weight, coef, offsets)


def _weights(**columns: float) -> np.ndarray:
    w = np.zeros(len(STAT_COLUMNS))
    for name, value in columns.items():
        w[STAT_COLUMNS.index(name)] = value
    return w


class Raw(Normaliser):
    name = "raw"
    description = "plain cosine similarity"

    def stat_weights(self, params: NormParams) -> np.ndarray:
        return _weights()


class InvertedSoftmax(Normaliser):
    name = "is"
    description = "inverted softmax against the query bank (QB-Norm IS)"

    def stat_weights(self, params: NormParams) -> np.ndarray:
        return _weights(lme_query_bank=-1 / params.beta_query_bank)


class DynamicInvertedSoftmax(InvertedSoftmax):
    name = "dis"
    description = "dynamic inverted softmax against the query bank (QB-Norm DIS)"
    dynamic = True


class DualIS(Normaliser):
    name = "dualis"
    description = "DBNorm DualIS: inverted softmax against both banks"

    def stat_weights(self, params: NormParams) -> np.ndarray:
        w = -1 / (params.beta_query_bank + params.beta_gallery_bank)
        return _weights(lme_query_bank=w, lme_gallery_bank=w)


class DualDIS(DualIS):
    name = "dualdis"
    description = "DBNorm DualDIS: dynamic inverted softmax against both banks"
    dynamic = True


class NNN(Normaliser):
    name = "nnn"
    description = "nearest neighbour normalisation against the query bank"

    def stat_weights(self, params: NormParams) -> np.ndarray:
        return _weights(nnn_mean=-params.nnn_alpha)


class CSLS(Normaliser):
    name = "csls"
    description = "cross-domain similarity local scaling (query term omitted)"
    similarity_weight = 2.0

    def stat_weights(self, params: NormParams) -> np.ndarray:
        return _weights(csls_mean=-1.0)


class DBSN(Normaliser):
    name = "dbsn"
    description = "dual-bank Sinkhorn normalisation (gallery bank × query bank)"

    def stat_weights(self, params: NormParams) -> np.ndarray:
        return _weights(dbsn=-1.0)

    def constant(self, params: NormParams, bank_sizes: tuple[int, int]) -> float:
        # τ·log u(g) = τ·log a + 1 − dbsn(g), a = 1/|BG| (the cost 1 − s contributes the 1);
        # an empty (live) query bank has no Sinkhorn term at all: raw scores
        if not bank_sizes[0]:
            return 0.0
        return 1.0 - params.dbsn_tau * math.log(bank_sizes[1])


NORMALISERS: dict[str, Normaliser] = {
    cls.name: cls()
    for cls in (Raw, InvertedSoftmax, DynamicInvertedSoftmax, DualIS, DualDIS, NNN, CSLS, DBSN)
}
METHODS: tuple[str, ...] = tuple(NORMALISERS)


def get_normaliser(method: str) -> Normaliser:
    try:
        return NORMALISERS[method]
    except KeyError:
        expected = ", ".join(METHODS)
        message = f"unknown method {method!r}; expected one of {expected}"
        raise InputError("method", message) from None
