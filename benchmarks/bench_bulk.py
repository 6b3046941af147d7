"""``hubless load`` into a Milvus server: items/s and peak RSS per worker, with 1 and 2 workers.

Writes an n × d float16 gallery (memory-mapped, streamed: never whole in memory), its ids and
two banks (benchmarks/export_large.py's generators), then for each worker count W runs W
``hubless load --shard I/W`` processes at once (one core each: ``OPENBLAS_NUM_THREADS=1``,
``--threads 1``) and the merge, each into its own collection prefix. A worker's peak RSS is
the ``peak_rss_mb`` it reports (its ``VmHWM``), so concurrent workers are measured apart.

Milvus: ``--milvus-uri`` of a running server, or (default) the C++ standalone embedded in the
PyPI package ``milvus==2.3.5`` (install it in your venv: not a project dependency), started and
stopped here. Its data directory goes under ``--workdir``, which is deleted afterwards.

    .venv/bin/python -m benchmarks.bench_bulk --rows 1000000          # the documented figures
    .venv/bin/python -m benchmarks.run --only bulk                    # 100,000 rows

Run it on a quiet machine, or under ``nice``: it keeps every core busy for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import Row, machine
from benchmarks.export_large import ROOT, tree_rss_kb, write_banks, write_gallery

#: too long for every full run, and it needs a Milvus server: ``--only bulk``
IN_DEFAULT_RUN = False
IN_QUICK_RUN = False
RUN_ROWS = 100_000


@dataclass(frozen=True)
class Worker:
    """One ``hubless load`` process: its summary line, wall time and peak resident set."""

    shard: str
    rows: int
    wall_seconds: float
    loop_rows_per_second: float  # the worker's own figure: chunks computed and written
    writing_seconds: float  # of the loop, waiting for Milvus to take the rows
    cpu_seconds: float  # the worker process's user + system time
    peak_rss_mb: float


@dataclass(frozen=True)
class Run:
    workers: list[Worker]
    wall_seconds: float  # first start to last exit
    merge_seconds: float
    milvus_rss_mb: float  # the server process tree after the load (embedded server only)
    milvus_cpu_seconds: float  # the server's CPU time during the load and merge (ditto)

    @property
    def rows(self) -> int:
        return sum(w.rows for w in self.workers)


@contextmanager
def embedded_milvus(base_dir: Path) -> Iterator[tuple[str, int]]:
    """The embedded Milvus 2.3.5 standalone: yields (URI, server pid)."""
    try:
        from milvus import default_server
    except ImportError:
        raise SystemExit(
            "bench_bulk: pip install 'milvus==2.3.5' into your venv, or give --milvus-uri"
        ) from None
    default_server.set_base_dir(str(base_dir))
    default_server.start()
    try:
        pid = default_server.server_proc.pid if default_server.server_proc else os.getpid()
        yield f"http://127.0.0.1:{default_server.listen_port}", pid
    finally:
        default_server.stop()


def _process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "load", *argv],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait(process: subprocess.Popen, started: float, into: dict[int, float]) -> None:
    process.wait()
    into[process.pid] = time.perf_counter() - started


def _summary(log: Path) -> dict:
    text = log.read_text(encoding="utf-8")
    return json.loads(text[text.index("{") : text.rindex("}") + 1])


def load(
    workdir: Path, env: dict[str, str], workers: int, chunk_rows: int, server_pid: int | None
) -> Run:
    """W workers at once, then the merge; each into the collections ``bulk<W>_*``."""
    state = workdir / f"state{workers}"
    env = {**env, "HUBLESS_MILVUS_COLLECTION": f"bulk{workers}"}
    server_cpu = cpu_seconds(server_pid)
    common = ["--state-dir", str(state), "--threads", "1", "--chunk-rows", str(chunk_rows)]
    started = time.perf_counter()
    logs = [workdir / f"worker{workers}-{i}.log" for i in range(workers)]
    processes = [
        _process(["--shard", f"{i}/{workers}", *common], env, log) for i, log in enumerate(logs)
    ]
    ended: dict[int, float] = {}
    waiters = [threading.Thread(target=_wait, args=(p, started, ended)) for p in processes]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    wall = time.perf_counter() - started
    results = []
    for process, log in zip(processes, logs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"{log}: exit {process.returncode}\n{log.read_text()[-3000:]}")
        summary = _summary(log)
        results.append(
            Worker(
                summary["shard"],
                summary["rows"],
                round(ended[process.pid], 1),
                summary["rows_per_second"],
                summary["writing_seconds"],
                summary["cpu_seconds"],
                summary["peak_rss_mb"],
            )
        )
    merge_log = workdir / f"merge{workers}.log"
    merge_started = time.perf_counter()
    merge = _process(["--merge", str(workers), "--state-dir", str(state)], env, merge_log)
    if merge.wait() != 0:
        raise RuntimeError(f"{merge_log}: exit {merge.returncode}\n{merge_log.read_text()}")
    merge_seconds = time.perf_counter() - merge_started
    milvus_mb = tree_rss_kb(server_pid) / 1024 if server_pid else float("nan")
    milvus_cpu = cpu_seconds(server_pid) - server_cpu
    return Run(results, round(wall, 1), round(merge_seconds, 1), round(milvus_mb, 1), milvus_cpu)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``; NaN without a pid)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(runs: dict[int, Run]) -> str:
    lines = [
        "| workers | rows | wall (all workers) | rows/s total | per worker: rows/s, rows per "
        "CPU-second, peak RSS | merge | Milvus: RSS after, CPU during |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for count, run in runs.items():
        each = "; ".join(
            f"{w.shard}: {w.loop_rows_per_second:,.0f}/s ({w.writing_seconds:,.0f} s writing), "
            f"{w.rows / w.cpu_seconds:,.0f}/CPU-s, {w.peak_rss_mb:,.0f} MB"
            for w in run.workers
        )
        lines.append(
            f"| {count} | {run.rows:,} | {run.wall_seconds:,.0f} s | "
            f"{run.rows / run.wall_seconds:,.0f} | {each} | {run.merge_seconds:.1f} s | "
            f"{run.milvus_rss_mb:,.0f} MB, {run.milvus_cpu_seconds:,.0f} s |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[int, Run]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--bank-rows", type=int, default=5000, help="rows of each bank")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--chunk-rows", type=int, default=8192, help="rows per chunk")
    parser.add_argument("--invgc", action="store_true", help="also the LocalAdj InvGC view")
    parser.add_argument("--milvus-uri", help="a running Milvus (default: start milvus 2.3.5)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench_bulk")
    parser.add_argument("--results", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[int, Run] = {}
    try:
        gallery, ids = args.workdir / "gallery.npy", args.workdir / "gallery_ids.txt"
        write_gallery(gallery, ids, args.rows, args.dim)
        banks = write_banks(args.workdir, args.bank_rows, args.dim)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")},
            "HUBLESS_GALLERY": str(gallery),
            "HUBLESS_GALLERY_IDS": str(ids),
            "HUBLESS_QUERY_BANK": str(banks[0]),
            "HUBLESS_GALLERY_BANK": str(banks[1]),
            "HUBLESS_INVGC": str(args.invgc).lower(),
            "OPENBLAS_NUM_THREADS": "1",
            "TQDM_DISABLE": "1",
        }
        with _milvus(args) as (uri, server_pid):
            env["HUBLESS_MILVUS_URI"] = uri
            for count in args.workers:
                runs[count] = load(args.workdir, env, count, args.chunk_rows, server_pid)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    views = "original + LocalAdj InvGC views" if args.invgc else "original view"
    header = (
        f"{args.rows:,} × {args.dim} float16 gallery, {args.bank_rows:,}-row banks, {views}, "
        f"chunks of {args.chunk_rows:,} rows; one core per worker; {machine()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(header)
    print(table(runs))
    if args.results is not None:
        payload = {"header": header, "table": table(runs)}
        payload["runs"] = {str(k): {**asdict(r), "rows": r.rows} for k, r in runs.items()}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return runs


@contextmanager
def _milvus(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    if args.milvus_uri:
        yield args.milvus_uri, None
        return
    with embedded_milvus(args.workdir / "milvus") as (uri, pid):
        yield uri, pid


def measure(quick: bool) -> list[Row]:
    """``benchmarks.run --only bulk``: RUN_ROWS rows, 1 and 2 workers."""
    runs = main(["--rows", str(RUN_ROWS)])
    rows = []
    for count, run in runs.items():
        per_worker = min(w.loop_rows_per_second for w in run.workers)
        peak = max(w.peak_rss_mb for w in run.workers)
        detail = f"{run.rows:,} rows in {run.wall_seconds:.0f} s; peak RSS/worker {peak:.0f} MB"
        rows.append(Row("bulk", f"{count} worker(s): rows/s per worker", per_worker, "rows/s"))
        rows.append(
            Row(
                "bulk",
                f"{count} worker(s): rows/s total",
                run.rows / run.wall_seconds,
                "rows/s",
                detail=detail,
            )
        )
    return rows


if __name__ == "__main__":
    main()
