"""One gallery item as ``GET /gallery/{id}`` shows it (shared by both engines)."""

from __future__ import annotations

import numpy as np

from service.algorithms import STAT_COLUMNS
from service.algorithms.stats import log_bank_sizes


def item_stats(stats: np.ndarray, activated: np.ndarray, bank_sizes: tuple[int, int]) -> dict:
    """An item's bank statistics on one view from its stat columns (len(STAT_COLUMNS),) and its
    activation flags (in A_BQ, in A_BG): log Z per bank (the stored log-mean-exp + log |bank|)."""
    values = dict(zip(STAT_COLUMNS, np.asarray(stats, np.float64).tolist(), strict=True))
    log_sizes = log_bank_sizes(bank_sizes)
    return {
        "log_z_query_bank": values["lme_query_bank"] + float(log_sizes[0]),
        "log_z_gallery_bank": values["lme_gallery_bank"] + float(log_sizes[1]),
        "nnn_mean": values["nnn_mean"],
        "csls_mean": values["csls_mean"],
        "in_query_bank_activation": bool(activated[0]),
        "in_gallery_bank_activation": bool(activated[1]),
    }


def page_body(version: int, total: int, offset: int, limit: int, items: list[dict]) -> dict:
    """``GET /gallery``'s answer: ``items`` ({"id", "metadata"}) from ``offset`` of ``total``."""
    return {"version": version, "total": total, "offset": offset, "limit": limit, "items": items}
