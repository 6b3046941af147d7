"""Load test and bad-input survey of a real ``hubless serve`` process, on loopback only.

    python benchmarks/load_test.py            # 30 s of load; rewrites docs/reliability.md, README
    python benchmarks/load_test.py --duration 10 --no-docs

Concurrent searches and gallery upserts run against one uvicorn process on 127.0.0.1; the run
is bounded in time and in request count and stops by itself. It measures latency (p50/p99) and
throughput, counts errors, and checks that no search response mixes two gallery versions: the
writers set designated *probe* items to exact copies of probe queries (or to their opposites)
in a different pattern at every version, and each search response's ``gallery_version`` must
explain, for every probe query in it, whether its probe item was found.

The server subprocess and the small galleries sliced from the bundled demo data are
:mod:`service.harness`, shared with ``tests/reliability`` and ``tests/deploy``; the bad-input
table and the load run here are checked by ``benchmarks/tests``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/load_test.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from service.algorithms import METHODS  # noqa: E402
from service.harness import (  # noqa: E402
    Server,
    demo_queries,
    normalised,
    write_gallery,
)

#: Files carrying the generated sections (the README shows the same tables as the docs page).
DOCS = (REPO_ROOT / "docs" / "reliability.md", REPO_ROOT / "README.md")

#: Small limits for the bad-input survey, so "too large" cases stay cheap to send.
SURVEY_LIMITS = {
    "HUBLESS_MAX_BODY_BYTES": str(1 << 20),
    "HUBLESS_MAX_QUERIES": "64",
    "HUBLESS_MAX_UPSERT": "64",
    "HUBLESS_MAX_K": "100",
    "HUBLESS_MAX_HITS": "5000",
}


# --- load -------------------------------------------------------------------------------------


@dataclass
class OpLog:
    """Latencies (seconds) and errors of one kind of request, shared by its threads."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, error: str | None = None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if error is not None:
                self.errors.append(error)

    def summary(self, elapsed: float) -> dict[str, float]:
        ms = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {
            "requests": len(self.latencies),
            "errors": len(self.errors),
            "per_second": len(self.latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()),
        }


@dataclass(frozen=True)
class Observation:
    """What one search response said about the probes: version, method, and per probe the
    similarity of its probe item if it was in the results (None if absent) and its rank."""

    version: int
    method: str
    found: tuple[tuple[float | None, int | None], ...]


@dataclass
class LoadReport:
    duration: float
    search: dict[str, float]
    upsert: dict[str, float]
    versions: int
    responses_checked: int
    inconsistencies: list[str]
    errors: list[str]
    config: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.inconsistencies


