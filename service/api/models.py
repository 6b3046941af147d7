"""Request and response models: the OpenAPI schema is generated from these, so they are exact."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.settings import Method

#: strict: JSON numbers only (lax mode would turn "0.5" and true into 0.5 and 1.0)
Vector = list[Annotated[float, Field(strict=True)]]


class Strict(BaseModel):
    """Unknown fields are errors: a typo such as ``"metod"`` must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- search ---------------------------------------------------------------------------------


class SearchRequest(Strict):
    queries: list[Vector] | None = Field(
        None, description="Query embeddings, one list per query (any scale; L2-normalised here)"
    )
    query: Vector | None = Field(None, description="A single query (instead of `queries`)")
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

    def batch(self) -> list[Vector]:
        return self.queries if self.queries is not None else [self.query]  # type: ignore[list-item]


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

    @field_validator("metadata")
    @classmethod
    def _json_compliant(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # NaN/Infinity literals parse, but could only be returned as null: not "as is"
        try:
            json.dumps(value, allow_nan=False)
        except ValueError:
            raise ValueError("must not contain NaN or infinity (JSON has neither)") from None
        return value


class UpsertRequest(Strict):
    items: list[GalleryItemIn] = Field(min_length=1, description="Items to insert or replace")


class DeleteRequest(Strict):
    ids: list[str] = Field(min_length=1, description="Ids to delete; all must exist")


class ChangeResponse(BaseModel):
    version: int = Field(description="Gallery version after the change")
    size: int = Field(description="Gallery size after the change")
    inserted: int
    updated: int
    deleted: int


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
    queries: list[Vector] = Field(min_length=1, description="Probe query embeddings")
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


class MethodDiagnosticsOut(BaseModel):
    method: Method
    invgc: bool
    hubness: HubnessOut
    retrieval: RetrievalOut | None


class DegenerationOut(BaseModel):
    """Δdeg: mean similarity of ``items`` gallery items to their nearest other item."""

    invgc: bool
    value: float
    items: int
    gallery_size: int


class LiveQueryBankOut(BaseModel):
    size: int = Field(description="Rows in the query bank: the file's, then served queries")
    pending: int = Field(description="Served queries not applied yet")
    version: int = Field(description="Bank version: +1 per refresh that changed its rows")


class DiagnosticsResponse(BaseModel):
    version: int
    gallery_size: int
    probe_source: str = Field(description="'query_bank' (a sample of it) or 'request'")
    degeneration: list[DegenerationOut]
    methods: list[MethodDiagnosticsOut]
    live_query_bank: LiveQueryBankOut | None = Field(
        None, description="The live query bank (null when HUBLESS_LIVE_QUERY_BANK is off)"
    )


# --- operations -----------------------------------------------------------------------------


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="'ready', 'starting' or 'failed'")
    detail: str | None = None
    gallery_size: int | None = None
    version: int | None = None


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
