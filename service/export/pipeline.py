"""One export: chunks → sinks, activation sets merged on the way, then the JSON sidecar.

The sidecar tells a user with their own inner-product engine everything needed to query the
exported vectors: column layout, parameters, bank sizes, the per-method query recipe
(:func:`~service.algorithms.augment.method_recipes`) and where the activation sets are.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.algorithms import STAT_COLUMNS
from service.algorithms.augment import EXTRA_DIMS, method_recipes
from service.export.chunked import ActivationSets, ExportJob
from service.export.writers import LineSource, Sink, write_json

SIDECAR_FORMAT = "hubless-augmented-gallery/1"

QUERY_RECIPE = (
    "Search the vectors by inner product with [w*q, c] where q is the L2-normalised query, "
    "w = methods[m].similarity_weight and c = methods[m].coefficients in stat_columns order; "
    "add methods[m].offset to get the service's score. Dynamic methods (dis, dualdis) first "
    "search with [q, 0, 0, 0, 0], limit 1; a_Q / a_G = 1 if that top-1 id is in the activation "
    "file's query_bank / gallery_bank list, else 0; then multiply the lme_query_bank / "
    "lme_gallery_bank coefficient (and its share of the offset, c*log|bank|) by a_Q / a_G."
)


def export_gallery(
    job: ExportJob,
    ids: LineSource,
    metadata: LineSource | None,
    sinks: list[Sink],
    sidecar: Path,
    activation: Path,
) -> dict[str, Any]:
    """Compute every chunk of ``job``, write it to every sink, then the activation file and the
    sidecar; returns the sidecar's content (with timings)."""
    started = time.perf_counter()
    n, d = job.gallery.shape
    sets = ActivationSets(job.banks, job.norm.dis_topk)
    progress = tqdm(total=n, unit="rows", desc="export", disable=None)
    try:
        for chunk in job.chunks():
            rows = chunk.coords.shape[0]
            chunk_ids = ids.take(rows)
            chunk_meta = metadata.take(rows) if metadata is not None else None
            for sink in sinks:
                sink.write(chunk_ids, chunk.coords, chunk_meta)
            sets.add(chunk)
            progress.update(rows)
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    finally:
        progress.close()
    computed = time.perf_counter()
    outputs = [sink.finish() for sink in sinks]
    query_rows, gallery_rows = sets.rows()
    write_json(activation, activation_payload(ids, query_rows, gallery_rows, job.norm.dis_topk))
    payload = sidecar_payload(job, n, d, outputs, activation)
    payload["timing"] = {
        "compute_and_write_seconds": round(computed - started, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "rows_per_second": round(n / max(computed - started, 1e-9), 1),
        "chunk_rows": job.chunk_rows,
        "workers": job.workers,
    }
    write_json(sidecar, payload)
    return payload


def activation_payload(
    ids: LineSource, query_rows: np.ndarray, gallery_rows: np.ndarray, k: int
) -> dict[str, Any]:
    """Ids of the gallery items in A_BQ and A_BG (at most |bank|·k each)."""
    union = np.union1d(query_rows, gallery_rows)
    id_of = dict(zip(union.tolist(), ids.at(union), strict=True))
    return {
        "dis_topk": k,
        "query_bank": [id_of[r] for r in query_rows.tolist()],
        "gallery_bank": [id_of[r] for r in gallery_rows.tolist()],
    }


def sidecar_payload(
    job: ExportJob, n: int, d: int, outputs: list[dict[str, Any]], activation: Path
) -> dict[str, Any]:
    return {
        "format": SIDECAR_FORMAT,
        "rows": n,
        "embedding_dim": d,
        "vector_dim": d + EXTRA_DIMS,
        "view": job.view,
        "columns": {
            "id": "gallery id (string)",
            "vector": f"list<float32> of {d + EXTRA_DIMS}: the {job.view} embedding g "
            f"(L2-normalised, {d} floats) then stat(g) = {list(STAT_COLUMNS)}",
            "metadata": "JSON text per item, or null",
        },
        "stat_columns": list(STAT_COLUMNS),
        "metric": "inner product",
        "params": {
            "norm": asdict(job.norm),
            "invgc": asdict(job.invgc) if job.invgc is not None else None,
        },
        "bank_sizes": {"query_bank": job.banks.sizes[0], "gallery_bank": job.banks.sizes[1]},
        "methods": method_recipes(job.norm, job.banks.sizes),
        "query_vector": QUERY_RECIPE,
        "activation_file": activation.name,
        "outputs": outputs,
    }
