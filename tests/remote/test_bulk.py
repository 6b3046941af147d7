"""The sharded bulk load: N workers + merge equal one worker exactly (rows and bank-side state),
the merged state is the exact top-k (slow reference), a rerun of a shard changes nothing, the
merge refuses partial states that do not belong together, and ``hubless load`` fails in one
line with the right status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.algorithms import Banks, InvGCParams, NormParams, check_embeddings, prepare_items
from service.algorithms.augment import view_coordinates
from service.cli import main
from service.export.chunked import MappedGallery
from service.export.writers import LineSource
from service.remote.bulk import (
    BulkError,
    BulkJob,
    MemorySink,
    Shard,
    load_shard,
    merge_shards,
)
from service.remote.store import GALLERY, INVGC, ORIGINAL, QUERY
from service.settings import DEMO_DIR

N_GALLERY, N_BANK, CHUNK = 700, 300, 64  # 11 chunks, the last one short
NORM = NormParams(nnn_topk=16, dis_topk=2)
HUB_K = 5
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float16 gallery (as a big one would be stored), ids, JSON-lines metadata, banks."""
    root = tmp_path_factory.mktemp("bulk")
    paths = {name: root / name for name in ("g.npy", "ids.txt", "meta.jsonl", "qb.npy", "gb.npy")}
    np.save(paths["g.npy"], np.load(DEMO_DIR / "gallery.npy")[:N_GALLERY].astype(np.float16))
    ids = (DEMO_DIR / "gallery_ids.txt").read_text(encoding="utf-8").splitlines()[:N_GALLERY]
    paths["ids.txt"].write_text("\n".join(ids) + "\n", encoding="utf-8")
    meta = [json.dumps({"row": r}) if r % 3 else "" for r in range(N_GALLERY)]
    paths["meta.jsonl"].write_text("\n".join(meta) + "\n", encoding="utf-8")
    np.save(paths["qb.npy"], np.load(DEMO_DIR / "query_bank.npy")[:N_BANK])
    np.save(paths["gb.npy"], np.load(DEMO_DIR / "gallery_bank.npy")[-N_BANK:])
    return paths


@pytest.fixture(scope="module")
def banks(data: dict[str, Path]) -> Banks:
    return Banks.from_arrays(np.load(data["qb.npy"]), np.load(data["gb.npy"]))


def _job(data: dict[str, Path], banks: Banks, invgc: InvGCParams | None, **kw: int) -> BulkJob:
    return BulkJob(MappedGallery(data["g.npy"]), banks, NORM, invgc, HUB_K, CHUNK, **kw)


def _load(
    data: dict[str, Path],
    job: BulkJob,
    count: int,
    state_dir: Path,
    order: list[int] | None = None,
    sink: MemorySink | None = None,
) -> MemorySink:
    """Run every shard of ``count`` (in ``order``) and the merge into one in-memory sink."""
    sink = sink or MemorySink()
    for index in order if order is not None else range(count):
        ids = LineSource(data["ids.txt"], N_GALLERY)
        meta = LineSource(data["meta.jsonl"], N_GALLERY, "metadata")
        load_shard(job, Shard(index, count), ids, meta, sink, state_dir, version=3)
    merge_shards(job, count, sink, state_dir, version=3)
    return sink


def _assert_same(a: MemorySink, b: MemorySink) -> None:
    assert a.rows.keys() == b.rows.keys() and a.version == b.version
    for view, rows in a.rows.items():
        assert rows.keys() == b.rows[view].keys()
        for item, (coords, meta, seq) in rows.items():
            other = b.rows[view][item]
            assert np.array_equal(coords, other[0]) and (meta, seq) == other[1:], item
    assert a.bank_state.keys() == b.bank_state.keys()
    for key, (ids, sims) in a.bank_state.items():
        assert np.array_equal(ids, b.bank_state[key][0]), key
        assert np.array_equal(sims, b.bank_state[key][1]), key


INVGC_CASES = [None, InvGCParams()]


