"""Request and response models: the OpenAPI schema is generated from these, so they are exact."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from service.settings import Method

#: strict: JSON numbers only (lax mode would turn "0.5" and true into 0.5 and 1.0)
Vector = list[Annotated[float, Field(strict=True)]]
_VECTOR, _VECTORS = TypeAdapter(Vector), TypeAdapter(list[Vector])
#: The query vectors of searches and diagnostics: documented as (lists of) ``Vector`` but
#: validated by :func:`checked_vectors` in the worker thread, since validating 1024 × 384
#: numbers holds the event loop (and so the probes) for tens of milliseconds.
LaterVector = Annotated[Any, WithJsonSchema(_VECTOR.json_schema())]
LaterVectors = Annotated[Any, WithJsonSchema(_VECTORS.json_schema())]
LaterProbes = Annotated[Any, WithJsonSchema(_VECTORS.json_schema() | {"minItems": 1})]


def checked_vectors(value: Any, field: str, *, single: bool = False) -> list[list[float]]:
    """``value`` validated as ``Vector`` (``single``) or ``list[Vector]``, as a list of rows;
    errors are the request's usual 422, located at ``field``."""
    try:
        if single:
            return [_VECTOR.validate_python(value)]
        return _VECTORS.validate_python(value)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", field, *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


class Strict(BaseModel):
    """Unknown fields are errors: a typo such as ``"metod"`` must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- search ---------------------------------------------------------------------------------


class SearchRequest(Strict):
    queries: LaterVectors | None = Field(
        None, description="Query embeddings, one list per query (any scale; L2-normalised here)"
    )
    query: LaterVector | None = Field(None, description="A single query (instead of `queries`)")
    k: int | None = Field(None, ge=1, description="Results per query (default 10)")
    method: Method | None = Field(None, description="Normalisation method (default: configured)")
    offset: int = Field(0, ge=0, description="Skip this many top results (paging)")
    score_threshold: float | None = Field(
        None, allow_inf_nan=False, description="Drop results whose normalised score is below this"
    )
    invgc: bool | None = Field(
        None, description="Search the InvGC-adjusted gallery (default: configured HUBLESS_INVGC)"
    )

    @model_validator(mode="after")
    def _one_of(self) -> SearchRequest:
        if (self.queries is None) == (self.query is None):
            raise ValueError("give exactly one of 'queries' (a list of vectors) or 'query'")
        return self

    def batch(self) -> list[list[float]]:
        """The queries, validated (call it in the worker thread)."""
        if self.queries is not None:
            return checked_vectors(self.queries, "queries")
        return checked_vectors(self.query, "query", single=True)

    @property
    def size(self) -> int:
        """How many queries (before validation: 1 for anything but a list of them)."""
        return len(self.queries) if isinstance(self.queries, list) else 1


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="Normalised score of the method (SPEC.md); higher is better")
    similarity: float = Field(description="Raw cosine to the original (unadjusted) gallery item")
    rank: int = Field(description="1-based rank, offset included")


class SearchResponse(BaseModel):
    method: Method
    invgc: bool
    k: int
    offset: int
    gallery_version: int = Field(description="Gallery version every result was computed on")
    results: list[list[SearchHit]] = Field(description="One list per query, best first")


# --- gallery --------------------------------------------------------------------------------


class GalleryItemIn(Strict):
    id: str = Field(min_length=1, max_length=512, description="Unique id of the item")
    embedding: Vector = Field(description="The item's embedding (L2-normalised on entry)")
    metadata: dict[str, Any] | None = Field(None, description="Any JSON object, returned as is")

    # NaN/Infinity literals parse, but could only be returned as null: not "as is". That,
    # depth, size and UTF-8 are checked (iteratively) by service.api.limits.check_items


class UpsertRequest(Strict):
    items: list[GalleryItemIn] = Field(min_length=1, description="Items to insert or replace")


class DeleteRequest(Strict):
    ids: list[str] = Field(min_length=1, description="Ids to delete; all must exist")


class HubWarning(BaseModel):
    """A new item that the upsert screening suspects of being a hub (SPEC.md, "Hubs")."""

    id: str
    code: Literal["suspected_hub"]
    bank_occurrence: int = Field(
        description="Query-bank items (raw cosine) with this item in their top-HUBLESS_HUB_K"
    )
    z: float = Field(
        description="Robust z of bank_occurrence against every gallery item's (zeros included)"
    )


class ChangeResponse(BaseModel):
    version: int = Field(description="Gallery version after the change")
    size: int = Field(description="Gallery size after the change")
    inserted: int
    updated: int
    deleted: int
    warnings: list[HubWarning] = Field(
        default_factory=list,
        description="New items whose robust z exceeds HUBLESS_HUB_Z (policy 'warn'); else []",
    )


class GalleryItemOut(BaseModel):
    id: str
    metadata: dict[str, Any] | None


class GalleryPage(BaseModel):
    version: int
    total: int
    offset: int
    limit: int
    items: list[GalleryItemOut]


class ItemStats(BaseModel):
    """The item's bank statistics on one view (see SPEC.md)."""

    log_z_query_bank: float
    log_z_gallery_bank: float
    nnn_mean: float
    csls_mean: float
    in_query_bank_activation: bool
    in_gallery_bank_activation: bool


