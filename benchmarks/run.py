"""Run the benchmark suite and print one table of ratios measured in one run.

    python -m benchmarks.run [--quick] [--only NAME ...] [--json OUT] [--markdown OUT]

Every module ``benchmarks/bench_*.py`` defines ``measure(quick: bool) -> list[Row]``; ``NAME``
is the part after ``bench_`` (``--only search precompute``). ``--quick`` uses small sizes (a
smoke test of a few seconds); the full run uses the sizes of issue 6. A module that fails to
import or raises becomes an error row, so one broken benchmark never hides the others.

Threads: nothing is pinned here. BLAS (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``) and FAISS
(OpenMP) use every core by default; the thread counts in effect are printed with the table.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import Row, machine, table

BENCH_DIR = Path(__file__).resolve().parent
_OPENBLAS_THREADS = (
    "openblas_get_num_threads",
    "scipy_openblas_get_num_threads64_",
    "openblas_get_num_threads64_",
)


def available() -> list[str]:
    """Names of the benchmark modules (``bench_<name>.py``), sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def blas_threads() -> str:
    """The BLAS and OpenMP thread counts in effect (and the environment that set them)."""
    parts = []
    for lib in _loaded_openblas():
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for symbol in _OPENBLAS_THREADS:  # scipy-openblas (numpy's wheels) prefixes its symbols
            if hasattr(handle, symbol):
                parts.append(f"{Path(lib).name}: {getattr(handle, symbol)()} threads")
                break
    try:
        import faiss

        parts.append(f"faiss OpenMP: {faiss.omp_get_max_threads()} threads")
    except ImportError:
        pass
    env = [
        f"{v}={os.environ[v]}"
        for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
        if v in os.environ
    ]
    return "; ".join(parts + (env or ["OPENBLAS_NUM_THREADS/OMP_NUM_THREADS unset"]))


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (numpy's, FAISS's)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()}
    return sorted(p for p in paths if p.startswith("/"))


def run_module(name: str, quick: bool, chosen: bool = False) -> list[Row]:
    """``bench_<name>.measure(quick)``, or one error row if it cannot run.

    A module with ``IN_DEFAULT_RUN = False`` (too long for every full run) runs only when
    ``chosen`` by ``--only`` or in a quick run; one with ``IN_QUICK_RUN = False`` as well
    (no quick form, e.g. it needs a server) only when ``chosen``.
    """
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        wanted = getattr(module, "IN_QUICK_RUN", True) if quick else None
        if not (chosen or wanted or (wanted is None and getattr(module, "IN_DEFAULT_RUN", True))):
            print(f"# {name}: skipped (run it with --only {name})", file=sys.stderr)
            return []
        rows = list(module.measure(quick))
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc(file=sys.stderr)
        return [Row(name, "error", float("nan"), "", detail=f"{type(exc).__name__}: {exc}")]
    print(f"# {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"of {', '.join(available())}")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="write the table")
    args = parser.parse_args(argv)
    names = available()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; have {', '.join(names)}")
        names = [n for n in names if n in args.only]

    chosen = set(args.only or ())
    rows = [row for name in names for row in run_module(name, args.quick, name in chosen)]
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [f"Machine: {machine()}", f"Threads: {blas_threads()}", f"Command: {command.strip()}"]
    text = "\n".join(header) + "\n\n" + table(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        payload = {"header": header, "quick": args.quick, "rows": [r.as_dict() for r in rows]}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 1 if any(r.name == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
