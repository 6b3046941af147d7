"""Start a RemoteEngine: connect, take the lease (writer), load or recover, follow (reader)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict

from service.algorithms import Banks, InputError, check_embeddings
from service.engine.loading import DataError, file_digest, load_embeddings, load_ids
from service.remote.engine import RemoteEngine
from service.remote.follow import Follower
from service.remote.lease import Lease
from service.remote.store import ORIGINAL, RemoteStore
from service.settings import Settings

log = logging.getLogger(__name__)


def fingerprint(settings: Settings, dim: int) -> str:
    """What the stored rows and bank state depend on: the bank files and the parameters.
    Every process on one collection must agree on it (a reader with other banks would serve
    other scores)."""
    bq, bg = settings.bank_paths()
    invgc = settings.invgc_params() if settings.invgc else None
    params = {
        "dim": dim,
        "banks": file_digest(bq, bg),
        "norm": asdict(settings.norm_params()),
        "invgc": asdict(invgc) if invgc else None,
        "hub_k": settings.hub_screening().k,
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]


def remote_store(settings: Settings, dim: int) -> RemoteStore:
    """The store the settings name (also what the bulk load writes through)."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
    return RemoteStore(
        settings.milvus_uri or str(settings.data_dir / "milvus.db"),
        token,
        settings.milvus_collection,
        dim,
        index=settings.milvus_index,
        fingerprint=fingerprint(settings, dim),
    )


def load_banks(settings: Settings) -> Banks:
    bq, bg = settings.bank_paths()
    assert bq is not None  # the live query bank is refused with the milvus backend
    try:
        query_bank = check_embeddings(load_embeddings(bq), field=str(bq))
        gallery_bank = check_embeddings(load_embeddings(bg), field=str(bg), dim=query_bank.shape[1])
    except InputError as exc:
        raise DataError(str(exc)) from None
    return Banks(query_bank, gallery_bank.astype(query_bank.dtype, copy=False))


def load_remote_engine(settings: Settings) -> RemoteEngine:
    """The engine of ``HUBLESS_BACKEND=milvus``: ready once the bank state is loaded."""
    started = time.perf_counter()
    banks = load_banks(settings)
    store = remote_store(settings, banks.dim)
    invgc = settings.invgc_params() if settings.invgc else None
    engine = RemoteEngine(
        store,
        banks,
        settings.norm_params(),
        invgc,
        settings.hub_screening(),
        read_only=settings.milvus_read_only,
    )
    banks.dbsn(engine.norm)  # DBSN's v, solved from the bank files as the writer does
    if settings.milvus_read_only:
        _wait_for_writer(store, settings.milvus_poll_seconds)
        _check_fingerprint(store)
        engine.refresh()
        engine.follower = Follower(engine, settings.milvus_poll_seconds)
        engine.follower.start()
    else:
        store.ensure(engine.views)
        engine.lease = Lease(store, settings.milvus_lease_seconds)
        engine.lease.acquire()
        if store.version() is None:
            _load_gallery_files(engine, settings)
        _check_fingerprint(store)
        engine.recover()
        engine.refresh()
    log.info(
        "remote engine ready",
        extra={
            "role": "reader" if settings.milvus_read_only else "writer",
            "version": engine.version,
            "gallery": engine.size,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return engine


def _wait_for_writer(store: RemoteStore, seconds: float) -> None:
    """A reader started before the writer committed anything waits (503 on /readyz)."""
    logged = False
    while not store.exists() or store.version() is None:
        if not logged:
            log.warning("waiting for the writer to create the Milvus collections")
            logged = True
        time.sleep(seconds)


def _check_fingerprint(store: RemoteStore) -> None:
    committed = store.version()
    if committed is not None and committed.fingerprint != store.fingerprint:
        raise DataError(
            f"Milvus collections {store.prefix}_* were built with other banks or parameters "
            f"(fingerprint {committed.fingerprint}, these settings give {store.fingerprint}): "
            "use the same bank files and HUBLESS_* parameters, or another HUBLESS_MILVUS_COLLECTION"
        )


def _load_gallery_files(engine: RemoteEngine, settings: Settings) -> None:
    """The writer's first start on empty collections: the gallery files become version 1."""
    from service.engine.startup import load_metadata

    path = settings.gallery_path()
    raw = load_embeddings(path)
    ids = tuple(load_ids(settings.gallery_ids_path(), raw.shape[0]))
    metadata = load_metadata(settings.gallery_metadata, ids)
    try:
        gallery = check_embeddings(raw, field=str(path), dim=engine.dim)
    except InputError as exc:
        raise DataError(str(exc)) from None
    log.info("loading the gallery files into Milvus", extra={"size": len(ids)})
    engine.load_gallery(ids, gallery, metadata)
    assert engine.store.count(ORIGINAL) == len(ids)