@pytest.mark.parametrize("invgc", INVGC_CASES, ids=["original", "localadj"])
def test_shards_and_merge_equal_one_worker_exactly(data, banks, invgc, tmp_path) -> None:
    job = _job(data, banks, invgc)
    one = _load(data, job, 1, tmp_path / "one")
    assert one.version == (3, N_GALLERY)
    assert set(one.rows) == ({ORIGINAL} if invgc is None else {ORIGINAL, INVGC})
    widths = {(ORIGINAL, QUERY): HUB_K, (ORIGINAL, GALLERY): NORM.dis_topk}
    if invgc is not None:
        widths |= {(INVGC, QUERY): NORM.dis_topk, (INVGC, GALLERY): NORM.dis_topk}
    assert {k: v[0].shape for k, v in one.bank_state.items()} == {
        k: (N_BANK, w) for k, w in widths.items()
    }
    # 13 shards of 11 chunks: two workers have nothing to do; any order of the workers
    for count, order in [(2, [1, 0]), (4, [3, 0, 2, 1]), (13, list(range(12, -1, -1)))]:
        _assert_same(_load(data, job, count, tmp_path / f"n{count}", order), one)


@pytest.mark.parametrize("invgc", INVGC_CASES, ids=["original", "localadj"])
def test_load_equals_the_whole_gallery_prepared_at_once(data, banks, invgc, tmp_path) -> None:
    """Rows and bank-side state against prepare_items on the whole gallery in memory, which
    multiplies other blocks (other BLAS summation order): equal up to float32 rounding. A
    similarity of unit vectors differs by at most ~d·eps; stats scale it by at most β, and
    InvGC's adjustment adds a few such products (bound used: 8·β_max·d·eps)."""
    job = _job(data, banks, invgc)
    sink = _load(data, job, 3, tmp_path)
    gallery = check_embeddings(np.load(data["g.npy"]), field="gallery")
    whole = prepare_items(gallery, banks, NORM, invgc, hub_topk=HUB_K)
    ids = np.array(LineSource(data["ids.txt"], N_GALLERY).take(N_GALLERY), dtype=object)
    atol = 8 * max(NORM.beta_query_bank, NORM.beta_gallery_bank) * banks.dim * EPS32
    views = {ORIGINAL: whole.original} | ({INVGC: whole.adjusted} if invgc else {})
    for view, expected in views.items():
        coords = np.stack([sink.rows[view][i][0] for i in ids])
        np.testing.assert_allclose(coords, view_coordinates(expected), atol=atol, rtol=0)
        row_of = {item: row for row, item in enumerate(ids.tolist())}
        for bank, top in ((QUERY, expected.query_top), (GALLERY, expected.gallery_top)):
            got_ids, got_sims = sink.bank_state[(view, bank)]
            np.testing.assert_allclose(got_sims, top.sim, atol=atol, rtol=0)
            vectors = banks.query_bank if bank == QUERY else banks.gallery_bank
            # an id may differ only in a tie (possibly with the first item past the k-th)
            for i, j in np.argwhere(got_ids != ids[top.idx]):
                tied = float(expected.embeddings[row_of[got_ids[i, j]]] @ vectors[i])
                assert abs(tied - float(top.sim[i, j])) <= 2 * atol, (view, bank, i, j)


def test_merged_state_is_the_exact_top_k_slow_reference(data, banks, tmp_path) -> None:
    """Loops in float64: every bank item's k best gallery rows of the original view."""
    sink = _load(data, _job(data, banks, None), 4, tmp_path)
    gallery = check_embeddings(np.load(data["g.npy"]), field="gallery").astype(np.float64)
    ids = LineSource(data["ids.txt"], N_GALLERY).take(N_GALLERY)
    row_of = {item: r for r, item in enumerate(ids)}
    tol = 2 * banks.dim * EPS32
    for bank, matrix in ((QUERY, banks.query_bank), (GALLERY, banks.gallery_bank)):
        got_ids, got_sims = sink.bank_state[(ORIGINAL, bank)]
        k = got_ids.shape[1]
        for b in range(0, N_BANK, 7):
            sims = [float(np.dot(matrix[b].astype(np.float64), g)) for g in gallery]
            best = sorted(sims, reverse=True)[:k]
            mine = [sims[row_of[item]] for item in got_ids[b]]
            assert np.allclose(mine, best, atol=tol, rtol=0), (bank, b)
            assert np.allclose(got_sims[b], mine, atol=tol, rtol=0)


