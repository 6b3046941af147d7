"""``hubless load``: the sharded bulk load into Milvus (:mod:`service.remote.bulk`).

    hubless load --shard I/N --state-dir DIR     # worker I of N (any order, any machine)
    hubless load --merge N --state-dir DIR       # once all N are done: the bank-side state

Settings (gallery, ids, banks, parameters, Milvus) come from ``HUBLESS_*`` variables and
``--env-file``, exactly as for ``hubless serve``; workers and merge must see the same ones (the
merge checks). Exit status 2 for bad arguments, 1 when the load cannot run (a missing file,
settings that do not fit, partial states that do not belong together), each with one line on
stderr.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from service.backends.base import BackendUnavailable
from service.export.commands import add_chunk_arguments

#: how often ``--merge N --wait S`` looks for the partial states
WAIT_POLL_SECONDS = 5.0
#: creating/loading the collections: tries, and the pause between them
SINK_ATTEMPTS = 4
SINK_RETRY_SECONDS = 2.0


def register(subparsers: Any) -> None:
    """Add the ``load`` sub-command to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "load",
        help="bulk-load a big gallery into Milvus: --shard I/N workers, then --merge N",
        description=(
            "Worker I of N (--shard I/N) computes the augmented rows [g, stat(g)] of its slice "
            "of the memory-mapped gallery (and the LocalAdj InvGC view's), upserts them into "
            "Milvus and saves its partial bank-side state in --state-dir. --merge N reduces the "
            "N partial states and commits the load (bank-side state, version, size). Workers "
            "are independent and restartable. Settings come from HUBLESS_* and --env-file."
        ),
    )
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--shard", metavar="I/N", help="be worker I of N (0 <= I < N)")
    role.add_argument("--merge", type=int, metavar="N", help="merge the N workers' states")
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory (shared by workers and merge) of the partial states",
    )
    parser.add_argument(
        "--version",
        type=int,
        default=1,
        help="gallery version the rows are written as and the merge commits (default 1)",
    )
    parser.add_argument("--env-file", type=Path, help="a file of HUBLESS_* settings")
    parser.add_argument(
        "--metadata",
        type=Path,
        help="JSON lines, one value (or empty line) per gallery row, in row order",
    )
    add_chunk_arguments(parser, "--threads")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="--merge: wait up to this long for the workers' partial states (default: no wait)",
    )
    parser.set_defaults(func=run_load)


def run_load(args: argparse.Namespace) -> int:
    """Run a worker or the merge; prints a JSON summary on stdout."""
    from service.remote.bulk import BulkError, Shard

    try:
        shard = Shard.parse(args.shard) if args.shard is not None else None
        if args.merge is not None and args.merge < 1:
            raise BulkError(f"--merge N needs N >= 1, got {args.merge}")
        if args.version < 1 or args.wait < 0:
            raise BulkError("--version must be >= 1 and --wait >= 0")
    except BulkError as exc:
        return _fail(exc, 2)
    try:
        summary = _run(args, shard)
    except (BulkError, BackendUnavailable, ValueError, OSError) as exc:
        return _fail(exc, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    process = {
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps({**summary, **process}, indent=2))
    return 0


def peak_rss_mb() -> float:
    """This process's peak resident set, in MB: ``VmHWM`` (``ru_maxrss`` would include the
    parent's peak: Linux carries it across the ``exec`` of a spawned child)."""
    try:
        status = Path("/proc/self/status").read_text()
        return round(int(status.split("VmHWM:")[1].split()[0]) / 1024, 1)
    except (OSError, IndexError, ValueError):  # not Linux
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _fail(exc: Exception, status: int) -> int:
    message = " ".join(str(exc).split())  # one line, whatever the cause printed
    print(f"hubless load: {message}", file=sys.stderr)
    return status


def _run(args: argparse.Namespace, shard: Any) -> dict[str, Any]:
    from service.algorithms import Banks
    from service.export.chunked import MappedGallery
    from service.export.writers import LineSource
    from service.io import load_embeddings
    from service.remote.bulk import BulkError, BulkJob, load_shard, merged_state, partial_name
    from service.settings import Settings

    settings = Settings(_env_file=args.env_file)  # type: ignore[call-arg]
    if settings.gallery_metadata is not None and args.metadata is None:
        raise BulkError(
            "HUBLESS_GALLERY_METADATA is keyed by id and would need the whole gallery's ids in "
            "memory: give the metadata in row order with --metadata FILE.jsonl"
        )
    bq_path, bg_path = settings.bank_paths()
    if bq_path is None:
        raise BulkError("the load needs a query-bank file (HUBLESS_QUERY_BANK)")
    gallery_path = settings.gallery_path()
    if not gallery_path.is_file():
        raise BulkError(f"{gallery_path}: no such file")
    banks = Banks.from_arrays(load_embeddings(bq_path), load_embeddings(bg_path))
    job = BulkJob(
        MappedGallery(gallery_path),
        banks,
        settings.norm_params(),
        settings.invgc_params() if settings.invgc else None,
        settings.hub_screening().k,
        chunk_rows=args.chunk_rows,
        threads=args.threads,
    )
    # every local input is checked before Milvus is touched
    if shard is None:
        names = [partial_name(i, args.merge) for i in range(args.merge)]
        _wait_for(args.state_dir, names, args.wait)
        merged = merged_state(job, args.merge, args.state_dir, args.version)
        return {"merged_shards": args.merge, **merged.commit(open_store(settings, job))}
    ids = LineSource(settings.gallery_ids_path(), job.size)
    metadata = LineSource(args.metadata, job.size, "metadata") if args.metadata else None
    sink = open_store(settings, job)
    return load_shard(job, shard, ids, metadata, sink, args.state_dir, args.version)


def _wait_for(directory: Path, names: list[str], seconds: float) -> None:
    """Return once every file exists, or after ``seconds`` (the merge then names the missing)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all((directory / name).is_file() for name in names):
            return
        time.sleep(min(WAIT_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def open_store(settings: Any, job: Any) -> Any:
    """The remote store the service with these settings uses, its collections created."""
    from service.remote.startup import remote_store

    store = remote_store(settings, job.banks.dim)
    attempt = 1
    while True:
        try:
            store.ensure(job.views)
            return store
        except BackendUnavailable:
            # workers start together: one may find a collection another is still indexing
            if attempt == SINK_ATTEMPTS:
                raise
            attempt += 1
            time.sleep(SINK_RETRY_SECONDS)
