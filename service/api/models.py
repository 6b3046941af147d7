"""Request and response models: the OpenAPI schema is generated from these, so they are exact."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
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
    """Unknown fields are errors: a typo such as ``"metod"`` must not be silently ignored. And
    strict types: ``"k": true`` or ``"k": "3"`` or ``"invgc": "yes"`` are refused, not coerced
    (JSON has a type for each; a client sending another one has a bug to hear about)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- search ---------------------------------------------------------------------------------


#: a metadata value a condition compares with (strict: "1" is not 1, true is not 1)
Scalar = (
    Annotated[str, Field(strict=True)]
    | Annotated[bool, Field(strict=True)]
    | Annotated[int, Field(strict=True)]
    | Annotated[float, Field(strict=True, allow_inf_nan=False)]
)
#: keep a filter cheap to validate and to match: at most this many conditions, this deep
MAX_FILTER_CONDITIONS, MAX_FILTER_DEPTH, MAX_MATCH_ANY = 64, 4, 1024


class MatchValue(Strict):
    value: Scalar = Field(description="Equal to this (a list-valued field: any element)")


class MatchAny(Strict):
    any: list[Scalar] = Field(
        min_length=1, max_length=MAX_MATCH_ANY, description="Equal to one of these (`in`)"
    )


class Range(Strict):
    gt: float | None = Field(None, allow_inf_nan=False)
    gte: float | None = Field(None, allow_inf_nan=False)
    lt: float | None = Field(None, allow_inf_nan=False)
    lte: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounded(self) -> Range:
        if all(v is None for v in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("give at least one of gt, gte, lt, lte")
        return self


def _entry_kind(value: Any) -> str:
    """A filter entry with a ``key`` is a condition, otherwise a nested filter (so an error
    names what is wrong with the one the client meant, not with both readings)."""
    if isinstance(value, dict):
        return "Condition" if "key" in value else "Filter"
    return type(value).__name__  # a validated model (when serialising)


def _match_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "MatchAny" if "any" in value else "MatchValue"
    return type(value).__name__


class Condition(Strict):
    """One field condition: ``match`` (equality or ``any``) or ``range`` (numbers only)."""

    key: str = Field(
        min_length=1, max_length=256, description="Metadata key; dots walk into nested objects"
    )
    match: (
        Annotated[
            Annotated[MatchValue, Tag("MatchValue")] | Annotated[MatchAny, Tag("MatchAny")],
            Discriminator(_match_kind),
        ]
        | None
    ) = None
    range: Range | None = None

    @model_validator(mode="after")
    def _one(self) -> Condition:
        if (self.match is None) == (self.range is None):
            raise ValueError("give exactly one of 'match' or 'range'")
        return self


class Filter(Strict):
    """Qdrant-style boolean filter on item metadata (README "Filters"): every ``must`` entry
    holds, one ``should`` entry holds if any are given, no ``must_not`` entry holds."""

    must: list[FilterEntry] | None = None
    should: list[FilterEntry] | None = None
    must_not: list[FilterEntry] | None = None

    @model_validator(mode="after")
    def _small(self) -> Filter:
        conditions, depth = _size(self)
        if conditions > MAX_FILTER_CONDITIONS:
            raise ValueError(f"{conditions} conditions; the limit is {MAX_FILTER_CONDITIONS}")
        if depth > MAX_FILTER_DEPTH:
            raise ValueError(f"nested {depth} deep; the limit is {MAX_FILTER_DEPTH}")
        return self


FilterEntry = Annotated[
    Annotated[Condition, Tag("Condition")] | Annotated[Filter, Tag("Filter")],
    Discriminator(_entry_kind),
]
Filter.model_rebuild()


def _size(node: Filter) -> tuple[int, int]:
    """(conditions, nesting depth) of a filter."""
    count, depth = 0, 1
    for entry in (*(node.must or ()), *(node.should or ()), *(node.must_not or ())):
        if isinstance(entry, Filter):
            sub_count, sub_depth = _size(entry)
            count, depth = count + sub_count, max(depth, sub_depth + 1)
        else:
            count += 1
    return count, depth


class SearchRequest(Strict):
    queries: LaterVectors | None = Field(
        None, description="Query embeddings, one list per query (any scale; L2-normalised here)"
    )
    query: LaterVector | None = Field(None, description="A single query (instead of `queries`)")
    query_ids: list[str] | None = Field(
        None,
        min_length=1,
        description="Search with these gallery items' stored embeddings (more like this)",
    )
    texts: list[str] | None = Field(
        None,
        min_length=1,
        description="Query texts, embedded by the configured encoder (HUBLESS_ENCODER)",
    )
    k: int | None = Field(None, ge=1, description="Results per query (default 10)")
    method: Method | None = Field(None, description="Normalisation method (default: configured)")
    offset: int = Field(0, ge=0, description="Skip this many top results (paging)")
    score_threshold: float | None = Field(
        None, allow_inf_nan=False, description="Drop results whose normalised score is below this"
    )
    invgc: bool | None = Field(
        None, description="Search the InvGC-adjusted gallery (default: configured HUBLESS_INVGC)"
    )
    filter: Filter | None = Field(
        None, description="Only items whose metadata passes this filter (README: Filters)"
    )
    with_metadata: bool = Field(False, description="Put each hit's metadata in the hit")

    @model_validator(mode="after")
    def _one_of(self) -> SearchRequest:
        given = [n for n in QUERY_FIELDS if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(map(repr, QUERY_FIELDS))}")
        return self

    @property
    def query_field(self) -> str:
        return next(n for n in QUERY_FIELDS if getattr(self, n) is not None)

    def batch(self) -> list[list[float]]:
        """The query vectors, validated (call it in the worker thread)."""
        if self.queries is not None:
            return checked_vectors(self.queries, "queries")
        return checked_vectors(self.query, "query", single=True)

    @property
    def size(self) -> int:
        """How many queries (before validation: 1 for a single vector, or anything not a list)."""
        given = getattr(self, self.query_field)
        return len(given) if self.query_field != "query" and isinstance(given, list) else 1


#: the ways a search names its queries (exactly one per request)
QUERY_FIELDS = ("queries", "query", "query_ids", "texts")


class SearchHit(BaseModel):
    id: str
    score: float = Field(
        description="Normalised score of the method (docs/spec.md); higher is better"
    )
    similarity: float = Field(description="Raw cosine to the original (unadjusted) gallery item")
    rank: int = Field(description="1-based rank, offset included")
    metadata: dict[str, Any] | None = Field(
        None, description="The item's metadata (present only with `with_metadata: true`)"
    )


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
    ids: list[str] = Field(min_length=1, description="Ids to delete; all must exist, each once")

    @field_validator("ids")
    @classmethod
    def _unique(cls, ids: list[str]) -> list[str]:
        dupes = sorted(i for i, count in Counter(ids).items() if count > 1)
        if dupes:  # as PUT refuses them: a client repeating an id has a bug to hear about
            raise ValueError(f"duplicate ids: {dupes[:10]}")
        return ids


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
    """The item's bank statistics on one view (see docs/spec.md)."""

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
    queries: LaterProbes | None = Field(None, description="Probe query embeddings")
    texts: list[str] | None = Field(
        None, min_length=1, description="Probe query texts (needs HUBLESS_ENCODER)"
    )
    truth_ids: list[str] | None = Field(
        None, description="True gallery id of each probe, for R@k, ranks and MRR"
    )
    k: int | None = Field(None, ge=1, description="Neighbourhood size of the hubness metrics")
    methods: list[Method] | None = Field(None, description="Methods to diagnose (default: all)")

    @model_validator(mode="after")
    def _one_of(self) -> DiagnosticsRequest:
        if (self.queries is None) == (self.texts is None):
            raise ValueError("give exactly one of 'queries' or 'texts'")
        return self


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
    size: int = Field(description="Rows in the query bank: the file's, then served queries")
    pending: int = Field(description="Served queries not applied yet")
    version: int = Field(description="Bank version: +1 per refresh that changed its rows")


class DiagnosticsResponse(BaseModel):
    version: int
    gallery_size: int
    probe_source: str = Field(description="'query_bank' (a sample of it) or 'request'")
    bank_sizes: BankSizesOut
    live_query_bank: LiveQueryBankOut | None = Field(
        None, description="The live query bank (null when HUBLESS_LIVE_QUERY_BANK is off)"
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