def test_a_rerun_of_a_shard_changes_nothing(data, banks, tmp_path) -> None:
    job = _job(data, banks, InvGCParams())
    state = tmp_path / "state"
    sink = _load(data, job, 3, state)
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    ids = LineSource(data["ids.txt"], N_GALLERY)
    meta = LineSource(data["meta.jsonl"], N_GALLERY, "metadata")
    load_shard(job, Shard(1, 3), ids, meta, sink, state, version=3)
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    _assert_same(sink, _load(data, job, 1, tmp_path / "one"))


class _Crash(RuntimeError):
    pass


class _CrashingSink(MemorySink):
    """Fails on its third row write, as a worker killed mid-shard would stop."""

    def upsert_rows(self, *args: object, **kwargs: object) -> None:
        if self.upserts == 2:
            raise _Crash("killed")
        super().upsert_rows(*args, **kwargs)  # type: ignore[arg-type]


def test_a_crashed_worker_leaves_no_partial_state_and_its_restart_completes(
    data, banks, tmp_path
) -> None:
    job = _job(data, banks, None)
    state = tmp_path / "state"
    sink = _CrashingSink()
    with pytest.raises(_Crash):
        _load(data, job, 2, state, sink=sink)
    assert not list(state.glob("*.npz")) and sink.rows  # rows written, nothing committed
    with pytest.raises(BulkError, match=re.escape("shard(s) 0, 1 of 2")):
        merge_shards(job, 2, sink, state, version=3)
    assert sink.version is None
    restarted = MemorySink()
    restarted.rows = sink.rows  # the rows the crashed run left behind
    _assert_same(_load(data, job, 2, state, sink=restarted), _load(data, job, 1, tmp_path / "o"))


def test_merge_refuses_partial_states_of_another_load(data, banks, tmp_path) -> None:
    job = _job(data, banks, None)
    _load(data, job, 2, tmp_path)
    with pytest.raises(BulkError, match="not 4"):
        merge_shards(job, 2, MemorySink(), tmp_path, version=4)
    other = BulkJob(job.gallery, banks, NormParams(nnn_topk=16, dis_topk=3), None, HUB_K, CHUNK)
    with pytest.raises(BulkError, match="other settings"):
        merge_shards(other, 2, MemorySink(), tmp_path, version=3)
    with pytest.raises(BulkError, match=re.escape("shard(s) 0, 1, 2 of 3")):
        merge_shards(job, 3, MemorySink(), tmp_path, version=3)


def test_metadata_reaches_the_sink_and_bad_json_names_the_row(data, banks, tmp_path) -> None:
    sink = _load(data, _job(data, banks, None), 2, tmp_path)
    ids = LineSource(data["ids.txt"], N_GALLERY).take(N_GALLERY)
    assert sink.rows[ORIGINAL][ids[4]][1] == {"row": 4} and sink.rows[ORIGINAL][ids[3]][1] is None
    bad = tmp_path / "bad.jsonl"
    for wrong in ("{oops", '{"x": NaN}'):
        bad.write_text("\n".join(["{}"] * 100 + [wrong] + ["{}"] * (N_GALLERY - 101)) + "\n")
        with pytest.raises(BulkError, match="gallery row 100"):
            load_shard(
                _job(data, banks, None),
                Shard(0, 1),
                LineSource(data["ids.txt"], N_GALLERY),
                LineSource(bad, N_GALLERY, "metadata"),
                MemorySink(),
                tmp_path / "bad",
                version=1,
            )


def test_full_adjacency_and_a_wrong_dimension_are_refused(data, banks) -> None:
    with pytest.raises(BulkError, match="LocalAdj"):
        _job(data, banks, InvGCParams(adjacency="full"))
    small = Banks.from_arrays(banks.query_bank[:, :8], banks.gallery_bank[:, :8])
    with pytest.raises(BulkError, match="dimension"):
        _job(data, small, None)


@pytest.mark.parametrize("text", ["2/2", "abc", "-1/3", "1/0", "1-3"])
def test_shard_parse_refuses_bad_values(text: str) -> None:
    with pytest.raises(BulkError, match="--shard"):
        Shard.parse(text)


def test_shards_tile_the_chunks_in_order() -> None:
    for count in (1, 2, 5, 13):
        ranges = [Shard(i, count).chunks(11) for i in range(count)]
        assert [c for r in ranges for c in r] == list(range(11))