class LoadRun:
    """Searchers and writers against ``base_url`` until ``duration`` s or the request caps."""

    def __init__(
        self,
        base_url: str,
        *,
        duration: float,
        search_threads: int = 3,
        writer_threads: int = 1,
        probes: int = 8,
        extra_queries: int = 8,
        fillers: int = 32,
        api_key: str | None = None,
        max_requests: int = 200_000,
        seed: int = 0,
    ) -> None:
        self.base_url, self.duration, self.seed = base_url, duration, seed
        self.search_threads, self.writer_threads = search_threads, writer_threads
        self.fillers, self.max_requests = fillers, max_requests
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        queries = demo_queries(probes + extra_queries)
        self.probes = normalised(queries[:probes])
        self.query_body = queries.astype(float).tolist()  # probes first, then ordinary queries
        self.search_log, self.upsert_log = OpLog(), OpLog()
        self.patterns: dict[int, tuple[bool, ...]] = {}  # version -> probe j is +q_j?
        self.observations: list[Observation] = []
        self.lock = threading.Lock()
        self.requests = 0

    def _budget(self, deadline: float) -> bool:
        with self.lock:
            self.requests += 1
            return self.requests <= self.max_requests and time.monotonic() < deadline

    def _searcher(self, index: int, deadline: float) -> None:
        rng = np.random.default_rng((self.seed, 1, index))
        with httpx.Client(base_url=self.base_url, timeout=60.0, headers=self.headers) as client:
            while self._budget(deadline):
                method = METHODS[int(rng.integers(len(METHODS)))]
                body = {"queries": self.query_body, "k": 10, "method": method}
                body["invgc"] = bool(rng.integers(2))
                started = time.perf_counter()
                try:
                    response = client.post("/search", json=body)
                except httpx.HTTPError as exc:
                    self.search_log.record(time.perf_counter() - started, repr(exc))
                    continue
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    self.search_log.record(elapsed, f"{response.status_code} {response.text}")
                    continue
                self.search_log.record(elapsed)
                self._observe(response.json())

    def _observe(self, payload: dict[str, Any]) -> None:
        found = []
        for j, hits in enumerate(payload["results"][: len(self.probes)]):
            hit = next(((r, h) for r, h in enumerate(hits, 1) if h["id"] == f"probe-{j}"), None)
            found.append((hit[1]["similarity"], hit[0]) if hit else (None, None))
        observation = Observation(payload["gallery_version"], payload["method"], tuple(found))
        with self.lock:
            self.observations.append(observation)

    def _writer(self, index: int, deadline: float) -> None:
        rng = np.random.default_rng((self.seed, 2, index))
        dim = self.probes.shape[1]
        n = 0
        with httpx.Client(base_url=self.base_url, timeout=60.0, headers=self.headers) as client:
            while self._budget(deadline):
                pattern = tuple(bool(b) for b in rng.integers(0, 2, len(self.probes)))
                signs = np.where(pattern, 1.0, -1.0)[:, None]
                items = [
                    {"id": f"probe-{j}", "embedding": vector.tolist()}
                    for j, vector in enumerate((signs * self.probes).astype(float))
                ]
                fillers = rng.standard_normal((self.fillers, dim))
                items += [
                    {"id": f"fill-{index}-{(n + i) % 128}", "embedding": row.tolist()}
                    for i, row in enumerate(fillers)
                ]
                n += self.fillers
                started = time.perf_counter()
                try:
                    response = client.put("/gallery", json={"items": items})
                except httpx.HTTPError as exc:
                    self.upsert_log.record(time.perf_counter() - started, repr(exc))
                    continue
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    self.upsert_log.record(elapsed, f"{response.status_code} {response.text}")
                    continue
                self.upsert_log.record(elapsed)
                with self.lock:
                    self.patterns[response.json()["version"]] = pattern

    def _check(self, initial_version: int) -> list[str]:
        """Every observation against the probe pattern of the version it names."""
        problems = []
        expected_versions = set(
            range(initial_version + 1, initial_version + len(self.patterns) + 1)
        )
        if set(self.patterns) != expected_versions:
            problems.append(f"versions acknowledged {sorted(self.patterns)} are not consecutive")
        for obs in self.observations:
            pattern = self.patterns.get(obs.version)
            if obs.version == initial_version:
                pattern = None
            elif pattern is None:
                problems.append(f"response names version {obs.version}, never acknowledged")
                continue
            for j, (similarity, rank) in enumerate(obs.found):
                present = pattern is not None and pattern[j]
                if similarity is not None and (pattern is None or abs(similarity) < 0.999):
                    problems.append(f"v{obs.version} {obs.method}: probe-{j} unexpected")
                elif similarity is not None and (similarity > 0) != present:
                    problems.append(f"v{obs.version} {obs.method}: probe-{j} is the other version")
                elif obs.method == "raw" and present and rank != 1:
                    problems.append(f"v{obs.version} raw: exact copy probe-{j} at rank {rank}")
        return problems

    def run(self) -> LoadReport:
        with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
            initial_version = client.get("/readyz").json()["version"]
        load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        deadline = time.monotonic() + self.duration
        threads = [
            threading.Thread(target=self._searcher, args=(i, deadline), name=f"search-{i}")
            for i in range(self.search_threads)
        ] + [
            threading.Thread(target=self._writer, args=(i, deadline), name=f"write-{i}")
            for i in range(self.writer_threads)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        return LoadReport(
            duration=elapsed,
            search=self.search_log.summary(elapsed),
            upsert=self.upsert_log.summary(elapsed),
            versions=len(self.patterns),
            responses_checked=len(self.observations),
            inconsistencies=self._check(initial_version),
            errors=self.search_log.errors + self.upsert_log.errors,
            config={
                "search_threads": self.search_threads,
                "writer_threads": self.writer_threads,
                "queries_per_search": len(self.query_body),
                "items_per_upsert": len(self.probes) + self.fillers,
                "load_average_before": load_before,
            },
        )


# --- bad inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    """One bad request: what it is, how to send it, and the status it must get."""

    name: str
    method: str
    path: str
    expect: int
    body: Any = None  # JSON-encoded unless ``raw`` is given
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    authorised: bool = True  # send the API key

    def send(self, client: httpx.Client, key: str) -> httpx.Response:
        headers = {"content-type": "application/json"} | self.headers
        if self.authorised:
            headers.setdefault("authorization", f"Bearer {key}")
        content = self.raw if self.raw is not None else None
        if content is None and self.body is not None:
            content = json.dumps(self.body).encode()
        return client.request(self.method, self.path, content=content, headers=headers)


def bad_inputs(dim: int, known_id: str) -> list[BadInput]:
    """The survey: every kind of bad input a client can send, with the status it must get."""
    max_body = int(SURVEY_LIMITS["HUBLESS_MAX_BODY_BYTES"])
    v = [0.1] * dim
    item = {"id": "new-item", "embedding": v}
    rest = b", 0.1" * (dim - 1) + b"]}"

    def search(name: str, expect: int, body: Any = None, **kw: Any) -> BadInput:
        return BadInput(name, "POST", "/search", expect, body, **kw)

    def upsert(name: str, expect: int, *items: dict, **kw: Any) -> BadInput:
        return BadInput(f"upsert: {name}", "PUT", "/gallery", expect, {"items": list(items)}, **kw)

    def get(name: str, expect: int, path: str) -> BadInput:
        return BadInput(name, "GET", path, expect)

    def diagnose(name: str, expect: int, **body: Any) -> BadInput:
        return BadInput(
            f"diagnostics: {name}", "POST", "/diagnostics", expect, {"queries": [v]} | body
        )

    def with_metadata(raw_metadata: bytes) -> bytes:
        """An upsert body with this metadata, as raw JSON."""
        vector = b"[0.1" + rest[:-2] + b"]"
        return (
            b'{"items": [{"id": "odd", "embedding": '
            + vector
            + b', "metadata": '
            + (raw_metadata + b"}]}")
        )

    def nested(depth: int) -> bytes:
        """An upsert whose metadata nests ``depth`` levels (objects in objects)."""
        return with_metadata(b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1))

    return [
        search("wrong dimension", 422, {"query": v[:-1]}),
        search("ragged batch", 422, {"queries": [v, v[:-1]]}),
        search("NaN in a vector", 422, raw=b'{"query": [NaN' + rest),
        search("Infinity in a vector", 422, raw=b'{"query": [Infinity' + rest),
        search("value beyond float32 (1e39)", 422, {"query": [1e39, *v[1:]]}),
        search("zero vector", 422, {"query": [0.0] * dim}),
        search("empty batch", 422, {"queries": []}),
        search("both query and queries", 422, {"query": v, "queries": [v]}),
        search("neither query nor queries", 422, {"k": 3}),
        search("vector of strings", 422, {"query": ["a"] * dim}),
        search("k = 0", 422, {"query": v, "k": 0}),
        search("k above HUBLESS_MAX_K", 422, {"query": v, "k": 101}),
        search("k + offset above HUBLESS_MAX_K", 422, {"query": v, "offset": 95}),
        search("negative offset", 422, {"query": v, "offset": -1}),
        search("unknown method", 422, {"query": v, "method": "bm25"}),
        search("misspelt field", 422, {"query": v, "metod": "raw"}),
        search("too many queries", 422, {"queries": [v] * 65}),
        search("queries × k above HUBLESS_MAX_HITS", 422, {"queries": [v] * 64, "k": 100}),
        search("k as a string", 422, {"query": v, "k": "3"}),
        search("k as true", 422, {"query": v, "k": True}),
        search("invgc as a string", 422, {"query": v, "invgc": "yes"}),
        search(
            "body sent as text/plain", 415, {"query": v}, headers={"content-type": "text/plain"}
        ),
        search("texts without HUBLESS_ENCODER", 422, {"texts": ["extinct flying reptile"]}),
        search(
            "filter condition without match or range",
            422,
            {"query": v, "filter": {"must": [{"key": "lang"}]}},
        ),
        search(
            "filter range on a string",
            422,
            {"query": v, "filter": {"must": [{"key": "year", "range": {"gte": "2000"}}]}},
        ),
        search("unknown query_ids", 404, {"query_ids": ["no-such-id"]}),
        search("malformed JSON", 400, raw=b'{"query": [0.1,'),
        search("body not an object", 422, raw=b"[]"),
        search("empty body", 422, raw=b""),
        search(
            "body over HUBLESS_MAX_BODY_BYTES", 413, raw=b"[" + b"0.1, " * (max_body // 5) + b"0]"
        ),
        get("unknown path", 404, "/nope"),
        BadInput("unsupported HTTP method", "PATCH", "/search", 405, {"query": v}),
        upsert("empty items", 422),
        upsert("wrong dimension", 422, item | {"embedding": v[:-1]}),
        upsert("zero vector", 422, item | {"embedding": [0.0] * dim}),
        upsert("duplicate ids", 422, item, item),
        upsert("empty id", 422, item | {"id": ""}),
        upsert("id of 513 characters", 422, item | {"id": "x" * 513}),
        upsert("id with a line break", 422, item | {"id": "a\nb"}),
        upsert("id with a NUL character", 422, item | {"id": "a\u0000"}),
        upsert("metadata not an object", 422, item | {"metadata": [1]}),
        upsert("metadata nested 33 deep", 422, raw=nested(33)),
        upsert("metadata nested 950 deep", 422, raw=nested(950)),
        upsert("metadata nested 5000 deep", 400, raw=nested(5000)),
        upsert("lone surrogate in metadata", 422, raw=with_metadata(b'{"x": "\\udfff"}')),
        upsert("lone surrogate in a metadata key", 422, raw=with_metadata(b'{"\\ud800": 1}')),
        upsert(
            "metadata over HUBLESS_MAX_METADATA_BYTES",
            422,
            item | {"metadata": {"text": "x" * (64 * 1024)}},
        ),
        upsert("over HUBLESS_MAX_UPSERT", 422, *(item | {"id": f"i{i}"} for i in range(65))),
        upsert("no API key", 401, item, authorised=False),
        upsert("wrong API key", 401, item, headers={"authorization": "Bearer wrong"}),
        upsert("key in a Basic header", 401, item, headers={"authorization": "Basic a2V5"}),
        BadInput("snapshot: no API key", "POST", "/admin/snapshot", 401, authorised=False),
        get("get: unknown id", 404, "/gallery/no-such-id"),
        BadInput("delete: unknown id", "DELETE", "/gallery/no-such-id", 404),
        BadInput(
            "batch delete: one unknown id",
            "POST",
            "/gallery/delete",
            404,
            {"ids": [known_id, "no-such-id"]},
        ),
        BadInput("batch delete: empty list", "POST", "/gallery/delete", 422, {"ids": []}),
        BadInput(
            "batch delete: duplicate ids", "POST", "/gallery/delete", 422, {"ids": [known_id] * 2}
        ),
        get("list: unknown query parameter", 422, "/gallery?limt=5"),
        get("list: limit = 0", 422, "/gallery?limit=0"),
        get("list: limit = 1001", 422, "/gallery?limit=1001"),
        get("list: offset = -1", 422, "/gallery?offset=-1"),
        get("list: limit not a number", 422, "/gallery?limit=ten"),
        get("diagnostics: k = 0", 422, "/diagnostics?k=0"),
        get("diagnostics: k above HUBLESS_MAX_K", 422, "/diagnostics?k=101"),
        diagnose("truth_ids of the wrong length", 422, truth_ids=[]),
        diagnose("unknown truth id", 404, truth_ids=["no-such-id"]),
        diagnose("unknown method", 422, methods=["bm25"]),
        BadInput(
            "diagnostics: probes × k above HUBLESS_MAX_HITS",
            "POST",
            "/diagnostics",
            422,
            {"queries": [v] * 64, "k": 100},
        ),
    ]


def survey(client: httpx.Client, key: str, cases: list[BadInput]) -> list[dict[str, Any]]:
    """Send every case; one row per case with what came back."""
    rows = []
    for case in cases:
        response = case.send(client, key)
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {"code": "(not JSON)", "message": response.text[:120]}
        rows.append(
            {
                "case": case,
                "status": response.status_code,
                "code": error.get("code", ""),
                "message": error.get("message", ""),
            }
        )
    return rows


def _request_text(case: BadInput) -> str:
    if case.raw is not None:
        shown = case.raw if len(case.raw) <= 40 else case.raw[:30] + b"..."
        body = shown.decode()
    elif case.body is not None:
        body = json.dumps(case.body)
        if len(body) > 60:
            body = body[:50] + "..."
    else:
        body = ""
    return f"`{case.method} {case.path}` {body.replace('|', '/')}".strip()


def survey_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the survey (the docs carry it between markers)."""
    lines = ["| Input | Request | Status | Code | Message |", "|---|---|---|---|---|"]
    for row in rows:
        message = row["message"].replace("|", "/").replace("\n", " ")
        if len(message) > 140:
            message = message[:137] + "..."
        case = row["case"]
        lines.append(
            f"| {case.name} | {_request_text(case)} | {row['status']} | `{row['code']}` | "
            f"{message} |"
        )
    return "\n".join(lines)


# --- the docs ---------------------------------------------------------------------------------


def replace_section(text: str, name: str, content: str) -> str:
    """Replace what is between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}\n{end}{tail}"


