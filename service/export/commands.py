"""``hubless export``: write the bias-augmented gallery to Parquet, for any inner-product engine.

Reads the gallery and the banks the settings name (``HUBLESS_GALLERY`` …, ``--env-file``),
computes ``[g, stat(g)]`` for every item in parallel chunks (bounded memory, see
:mod:`service.export.chunked`) and writes:

- ``--out DIR``: ``DIR/gallery.parquet``, ``DIR/gallery.json`` (the sidecar: columns, params,
  query recipes) and ``DIR/activation.json`` (the dynamic methods' activation sets);

Loading the service's own Milvus collections (``HUBLESS_BACKEND=milvus``) is ``hubless load``
(:mod:`service.remote.bulk_cli`), which writes the rows and the bank-side state the service reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.export.chunked import DEFAULT_CHUNK_ROWS


def register(subparsers: Any) -> None:
    """Add the ``export`` sub-command to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "export",
        help="export the bias-augmented gallery [g, stat(g)] to Parquet (Milvus: hubless load)",
        description=(
            "Compute each gallery item's augmented coordinates [g, stat(g)] (every method is an "
            "inner product with [w*q, c(q)]) in parallel chunks from a memory-mapped .npy, and "
            "write them to a Parquet file, with a JSON sidecar telling how to build query "
            "vectors for each method. Settings (gallery, banks, parameters) come from HUBLESS_* "
            "variables and --env-file, as for `hubless serve`. To load the service's Milvus "
            "collections (HUBLESS_BACKEND=milvus) use `hubless load` instead."
        ),
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for gallery.parquet and the sidecar"
    )
    parser.add_argument("--format", choices=["parquet"], default="parquet", help="file format")
    parser.add_argument(
        "--invgc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the InvGC-adjusted view (default: HUBLESS_INVGC) or the original one",
    )
    parser.add_argument("--env-file", type=Path, help="a file of HUBLESS_* settings")
    add_chunk_arguments(parser, "--workers")
    parser.add_argument(
        "--metadata", type=Path, help="JSON lines, one object (or empty line) per gallery row"
    )
    parser.set_defaults(func=run_export)


def add_chunk_arguments(parser: argparse.ArgumentParser, parallel: str) -> None:
    """``--chunk-rows`` and ``parallel`` (chunks computed at once, on threads): the two factors
    of a chunked command's memory bound."""
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help=f"gallery rows per chunk (default {DEFAULT_CHUNK_ROWS}); "
        f"memory ~ rows x {parallel.lstrip('-')}",
    )
    parser.add_argument(
        parallel,
        type=int,
        default=os.cpu_count() or 1,
        help="chunks computed in parallel (threads; default: CPU count)",
    )


def run_export(args: argparse.Namespace) -> int:
    """Run the export the parsed arguments describe; prints the sidecar's summary as JSON."""
    from service.algorithms import STAT_COLUMNS, Banks, InputError
    from service.export.chunked import ExportJob, MappedGallery
    from service.export.pipeline import export_gallery
    from service.export.writers import LineSource, ParquetSink, Sink
    from service.io import DataError, load_embeddings
    from service.settings import Settings

    if args.chunk_rows < 1 or args.workers < 1:
        print("hubless export: --chunk-rows and --workers must be >= 1", file=sys.stderr)
        return 2
    settings = Settings(_env_file=args.env_file)  # type: ignore[call-arg]
    sinks: list[Sink] = []
    try:
        bq_path, bg_path = settings.bank_paths()
        if bq_path is None:
            raise InputError("query_bank", "export needs a query-bank file (HUBLESS_QUERY_BANK)")
        banks = Banks.from_arrays(load_embeddings(bq_path), load_embeddings(bg_path))
        gallery = MappedGallery(settings.gallery_path())
        use_invgc = settings.invgc if args.invgc is None else args.invgc
        job = ExportJob(
            gallery,
            banks,
            settings.norm_params(),
            settings.invgc_params() if use_invgc else None,
            chunk_rows=args.chunk_rows,
            workers=args.workers,
        )
        n, d = gallery.shape
        if d != banks.dim:
            raise InputError("gallery", f"expected dimension {banks.dim}, got {d}")
        ids = LineSource(settings.gallery_ids_path(), n)
        metadata = LineSource(args.metadata, n, "metadata") if args.metadata else None
        sinks.append(ParquetSink(args.out / "gallery.parquet", d + len(STAT_COLUMNS)))
        sidecar, activation = args.out / "gallery.json", args.out / "activation.json"
        payload = export_gallery(job, ids, metadata, sinks, sidecar, activation)
    except (DataError, InputError, OSError) as exc:
        for sink in sinks:
            sink.abort()
        print(f"hubless export: {exc}", file=sys.stderr)
        return 2
    summary = {key: payload[key] for key in ("rows", "vector_dim", "view", "outputs", "timing")}
    print(json.dumps({"sidecar": str(sidecar), **summary}, indent=2))
    return 0
