"""Screening new gallery items for adversarial hubs (SPEC.md, "Hubs and adversarial hubs").

A vector close to most queries (e.g. the normalised mean of a query bank) enters the top-k of
most of them. Its query-bank k-occurrence under raw scores, how many bank queries have it in
their current top-k, is an outlier among the gallery items' k-occurrences: a robust z-score
(HubScan's rule: ``(N_k − median) / (1.4826·MAD)``) above a threshold flags it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.algorithms.metrics import RobustScale
from service.algorithms.validation import check_count, check_positive


@dataclass(frozen=True)
class HubScreening:
    """k: neighbourhood of the query-bank k-occurrence (raw cosine, original gallery).
    z: robust z-score above which a new item is a suspected hub. reject: refuse such a change
    (else warn)."""

    k: int = 10
    z: float = 25.0  # README, "Adversarial hubs": demo items reach 14.7, the attack 336
    reject: bool = False

    def __post_init__(self) -> None:
        check_count("hub_k", self.k)
        check_positive("hub_z", self.z)


@dataclass(frozen=True)
class Suspects:
    """The screened rows above the threshold, their k-occurrence and robust z."""

    rows: np.ndarray
    occurrence: np.ndarray
    z: np.ndarray


def suspected_hubs(
    occurrence: np.ndarray, rows: np.ndarray, threshold: float, live: np.ndarray | None = None
) -> Suspects:
    """Which of ``rows`` have a robust z of their k-occurrence above ``threshold``, the z being
    against ``occurrence`` (n,), every gallery item's (the screened rows included; only the
    ``live`` rows (n,) bool if given: dead rows are no items)."""
    z = RobustScale.of(occurrence if live is None else occurrence[live]).z(occurrence[rows])
    above = z > threshold
    return Suspects(rows[above], occurrence[rows[above]], z[above])
