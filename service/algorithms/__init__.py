"""Pure numpy algorithms: InvGC, DBNorm and friends, hubness metrics. No I/O, no web.

The public names are re-exported here; see each module's docstring for the maths.
"""

from service.algorithms.invgc import InvGCParams, invgc_adjust
from service.algorithms.metrics import (
    Degeneration,
    HubnessReport,
    RetrievalReport,
    RobustScale,
    TopHubs,
    degeneration,
    hubness,
    k_occurrence,
    occurrence_histogram,
    retrieval_quality,
    top_hubs,
)
from service.algorithms.normalisers import (
    METHODS,
    NORMALISERS,
    Normaliser,
    QueryPlan,
    get_normaliser,
)
from service.algorithms.planning import plan_for
from service.algorithms.scoring import dense_scores, plan_queries, ranks_of, search, top1_raw
from service.algorithms.stats import STAT_COLUMNS, BankTopK, NormParams, item_stats
from service.algorithms.validation import InputError, check_embeddings
from service.algorithms.views import (
    Banks,
    GalleryView,
    PreparedItems,
    adjusted_view,
    prepare_items,
)

__all__ = [
    "METHODS",
    "NORMALISERS",
    "STAT_COLUMNS",
    "BankTopK",
    "Banks",
    "Degeneration",
    "GalleryView",
    "HubnessReport",
    "InputError",
    "InvGCParams",
    "NormParams",
    "Normaliser",
    "PreparedItems",
    "QueryPlan",
    "RetrievalReport",
    "RobustScale",
    "TopHubs",
    "adjusted_view",
    "check_embeddings",
    "degeneration",
    "dense_scores",
    "get_normaliser",
    "hubness",
    "invgc_adjust",
    "item_stats",
    "k_occurrence",
    "occurrence_histogram",
    "plan_for",
    "plan_queries",
    "prepare_items",
    "ranks_of",
    "retrieval_quality",
    "search",
    "top1_raw",
    "top_hubs",
]
