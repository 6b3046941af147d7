"""/gallery: list, inspect and change the gallery (changes are atomic, durable and exact)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query

from service.algorithms import InputError
from service.api.convert import to_embeddings
from service.api.errors import error_responses
from service.api.jsonio import OrjsonRoute
from service.api.limits import check_items
from service.api.models import (
    ChangeResponse,
    DeleteRequest,
    GalleryItemDetail,
    GalleryPage,
    UpsertRequest,
)
from service.api.runtime import EngineDep, Runtime, RuntimeDep, require_read, require_write
from service.engine import ChangeResult

router = APIRouter(prefix="/gallery", tags=["gallery"], route_class=OrjsonRoute)
ERRORS = error_responses(400, 401, 404, 413, 422, 503)
WRITE_ERRORS = error_responses(400, 401, 403, 404, 413, 422, 503, 507)
F = TypeVar("F", bound=Callable[..., Any])


def _write_route(method: Callable[..., Callable[[F], F]], path: str) -> Callable[[F], F]:
    """A gallery change route: key required (and a writable replica), a ChangeResponse."""
    return method(
        path,
        response_model=ChangeResponse,
        responses=WRITE_ERRORS,
        dependencies=[Depends(require_write)],
    )


@router.get("", response_model=GalleryPage, responses=ERRORS, dependencies=[Depends(require_read)])
def list_items(
    engine: EngineDep,
    offset: Annotated[int, Query(ge=0, description="First item to return")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page")] = 100,
) -> dict:
    """A page of gallery ids and metadata, in gallery order, with the total count."""
    return engine.page(offset, limit)


@router.get(
    "/{item_id:path}",
    response_model=GalleryItemDetail,
    responses=ERRORS,
    dependencies=[Depends(require_read)],
)
def get_item(
    item_id: str,
    engine: EngineDep,
    embedding: Annotated[bool, Query(description="Include the normalised embedding")] = False,
) -> dict:
    """One item: metadata, its bank statistics on each view, optionally its embedding."""
    return engine.item(item_id, embedding)


def _changed(runtime: Runtime, result: ChangeResult) -> dict:
    metrics = runtime.metrics
    metrics.gallery_changes.labels("insert").inc(result.inserted)
    metrics.gallery_changes.labels("update").inc(result.updated)
    metrics.gallery_changes.labels("delete").inc(result.deleted)
    runtime.record_state()
    return {
        "version": result.version,
        "size": result.size,
        "inserted": result.inserted,
        "updated": result.updated,
        "deleted": result.deleted,
        "warnings": [
            {"id": w.id, "code": w.code, "bank_occurrence": w.bank_occurrence, "z": w.z}
            for w in result.warnings
        ],
    }


@_write_route(router.put, "")
def upsert(body: UpsertRequest, engine: EngineDep, runtime: RuntimeDep) -> dict:
    """Insert or replace a batch of items. All or nothing: on any error the gallery is
    unchanged. Every affected statistic is updated before the change becomes visible.
    New items are screened for adversarial hubs: suspects are listed in ``warnings``, or
    refused (422 ``suspected_hub``) with ``HUBLESS_HUB_POLICY=reject``."""
    embeddings = to_embeddings(
        [item.embedding for item in body.items],
        field="items[].embedding",
        dim=engine.dim,
        limit=runtime.settings.max_upsert,
    )
    ids = [item.id for item in body.items]
    metadata = [item.metadata for item in body.items]
    check_items(ids, metadata, runtime.settings)
    result = engine.upsert(ids, embeddings, metadata)
    return _changed(runtime, result)


def _delete(ids: list[str], engine: EngineDep, runtime: Runtime) -> dict:
    if len(ids) > runtime.settings.max_upsert:
        limit = runtime.settings.max_upsert
        raise InputError("ids", f"{len(ids)} ids in one request; the limit is {limit}")
    return _changed(runtime, engine.delete(ids))


@_write_route(router.post, "/delete")
def delete_many(body: DeleteRequest, engine: EngineDep, runtime: RuntimeDep) -> dict:
    """Delete a batch of items; if any id is unknown nothing is deleted (404)."""
    return _delete(body.ids, engine, runtime)


@_write_route(router.delete, "/{item_id:path}")
def delete_one(item_id: str, engine: EngineDep, runtime: RuntimeDep) -> dict:
    """Delete one item (404 if unknown)."""
    return _delete([item_id], engine, runtime)
