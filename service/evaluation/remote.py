"""Evaluate a running service over HTTP with the client (``hubless evaluate --url``).

The service must hold the dataset's test gallery, e.g. started with
``HUBLESS_GALLERY=<dataset>/gallery.npy HUBLESS_GALLERY_IDS=<dataset>/gallery_ids.txt
HUBLESS_QUERY_BANK=<dataset>/query_bank.npy HUBLESS_GALLERY_BANK=<dataset>/gallery_bank.npy``.
The test queries go to ``POST /search`` in batches, for each method with InvGC off and on; R@k
and hubness are computed from the returned ids only, so ranks beyond ``k`` are unknown: MRR is
MRR@k (a miss counts 0) and the median rank is reported only when it is within ``k``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.algorithms import hubness, k_occurrence, retrieval_quality
from service.algorithms.blocks import row_blocks
from service.client import HublessClient
from service.evaluation.evaluate import HUBNESS_K, Row
from service.evaluation.methods import Config, Split


def served_ids(client: HublessClient, page: int = 1000) -> list[str]:
    """Every gallery id the service holds, in its order."""
    ids: list[str] = []
    while True:
        listing = client.list_gallery(offset=len(ids), limit=page)
        ids.extend(item.id for item in listing.items)
        if not listing.items or len(ids) >= listing.total:
            return ids


def check_gallery(client: HublessClient, split: Split) -> None:
    """Refuse to evaluate a service that does not hold exactly the split's gallery."""
    ids = served_ids(client)
    if set(ids) != set(split.gallery_ids):
        missing = len(set(split.gallery_ids) - set(ids))
        raise ValueError(
            f"the service holds {len(ids)} gallery items, {missing} of the dataset's "
            f"{len(split.gallery_ids)} missing: start it on the dataset's gallery and banks "
            "(HUBLESS_GALLERY, HUBLESS_GALLERY_IDS, HUBLESS_QUERY_BANK, HUBLESS_GALLERY_BANK)"
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluate_service(
    client: HublessClient,
    split: Split,
    methods: Sequence[str],
    *,
    k: int = HUBNESS_K,
    batch_size: int = 256,
    progress: bool = True,
) -> list[Row]:
    """One row per (method, InvGC off/on) from the service's answers to the split's queries."""
    from tqdm.auto import tqdm

    k = max(k, HUBNESS_K)
    check_gallery(client, split)
    probe = split.queries[: min(8, len(split.queries))]
    degen = {
        d.invgc: d.value
        for d in client.diagnostics_with_probes(probe, methods=["raw"]).degeneration
    }
    row_of = {gid: i for i, gid in enumerate(split.gallery_ids)}
    truth = [split.gallery_ids[t] for t in split.truth]
    m, n = split.queries.shape[0], len(split.gallery_ids)
    batches = list(row_blocks(m, batch_size))
    configs = [Config(method, "local" if invgc else "off") for invgc in degen for method in methods]
    rows = []
    with tqdm(
        total=len(configs) * len(batches), desc="evaluate", unit="batch", disable=not progress
    ) as bar:
        for config in configs:
            started = time.perf_counter()
            hits: list[list[str]] = []
            for sl in batches:
                answer = client.search(
                    split.queries[sl],
                    k=k,
                    method=config.method,
                    invgc=config.invgc != "off",  # type: ignore[arg-type]
                )
                hits.extend([hit.id for hit in result] for result in answer.results)
                bar.update(1)
            seconds = time.perf_counter() - started
            ranks = np.array(
                [
                    ids.index(t) + 1 if t in ids else np.inf
                    for ids, t in zip(hits, truth, strict=True)
                ]
            )
            top = np.fromiter((row_of[i] for ids in hits for i in ids[:HUBNESS_K]), np.int64)
            occurrence = k_occurrence(top, n)
            retrieval: dict[str, Any] = {
                key: _finite(value) if isinstance(value, float) else value
                for key, value in retrieval_quality(ranks).as_dict().items()
            }
            retrieval["cutoff"] = k  # MRR is MRR@k; median/mean rank None beyond k
            rows.append(
                Row(
                    config,
                    retrieval,
                    hubness(occurrence, HUBNESS_K, m).as_dict(),
                    degen[config.invgc != "off"],
                    None,
                    seconds,
                    occurrence,
                )
            )
    return rows