class GalleryItemDetail(GalleryItemOut):
    version: int
    embedding: Vector | None = Field(None, description="Normalised embedding, if asked for")
    stats: ItemStats
    invgc_stats: ItemStats | None = Field(None, description="Statistics on the InvGC view")


# --- diagnostics ----------------------------------------------------------------------------


class DiagnosticsRequest(Strict):
    queries: LaterProbes = Field(description="Probe query embeddings")
    truth_ids: list[str] | None = Field(
        None, description="True gallery id of each probe, for R@k, ranks and MRR"
    )
    k: int | None = Field(None, ge=1, description="Neighbourhood size of the hubness metrics")
    methods: list[Method] | None = Field(None, description="Methods to diagnose (default: all)")


class HubnessOut(BaseModel):
    """Computed over ``probes`` queries, top-``k`` each, against all ``gallery_size`` items."""

    k: int
    probes: int
    gallery_size: int
    skewness: float = Field(description="Skewness of k-occurrence over all gallery items")
    robin_hood: float = Field(description="Share of occurrences to move to equalise")
    gini: float = Field(description="Gini coefficient of k-occurrence")
    antihub_rate: float = Field(description="Share of gallery items in no top-k")
    hub_occurrence: float = Field(
        description="Share of the probes·k slots taken by hubs (N_k ≥ 2k)"
    )
    max_occurrence_ratio: float = Field(description="Largest k-occurrence / probes")


class RetrievalOut(BaseModel):
    """Over ``queries`` probes with known true items."""

    queries: int
    r1: float
    r5: float
    r10: float
    median_rank: float
    mean_rank: float
    mrr: float


class OccurrenceHistogramOut(BaseModel):
    """Bin i counts gallery items with ``edges[i] ≤ N_k < edges[i+1]`` (zeros included); edges
    are 0 then powers of two, the last one above the largest N_k."""

    edges: list[int]
    counts: list[int]


class HubOut(BaseModel):
    id: str
    occurrence: int = Field(description="k-occurrence N_k: probes with this item in their top-k")
    z: float = Field(description="Robust z-score (N_k − median) / scale")
    metadata: dict[str, Any] | None


class TopHubsOut(BaseModel):
    """The items of largest k-occurrence (best first, at most HUBLESS_DIAGNOSTICS_TOP_HUBS).

    median and mad are over all gallery items' N_k (zeros included); scale = 1.4826·mad, or
    1.0 when mad is 0, so z is always finite.
    """

    median: float
    mad: float
    scale: float
    items: list[HubOut]


class MethodDiagnosticsOut(BaseModel):
    method: Method
    invgc: bool
    hubness: HubnessOut
    retrieval: RetrievalOut | None
    occurrence_histogram: OccurrenceHistogramOut
    top_hubs: TopHubsOut


class DegenerationOut(BaseModel):
    """Δdeg: mean similarity of ``items`` gallery items to their nearest other item."""

    invgc: bool
    value: float
    items: int
    gallery_size: int


class BankSizesOut(BaseModel):
    query_bank: int
    gallery_bank: int


class LiveQueryBankOut(BaseModel):
    """The live query bank (HUBLESS_LIVE_QUERY_BANK): rows, rows not yet applied, version."""

    size: int
    pending: int
    version: int


class DiagnosticsResponse(BaseModel):
    version: int
    gallery_size: int
    probe_source: str = Field(description="'query_bank' (a sample of it) or 'request'")
    bank_sizes: BankSizesOut
    live_query_bank: LiveQueryBankOut | None = Field(
        description="null unless HUBLESS_LIVE_QUERY_BANK is on"
    )
    degeneration: list[DegenerationOut]
    methods: list[MethodDiagnosticsOut]


# --- operations -----------------------------------------------------------------------------


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="'ready', 'starting' or 'failed'")
    detail: str | None = None
    gallery_size: int | None = None
    version: int | None = None


class Info(BaseModel):
    """What the service is; cheap enough to poll (no diagnostics computed)."""

    name: str
    version: str = Field(description="hubless package version")
    dim: int = Field(description="Embedding dimension")
    methods: list[Method] = Field(description="Methods a search may name")
    default_method: Method
    invgc: bool = Field(description="Whether the InvGC gallery is built (HUBLESS_INVGC)")
    gallery_size: int
    gallery_version: int = Field(description="Changes on every gallery change")
    encoder: str | None = Field(
        None, description="Text encoder for `texts` queries; null: embeddings only"
    )
    auth_reads: bool = Field(description="Whether reads need the API key (HUBLESS_AUTH_READS)")


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
