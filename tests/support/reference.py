"""Deliberately naive reference implementations of docs/spec.md, for testing ``service.algorithms``.

Everything here is written from docs/spec.md alone: explicit Python loops, float64, the papers'
product forms with plain ``np.exp``, sets for activation sets. Nothing is imported from the
code under test, so an agreement between the two is evidence, not a tautology. Slow by design:
use on small inputs only.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

# ----------------------------------------------------------------------------- basics


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product with a Python loop."""
    total = 0.0
    for x, y in zip(a, b, strict=True):
        total += float(x) * float(y)
    return total


def normalize(v: np.ndarray) -> np.ndarray:
    """One vector scaled to unit length."""
    v = np.asarray(v, dtype=np.float64)
    return v / math.sqrt(dot(v, v))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return np.array([normalize(row) for row in np.asarray(x, dtype=np.float64)])


def similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) matrix of s(a_i, b_j), one pair at a time."""
    out = np.empty((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = dot(a[i], b[j])
    return out


def order_desc(values) -> list[int]:
    """Indices sorted by value descending, ties by lower index."""
    return sorted(range(len(values)), key=lambda j: (-float(values[j]), j))


def top1(q: np.ndarray, gallery: np.ndarray) -> int:
    """Row of the gallery item most similar to q (first one on ties)."""
    best, arg = -math.inf, -1
    for j in range(len(gallery)):
        s = dot(q, gallery[j])
        if s > best:
            best, arg = s, j
    return arg


def mean_topk(values, k: int) -> float:
    """Mean of the k largest values (all of them if there are fewer than k)."""
    top = sorted((float(v) for v in values), reverse=True)[:k]
    return sum(top) / len(top)


# ----------------------------------------------------------------------------- InvGC


def invgc_full_bank(gallery: np.ndarray, bank: np.ndarray, rate: float) -> np.ndarray:
    """m_X(g) = normalize(g − (r/N) · A[g] X), A = S − mean(S), S = G Xᵀ built whole."""
    n, big_n = len(gallery), len(bank)
    s = similarities(gallery, bank)
    mu = 0.0
    for i in range(n):
        for b in range(big_n):
            mu += s[i, b]
    mu /= n * big_n
    out = []
    for i in range(n):
        push = np.zeros(gallery.shape[1])
        for b in range(big_n):
            push = push + (s[i, b] - mu) * bank[b]
        out.append(normalize(gallery[i] - (rate / big_n) * push))
    return np.array(out)


def invgc_local_bank(
    gallery: np.ndarray, bank: np.ndarray, rate: float, pool_rate: float
) -> np.ndarray:
    """LocalAdj: keep the K = max(1, floor(p·N)) largest s(g, b) of each row, no centring."""
    big_n = len(bank)
    k = max(1, math.floor(pool_rate * big_n))
    s = similarities(gallery, bank)
    out = []
    for i in range(len(gallery)):
        push = np.zeros(gallery.shape[1])
        for b in order_desc(s[i])[:k]:
            push = push + s[i, b] * bank[b]
        out.append(normalize(gallery[i] - (rate / k) * push))
    return np.array(out)


def invgc(
    gallery: np.ndarray,
    query_bank: np.ndarray,
    gallery_bank: np.ndarray,
    *,
    r_query_bank: float,
    r_gallery_bank: float,
    adjacency: str = "local",
    pool_rate: float = 0.01,
) -> np.ndarray:
    """g' = normalize(0.5·m_BG(g) + 0.5·m_BQ(g))."""
    if adjacency == "full":
        m_q = invgc_full_bank(gallery, query_bank, r_query_bank)
        m_g = invgc_full_bank(gallery, gallery_bank, r_gallery_bank)
    else:
        m_q = invgc_local_bank(gallery, query_bank, r_query_bank, pool_rate)
        m_g = invgc_local_bank(gallery, gallery_bank, r_gallery_bank, pool_rate)
    return np.array([normalize(0.5 * m_g[i] + 0.5 * m_q[i]) for i in range(len(gallery))])


