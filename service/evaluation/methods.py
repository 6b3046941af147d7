"""The configurations an evaluation compares, and the dataset splits they run on.

A configuration is a normalisation method (``service.algorithms.METHODS``) searched on one
gallery variant: the original gallery, the InvGC LocalAdj gallery or the InvGC full-adjacency
gallery. Keys are what ``--methods`` takes (``raw``, ``dualis``, ``invgc``, ``invgc+dualis``…).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.algorithms import METHODS, check_embeddings

Variant = Literal["off", "local", "full"]

METHOD_LABELS = {
    "raw": "raw",
    "is": "IS",
    "dis": "DIS",
    "dualis": "DualIS",
    "dualdis": "DualDIS",
    "nnn": "NNN",
    "csls": "CSLS",
    "dbsn": "DBSN",
}


@dataclass(frozen=True)
class Config:
    """One row of the results: ``method`` scored on the ``invgc`` gallery variant."""

    method: str
    invgc: Variant = "off"

    @property
    def key(self) -> str:
        if self.invgc == "off":
            return self.method
        prefix = "invgc" if self.invgc == "local" else "invgc-full"
        return prefix if self.method == "raw" else f"{prefix}+{self.method}"

    @property
    def label(self) -> str:
        if self.invgc == "off":
            return METHOD_LABELS[self.method]
        prefix = "InvGC LocalAdj" if self.invgc == "local" else "InvGC full"
        return prefix if self.method == "raw" else f"{prefix} + {METHOD_LABELS[self.method]}"


NORMALISING = tuple(m for m in METHODS if m != "raw")
#: raw, InvGC full, InvGC LocalAdj, each normaliser, then InvGC (LocalAdj) with each normaliser.
DEFAULT_CONFIGS: tuple[Config, ...] = (
    Config("raw"),
    Config("raw", "full"),
    Config("raw", "local"),
    *(Config(m) for m in NORMALISING),
    *(Config(m, "local") for m in NORMALISING),
)
CONFIGS_BY_KEY = {c.key: c for c in DEFAULT_CONFIGS} | {
    c.key: c for c in (Config(m, "full") for m in NORMALISING)
}


def parse_configs(spec: str | None) -> tuple[Config, ...]:
    """Configurations from a comma-separated list of keys (``None`` or ``all``: the default)."""
    if spec is None or spec.strip() in ("", "all"):
        return DEFAULT_CONFIGS
    configs = []
    for key in (k.strip().lower() for k in spec.split(",")):
        if key not in CONFIGS_BY_KEY:
            known = ", ".join(CONFIGS_BY_KEY)
            raise ValueError(f"unknown configuration {key!r}; expected some of: {known}")
        if CONFIGS_BY_KEY[key] not in configs:
            configs.append(CONFIGS_BY_KEY[key])
    return tuple(configs)


@dataclass(frozen=True)
class Split:
    """Queries with the gallery row of each one's true item: one evaluation problem.

    queries: (m, d), gallery: (n, d), both L2-normalised float32; truth: (m,) row indices.
    """

    name: str
    queries: np.ndarray
    gallery: np.ndarray
    gallery_ids: list[str]
    truth: np.ndarray

    @classmethod
    def from_arrays(
        cls,
        name: str,
        queries: np.ndarray,
        gallery: np.ndarray,
        gallery_ids: list[str],
        truth_ids: list[str],
    ) -> Split:
        """Normalise the embeddings and map each true id to its gallery row."""
        rows = {gid: i for i, gid in enumerate(gallery_ids)}
        missing = [t for t in truth_ids if t not in rows]
        if missing:
            raise ValueError(
                f"{name}: {len(missing)} true ids not in the gallery, e.g. {missing[0]!r}"
            )
        gallery = check_embeddings(gallery, field=f"{name} gallery")
        queries = check_embeddings(queries, field=f"{name} queries", dim=gallery.shape[1])
        truth = np.fromiter((rows[t] for t in truth_ids), np.int64, len(truth_ids))
        return cls(name, queries, gallery, list(gallery_ids), truth)