def load_section(report: LoadReport, gallery_rows: int) -> str:
    rows = ["| Request | Count | Errors | Per second | p50 ms | p99 ms | max ms |"]
    rows.append("|---|---|---|---|---|---|---|")
    for name, s in (("search", report.search), ("upsert", report.upsert)):
        rows.append(
            f"| {name} | {s['requests']} | {s['errors']} | {s['per_second']:.1f} | "
            f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} |"
        )
    c = report.config
    return "\n".join(
        [
            f"Run of {report.duration:.1f} s on {os.cpu_count()} CPU cores (client and server on "
            f"the same machine), demo gallery of {gallery_rows} items (384-d), banks of 2000: "
            f"{c['search_threads']} search threads ({c['queries_per_search']} queries per "
            f"request, k = 10, method and InvGC view drawn at random) and "
            f"{c['writer_threads']} writer thread ({c['items_per_upsert']} items per upsert). "
            f"The machine's 1-minute load average was {c['load_average_before']:.1f} before the "
            "run (other work shares it), so these figures are a floor, not a capacity plan.",
            "",
            *rows,
            "",
            f"Gallery versions written: {report.versions}; search responses checked for version "
            f"consistency: {report.responses_checked}; inconsistent responses: "
            f"{len(report.inconsistencies)}; errors: {len(report.errors)}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--gallery-rows", type=int, default=2000, help="demo gallery rows")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the docs")
    parser.add_argument("--workdir", type=Path, help="where data and logs go (default: tmp)")
    parser.add_argument(
        "--survey-only", action="store_true", help="only the bad-input survey (and its table)"
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        tmp = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="hubless-"))
        workdir = Path(tmp)
        key = "load-test-key"
        env = write_gallery(workdir / "input", rows=args.gallery_rows, bank_rows=2000)
        report = None
        if not args.survey_only:
            with Server(workdir / "data", env | {"HUBLESS_API_KEY": key}) as server:
                report = LoadRun(server.url, duration=args.duration, api_key=key).run()
        with Server(workdir / "survey", env | SURVEY_LIMITS | {"HUBLESS_API_KEY": key}) as server:
            ids = (workdir / "input" / "gallery_ids.txt").read_text().split()
            with httpx.Client(base_url=server.url, timeout=60.0) as client:
                rows = survey(client, key, bad_inputs(384, ids[0]))
    if report is not None:
        summary = {k: v for k, v in vars(report).items() if k != "inconsistencies"}
        print(json.dumps(summary, indent=2))
        for problem in report.inconsistencies[:20]:
            print("INCONSISTENT:", problem)
    print(survey_table(rows))
    if not args.no_docs:
        for doc in DOCS:
            text = doc.read_text(encoding="utf-8")
            if report is not None:
                text = replace_section(text, "load-test", load_section(report, args.gallery_rows))
            text = replace_section(text, "bad-inputs", survey_table(rows))
            doc.write_text(text, encoding="utf-8")
            print(f"wrote {doc.relative_to(REPO_ROOT)}")
    return 0 if report is None or report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