# --- hubless load -------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(["load", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--shard", "3/3"], ["--shard", "x"], ["--merge", "0"], ["--shard", "0/1", "--version", "0"]],
)
def test_cli_bad_arguments_are_one_line_status_2(argv, tmp_path, capsys) -> None:
    status, err = _cli(capsys, *argv, "--state-dir", str(tmp_path))
    assert status == 2 and err.count("\n") == 1 and err.startswith("hubless load: "), err


def test_cli_missing_files_are_one_line_status_1(data, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HUBLESS_GALLERY", str(tmp_path / "nowhere.npy"))
    monkeypatch.setenv("HUBLESS_QUERY_BANK", str(data["qb.npy"]))
    monkeypatch.setenv("HUBLESS_GALLERY_BANK", str(data["gb.npy"]))
    monkeypatch.setenv("HUBLESS_MILVUS_URI", "http://127.0.0.1:1")
    argv = ["--state-dir", str(tmp_path)]
    status, err = _cli(capsys, "--shard", "0/2", *argv)
    assert status == 1 and err.count("\n") == 1 and "nowhere.npy: no such file" in err, err
    monkeypatch.setenv("HUBLESS_GALLERY", str(data["g.npy"]))
    monkeypatch.setenv("HUBLESS_GALLERY_IDS", str(data["ids.txt"]))
    status, err = _cli(capsys, "--shard", "0/2", *argv, "--metadata", str(tmp_path / "m.jsonl"))
    assert status == 1 and err.count("\n") == 1 and "m.jsonl" in err, err
    status, err = _cli(capsys, "--merge", "2", *argv)
    assert status == 1 and err.count("\n") == 1 and "shard(s) 0, 1 of 2" in err, err
    monkeypatch.setenv("HUBLESS_GALLERY_METADATA", str(tmp_path / "by-id.jsonl"))
    status, err = _cli(capsys, "--shard", "0/2", *argv)
    assert status == 1 and err.count("\n") == 1 and "--metadata" in err, err


_PEAK_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from service.algorithms import Banks, NormParams, InvGCParams
from service.export.chunked import MappedGallery
from service.export.writers import LineSource
from service.remote.bulk import BulkJob, Shard, load_shard
from service.remote.bulk_cli import peak_rss_mb

class Discard:
    def upsert_rows(self, *args): pass

path = Path(sys.argv[1])
bank = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
job = BulkJob(MappedGallery(path), Banks.from_arrays(bank, bank[::-1]), NormParams(nnn_topk=8),
              InvGCParams(), 10, chunk_rows=1024, threads=1)
rows = job.size
load_shard(job, Shard(0, 1), LineSource(None, rows), None, Discard(), path.parent / "state", 1)
print(peak_rss_mb())
"""


def _random_gallery(path: Path, rows: int) -> Path:
    """A float16 ``.npy`` written in blocks (the test process never holds it)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, 64))
    rng = np.random.default_rng(rows)
    for start in range(0, rows, 8192):
        out[start : start + 8192] = rng.standard_normal((min(8192, rows - start), 64))
    out.flush()
    del out
    return path


def test_peak_memory_of_a_worker_does_not_grow_with_the_gallery(tmp_path) -> None:
    """A worker over 16x the rows peaks within 16 MB of the small one; holding the big one's
    rows (200k × 69 float32 = 55 MB of coordinates, 26 MB of float16 input) would not."""
    peaks = []
    for rows in (12_500, 200_000):
        gallery = _random_gallery(tmp_path / f"g{rows}.npy", rows)
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, str(gallery)],
            capture_output=True,
            text=True,
            check=True,
            env={"OPENBLAS_NUM_THREADS": "1", "PATH": ""},
        )
        peaks.append(float(done.stdout.split()[-1]))
    assert peaks[1] - peaks[0] < 16, peaks


def _mapped_kb(path: Path) -> int:
    """Resident kB of this process's mappings of ``path`` (Linux ``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_released_chunks_leave_no_gallery_page_mapped(tmp_path) -> None:
    """Reading chunk c+1 maps the large page-cache folio it lies in, back into chunk c's rows:
    the release margin unmaps those too, so nothing of the file stays resident."""
    gallery = MappedGallery(_random_gallery(tmp_path / "g.npy", 400_000))
    for start in range(0, 400_000, 1024):
        sl = slice(start, start + 1024)
        gallery.rows(sl)
        gallery.release(sl)
    assert _mapped_kb(tmp_path / "g.npy") < 64  # a page or two at the end, at most
    gallery.close()
