"""``hubless export`` of a gallery larger than it should ever hold: peak memory and wall time.

Writes a memory-mapped ``.npy`` gallery (default 2,000,000 × 384 float16, 1.5 GB) chunk by
chunk — never the whole array in memory — with its ids file and two banks, then runs
``hubless export --out DIR`` (Parquet) in a subprocess under ``/usr/bin/time -v`` and reports
the export's peak resident set and wall time (loading Milvus is ``hubless load``, measured by
``benchmarks/bench_bulk.py``). Everything is written under ``--workdir`` and deleted afterwards
unless ``--keep``.

    .venv/bin/python -m benchmarks.export_large                      # the documented figures
    .venv/bin/python -m benchmarks.export_large --rows 200000 --chunk-rows 8192

The rows are a mixture of clusters plus noise (unit norm): some structure, so the bank scans
and top-k selections do realistic work; the memory figure does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GENERATE_ROWS = 65536
CLUSTERS = 1024
TIME_BINARY = "/usr/bin/time"


def _mixture(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """(n, d) unit float32 rows: a random centre each, plus as much isotropic noise."""
    d = centres.shape[1]
    rows = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, d), np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _centres(d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, d), np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True) * np.sqrt(d, dtype=np.float32)


def write_gallery(path: Path, ids_path: Path, n: int, d: int, seed: int = 0) -> None:
    """Stream an (n, d) float16 ``.npy`` and its ids ``item-<row>``, one chunk in memory."""
    centres = _centres(d, seed)
    rng = np.random.default_rng(seed + 1)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)), "fortran_order": False}
    with path.open("wb") as out, ids_path.open("w", encoding="utf-8") as ids:
        np.lib.format.write_array_header_1_0(out, {**header, "shape": (n, d)})
        for start in range(0, n, GENERATE_ROWS):
            rows = min(GENERATE_ROWS, n - start)
            out.write(_mixture(rng, centres, rows).astype(np.float16).tobytes())
            ids.write("".join(f"item-{i}\n" for i in range(start, start + rows)))


def write_banks(directory: Path, n: int, d: int, seed: int = 0) -> tuple[Path, Path]:
    """Query and gallery banks (float32), drawn from the gallery's mixture."""
    centres = _centres(d, seed)
    paths = directory / "query_bank.npy", directory / "gallery_bank.npy"
    for offset, path in enumerate(paths):
        np.save(path, _mixture(np.random.default_rng(seed + 2 + offset), centres, n))
    return paths


class TreeRss:
    """Polls the summed resident set of a process and its descendants (Linux ``/proc``)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.pid))


def tree_rss_kb(root: int) -> int:
    """VmRSS of ``root`` and every descendant, in kB (0 for processes gone meanwhile)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    total = 0
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(match.group(1)) if match else 0
    return total


@dataclass(frozen=True)
class Measurement:
    """One export run: what was exported, how long it took and its peak memory."""

    label: str
    rows: int
    command: str
    wall_seconds: float
    peak_rss_mb: float  # the export process (``/usr/bin/time -v``, else getrusage)
    peak_tree_rss_mb: float  # export + any child processes, polled
    gallery_mb: float
    output_mb: float
    summary: dict


def run_export(label: str, env: dict[str, str], args: list[str], gallery: Path) -> Measurement:
    """Run ``hubless export ARGS`` in a subprocess and measure it."""
    command = [sys.executable, "-m", "service.cli", "export", *args]
    timed = Path(TIME_BINARY).exists()
    if timed:
        command = [TIME_BINARY, "-v", *command]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **env, "TQDM_DISABLE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with TreeRss(process.pid) as tree:
        stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"export failed ({process.returncode}):\n{stderr[-4000:]}")
    if timed:
        peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    else:  # Linux reports kB; this process waited for no other child
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads(stdout[stdout.index("{") :])
    out_bytes = sum(Path(o["parquet"]).stat().st_size for o in summary["outputs"] if "parquet" in o)
    shown = " ".join(f"{k}={v}" for k, v in env.items()) + " hubless export " + " ".join(args)
    return Measurement(
        label,
        summary["rows"],
        shown,
        round(wall, 1),
        round(peak_kb / 1024, 1),
        round(max(tree.peak_kb, peak_kb) / 1024, 1),
        round(gallery.stat().st_size / 2**20, 1),
        round(out_bytes / 2**20, 1),
        summary,
    )


def prepare(workdir: Path, name: str, rows: int, dim: int, banks: tuple[Path, Path]) -> dict:
    """Write an ``rows``-row gallery under ``workdir/name``; the settings that serve it."""
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    gallery, ids = directory / "gallery.npy", directory / "gallery_ids.txt"
    write_gallery(gallery, ids, rows, dim)
    return {
        "HUBLESS_GALLERY": str(gallery),
        "HUBLESS_GALLERY_IDS": str(ids),
        "HUBLESS_QUERY_BANK": str(banks[0]),
        "HUBLESS_GALLERY_BANK": str(banks[1]),
        "HUBLESS_DATA_DIR": str(directory / "var"),
    }


def table(results: list[Measurement]) -> str:
    lines = [
        "| run | rows | gallery file | output | wall time | peak RSS (export) | "
        "peak RSS (with children) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        rate = m.rows / m.wall_seconds
        lines.append(
            f"| {m.label} | {m.rows:,} | {m.gallery_mb:,.0f} MB | {m.output_mb:,.0f} MB | "
            f"{m.wall_seconds:,.0f} s ({rate:,.0f} rows/s) | {m.peak_rss_mb:,.0f} MB | "
            f"{m.peak_tree_rss_mb:,.0f} MB |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[Measurement]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="gallery rows (Parquet run)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--bank-rows", type=int, default=5000, help="rows of each bank")
    parser.add_argument("--chunk-rows", type=int, default=32768)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "export_large")
    parser.add_argument("--results", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    common = ["--chunk-rows", str(args.chunk_rows), "--workers", str(args.workers)]
    results: list[Measurement] = []
    try:
        banks = write_banks(args.workdir, args.bank_rows, args.dim)
        env = prepare(args.workdir, "parquet", args.rows, args.dim, banks)
        out = args.workdir / "parquet" / "out"
        gallery = Path(env["HUBLESS_GALLERY"])
        results.append(run_export("parquet", env, ["--out", str(out), *common], gallery))
        gallery.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    report = table(results)
    print(
        f"{args.bank_rows:,}-row banks, chunks of {args.chunk_rows:,} rows, "
        f"{args.workers} workers, {os.cpu_count()} CPUs"
    )
    print(report)
    for m in results:
        print(f"{m.label}: {m.command}")
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "table": report}
        payload["runs"] = [asdict(m) for m in results]
        args.results.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