# ----------------------------------------------------------------------------- bank statistics


def log_z(gallery: np.ndarray, bank: np.ndarray, beta: float) -> np.ndarray:
    """log Z_X(g) = log Σ_{b∈X} exp(β s(b, g)) with plain np.exp (moderate β only)."""
    out = np.empty(len(gallery))
    for i in range(len(gallery)):
        z = 0.0
        for b in range(len(bank)):
            z += float(np.exp(beta * dot(bank[b], gallery[i])))
        out[i] = math.log(z)
    return out


def bank_topk_mean(gallery: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """r_X(g): mean of the k largest s(b, g) over b ∈ X."""
    return np.array([mean_topk([dot(b, g) for b in bank], k) for g in gallery])


def activation_set(gallery: np.ndarray, bank: np.ndarray, k: int = 1) -> set[int]:
    """A_X = ∪_{b∈X} top-k_g s(b, g), as a set of gallery rows."""
    active: set[int] = set()
    for b in bank:
        active.update(order_desc([dot(b, g) for g in gallery])[:k])
    return active


# ----------------------------------------------------------------------------- method scores


def method_scores(
    method: str,
    queries: np.ndarray,
    gallery: np.ndarray,
    query_bank: np.ndarray,
    gallery_bank: np.ndarray,
    *,
    beta_query_bank: float,
    beta_gallery_bank: float,
    dis_topk: int = 1,
    nnn_topk: int = 128,
    nnn_alpha: float = 0.75,
    csls_topk: int = 10,
    dbsn_tau: float = 0.01,
    dbsn_iterations: int = 10,
) -> np.ndarray:
    """(m, n) scores of docs/spec.md's definitions, one (q, g) pair at a time.

    Methods: raw, is, dis, dualis, dualdis, nnn, csls (ours: 2s − r_BQ(g)) and csls_full
    (2s − r_BQ(g) − r(q), r(q) the mean top-k similarity of q to the gallery).
    """
    bq, bg = beta_query_bank, beta_gallery_bank
    lz_q = log_z(gallery, query_bank, bq)
    lz_g = log_z(gallery, gallery_bank, bg)
    r_q = bank_topk_mean(gallery, query_bank, csls_topk)
    nnn = bank_topk_mean(gallery, query_bank, nnn_topk)
    act_q = activation_set(gallery, query_bank, dis_topk)
    act_g = activation_set(gallery, gallery_bank, dis_topk)
    if method == "dbsn":
        v = sinkhorn_v(gallery_bank, query_bank, dbsn_tau, dbsn_iterations)
        tau_log_u = [
            dbsn_tau * math.log(sinkhorn_u(g, query_bank, v, dbsn_tau, len(gallery_bank)))
            for g in gallery
        ]
    out = np.empty((len(queries), len(gallery)))
    for i, q in enumerate(queries):
        t = top1(q, gallery)
        a_q = 1.0 if t in act_q else 0.0
        a_g = 1.0 if t in act_g else 0.0
        r_query = mean_topk([dot(q, g) for g in gallery], csls_topk)
        for j, g in enumerate(gallery):
            s = dot(q, g)
            if method == "raw":
                v = s
            elif method == "is":
                v = s - lz_q[j] / bq
            elif method == "dis":
                v = s - a_q * lz_q[j] / bq
            elif method == "dualis":
                v = s - (lz_q[j] + lz_g[j]) / (bq + bg)
            elif method == "dualdis":
                v = s - (a_q * lz_q[j] + a_g * lz_g[j]) / (bq + bg)
            elif method == "nnn":
                v = s - nnn_alpha * nnn[j]
            elif method == "csls":
                v = 2 * s - r_q[j]
            elif method == "dbsn":
                v = s + tau_log_u[j]
            elif method == "csls_full":
                v = 2 * s - r_q[j] - r_query
            else:
                raise ValueError(method)
            out[i, j] = v
    return out


def sinkhorn_v(gallery_bank: np.ndarray, query_bank: np.ndarray, tau: float, iterations: int):
    """SPEC "DBSN": the column weights v after T iterations, plain float64 ``exp`` (fine for
    τ ≥ 0.01 with |s| ≤ 1: K ≥ e^-200). Rows: the gallery bank, columns: the query bank."""
    rows, cols = len(gallery_bank), len(query_bank)
    kernel = [[math.exp(-(1 - dot(g, q)) / tau) for q in query_bank] for g in gallery_bank]
    u = [1 / rows] * rows
    v = [1 / cols] * cols
    for _ in range(iterations):
        for j in range(cols):
            v[j] = (1 / cols) / sum(kernel[i][j] * u[i] for i in range(rows))
        for i in range(rows):
            u[i] = (1 / rows) / sum(kernel[i][j] * v[j] for j in range(cols))
    return v


def sinkhorn_u(g: np.ndarray, query_bank: np.ndarray, v, tau: float, rows: int) -> float:
    """One more row update for item g: ``u(g) = a / Σ_b v_b exp(−(1 − s(g, b))/τ)``."""
    total = sum(
        v_b * math.exp(-(1 - dot(g, b)) / tau) for v_b, b in zip(v, query_bank, strict=True)
    )
    return (1 / rows) / total


def dbsn_tau_log_u_dense(
    items: np.ndarray,
    query_bank: np.ndarray,
    gallery_bank: np.ndarray,
    tau: float = 0.01,
    iterations: int = 10,
) -> np.ndarray:
    """(n,) ``τ log u(g)`` of SPEC "DBSN" as whole float64 matrices (probability domain, plain
    ``exp``: fine for τ ≥ 0.01): the same definition as :func:`sinkhorn_v`/:func:`sinkhorn_u`
    for the demo-sized data the backend tests use, where Python loops would take minutes."""
    items, query_bank, gallery_bank = (
        np.asarray(x, dtype=np.float64) for x in (items, query_bank, gallery_bank)
    )
    kernel = np.exp(-(1 - gallery_bank @ query_bank.T) / tau)
    rows, cols = kernel.shape
    u, v = np.full(rows, 1 / rows), np.full(cols, 1 / cols)
    for _ in range(iterations):
        v = (1 / cols) / (kernel.T @ u)
        u = (1 / rows) / (kernel @ v)
    u_items = (1 / rows) / (np.exp(-(1 - items @ query_bank.T) / tau) @ v)
    return tau * np.log(u_items)


def dbsn_top(
    items: np.ndarray,
    queries: np.ndarray,
    query_bank: np.ndarray,
    gallery_bank: np.ndarray,
    k: int,
    tau: float = 0.01,
    iterations: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of each query's k best items by DBSN ``s(q, g) + τ log u(g)``, float64."""
    bias = dbsn_tau_log_u_dense(items, query_bank, gallery_bank, tau, iterations)
    scores = np.asarray(queries, dtype=np.float64) @ np.asarray(items, dtype=np.float64).T + bias
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def inverted_softmax(q: np.ndarray, g: np.ndarray, bank: np.ndarray, beta: float) -> float:
    """IS_X(q, g) = exp(β s(q,g)) / Σ_{b∈X} exp(β s(b,g)), the paper's form."""
    z = 0.0
    for b in bank:
        z += float(np.exp(beta * dot(b, g)))
    return float(np.exp(beta * dot(q, g))) / z


def dualis_product(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_bank: np.ndarray,
    gallery_bank: np.ndarray,
    beta_query_bank: float,
    beta_gallery_bank: float,
) -> np.ndarray:
    """(m, n) DualIS(q,g) = IS_BQ(q,g;β_q) · IS_BG(q,g;β_g), plain float64 exp."""
    out = np.empty((len(queries), len(gallery)))
    for i, q in enumerate(queries):
        for j, g in enumerate(gallery):
            out[i, j] = inverted_softmax(q, g, query_bank, beta_query_bank) * inverted_softmax(
                q, g, gallery_bank, beta_gallery_bank
            )
    return out


def rank(scores_row, truth: int) -> int:
    """1-based rank of ``truth``: 1 + number of items scoring strictly higher."""
    count = 0
    for j in range(len(scores_row)):
        if j != truth and scores_row[j] > scores_row[truth]:
            count += 1
    return 1 + count


def topk_rows(scores: np.ndarray, k: int) -> list[list[int]]:
    """Each row's k best columns, best first (ties by lower index)."""
    return [order_desc(row)[:k] for row in scores]


# ----------------------------------------------------------------------------- metrics


def k_occurrence(topk: list[list[int]], n: int) -> list[int]:
    counts = [0] * n
    for row in topk:
        for g in row:
            counts[g] += 1
    return counts


def mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs)


def skewness(xs) -> float:
    """Biased Fisher skewness m3 / m2^1.5 (0 for a constant sample)."""
    mu = mean(xs)
    m2 = mean([(x - mu) ** 2 for x in xs])
    m3 = mean([(x - mu) ** 3 for x in xs])
    return 0.0 if m2 == 0 else m3 / m2**1.5


def robin_hood(xs) -> float:
    mu = mean(xs)
    total = sum(float(x) for x in xs)
    return 0.5 * sum(abs(float(x) - mu) for x in xs) / total


def gini(xs) -> float:
    """Σ_i Σ_j |x_i − x_j| / (2 n Σx), the double sum."""
    n, total = len(xs), sum(float(x) for x in xs)
    acc = 0.0
    for a in xs:
        for b in xs:
            acc += abs(float(a) - float(b))
    return acc / (2 * n * total)


def antihub_rate(xs) -> float:
    return sum(1 for x in xs if x == 0) / len(xs)


def hub_occurrence(xs, k: int, probes: int) -> float:
    return sum(x for x in xs if x >= 2 * k) / (probes * k)


def degeneration(gallery: np.ndarray, rows=None) -> float:
    """Mean over g (in ``rows``, default all) of max over g2 ≠ g of s(g, g2)."""
    rows = range(len(gallery)) if rows is None else rows
    best = []
    for i in rows:
        best.append(max(dot(gallery[i], gallery[j]) for j in range(len(gallery)) if j != i))
    return mean(best)


def retrieval_quality(ranks) -> dict[str, float]:
    m = len(ranks)
    srt = sorted(ranks)
    median = srt[m // 2] if m % 2 else (srt[m // 2 - 1] + srt[m // 2]) / 2
    return {
        "r1": sum(1 for r in ranks if r <= 1) / m,
        "r5": sum(1 for r in ranks if r <= 5) / m,
        "r10": sum(1 for r in ranks if r <= 10) / m,
        "median_rank": float(median),
        "mean_rank": sum(ranks) / m,
        "mrr": sum(1 / r for r in ranks) / m,
    }


def median_of(xs) -> float:
    srt = sorted(xs)
    m = len(srt)
    return float(srt[m // 2]) if m % 2 else (srt[m // 2 - 1] + srt[m // 2]) / 2


def occurrence_histogram(xs) -> tuple[list[int], list[int]]:
    """Edges 0, 1, 2, 4, … up to the first power of two above max(xs); counts by scanning."""
    edges = [0, 1]
    while edges[-1] <= max(xs, default=0):
        edges.append(edges[-1] * 2)
    counts = [sum(1 for x in xs if lo <= x < hi) for lo, hi in itertools.pairwise(edges)]
    return edges, counts


def robust_z(xs) -> tuple[float, float, float, list[float]]:
    """(median, MAD, scale, z of every x) with scale = 1.4826·MAD, or 1 when MAD is 0."""
    med = median_of(xs)
    mad = median_of([abs(x - med) for x in xs])
    scale = 1.4826 * mad if mad else 1.0
    return med, mad, scale, [(x - med) / scale for x in xs]
