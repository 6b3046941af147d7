"""The export: query coordinates reproduce the service's scores, the chunked path equals the
in-memory one, and ``hubless export`` writes Parquet and its sidecar (Milvus is ``hubless load``:
tests/remote/test_bulk*.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from service.algorithms import (
    METHODS,
    STAT_COLUMNS,
    Banks,
    InvGCParams,
    NormParams,
    check_embeddings,
    dense_scores,
    get_normaliser,
    prepare_items,
    top1_raw,
)
from service.export import (
    activation_flags,
    query_coordinates,
    score_offsets,
    view_coordinates,
)
from service.export.chunked import ActivationSets, ExportJob, MappedGallery, ordered_map
from service.export.commands import register
from service.settings import DEMO_DIR

N_GALLERY, N_BANK = 700, 300
NORM = NormParams(nnn_topk=16, dis_topk=2)


def _demo(name: str, rows: int) -> np.ndarray:
    return np.load(DEMO_DIR / name)[:rows]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small float16 gallery with ids and banks on disk, as a user would have them."""
    root = tmp_path_factory.mktemp("data")
    paths = {
        "gallery": root / "gallery.npy",
        "ids": root / "ids.txt",
        "query_bank": root / "qb.npy",
        "gallery_bank": root / "gb.npy",
    }
    np.save(paths["gallery"], _demo("gallery.npy", N_GALLERY))
    ids = (DEMO_DIR / "gallery_ids.txt").read_text(encoding="utf-8").splitlines()[:N_GALLERY]
    paths["ids"].write_text("\n".join(ids) + "\n", encoding="utf-8")
    np.save(paths["query_bank"], _demo("query_bank.npy", N_BANK))
    np.save(paths["gallery_bank"], _demo("gallery_bank.npy", N_BANK))
    return paths


@pytest.fixture(scope="module")
def banks(files: dict[str, Path]) -> Banks:
    return Banks.from_arrays(np.load(files["query_bank"]), np.load(files["gallery_bank"]))


@pytest.fixture(scope="module")
def gallery(files: dict[str, Path]) -> np.ndarray:
    return check_embeddings(np.load(files["gallery"]), field="gallery")


@pytest.mark.parametrize(
    "invgc",
    [None, InvGCParams(), InvGCParams(adjacency="full")],
    ids=["original", "localadj", "fulladj"],
)
def test_chunked_equals_in_memory(files, banks, gallery, invgc) -> None:
    whole = prepare_items(gallery, banks, NORM, invgc)
    view = whole.original if invgc is None else whole.adjusted
    mapped = MappedGallery(files["gallery"])
    assert isinstance(mapped.array, np.ndarray) and mapped.array.dtype == np.float16
    job = ExportJob(mapped, banks, NORM, invgc, chunk_rows=128, workers=2)
    sets = ActivationSets(banks, NORM.dis_topk)
    parts = []
    for chunk in job.chunks():
        parts.append(chunk.coords)
        sets.add(chunk)
    coords = np.concatenate(parts)
    expected = view_coordinates(view)
    assert coords.shape == (N_GALLERY, banks.dim + len(STAT_COLUMNS)) and coords.dtype == np.float32
    atol = 1e-5 if invgc is not None and invgc.adjacency == "full" else 1e-6
    np.testing.assert_allclose(coords, expected, atol=atol, rtol=0)
    query_rows, gallery_rows = sets.rows()
    assert np.array_equal(query_rows, np.flatnonzero(view.activated[:, 0]))
    assert np.array_equal(gallery_rows, np.flatnonzero(view.activated[:, 1]))
    mapped.close()


def test_released_pages_read_back_the_same(files) -> None:
    mapped = MappedGallery(files["gallery"])
    first = mapped.rows(slice(0, 300))
    mapped.release(slice(0, 300))
    assert np.array_equal(mapped.rows(slice(0, 300)), first)
    mapped.close()


def test_ordered_map_keeps_order_and_propagates_errors() -> None:
    slices = [slice(i, i + 1) for i in range(20)]
    assert [out for _, out in ordered_map(lambda sl: sl.start * 2, slices, 3)] == list(
        range(0, 40, 2)
    )

    def fail(sl: slice) -> int:
        if sl.start == 5:
            raise ValueError("chunk 5")
        return sl.start

    with pytest.raises(ValueError, match="chunk 5"):
        list(ordered_map(fail, slices, 2))


@pytest.mark.parametrize("method", METHODS)
def test_query_coordinates_reproduce_service_scores(banks, gallery, method) -> None:
    view = prepare_items(gallery, banks, NORM, InvGCParams()).adjusted
    raw_queries = _demo("queries.npy", 16).astype(np.float32) * 3.0  # not yet unit length
    queries = check_embeddings(raw_queries, field="queries")
    normaliser = get_normaliser(method)
    activated = None
    if normaliser.dynamic:  # the documented extra step: raw top-1 on the same index
        top1 = np.argmax(raw_queries @ view_coordinates(view)[:, : -len(STAT_COLUMNS)].T, axis=1)
        assert np.array_equal(top1, top1_raw(queries, view.embeddings))
        ids = [str(r) for r in range(view.size)]
        query_set = {ids[r] for r in np.flatnonzero(view.activated[:, 0])}
        gallery_set = {ids[r] for r in np.flatnonzero(view.activated[:, 1])}
        activated = activation_flags([ids[r] for r in top1], query_set, gallery_set)
    coords = query_coordinates(raw_queries, method, NORM, activated)
    scores = coords @ view_coordinates(view).T
    scores = scores + score_offsets(method, NORM, banks.sizes, len(queries), activated)[:, None]
    plan = normaliser.plan(NORM, banks.sizes, len(queries), activated)
    np.testing.assert_allclose(scores, dense_scores(queries, view, plan), atol=1e-5, rtol=0)


def test_dynamic_methods_need_the_activation() -> None:
    with pytest.raises(ValueError, match="activation"):
        query_coordinates(np.ones((1, 4)), "dualdis", NORM)


def _run(argv: list[str], env_file: Path) -> int:
    parser = argparse.ArgumentParser(prog="hubless")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", "--env-file", str(env_file), *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def env_file(files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("env") / "export.env"
    path.write_text(
        "\n".join(
            [
                f"HUBLESS_GALLERY={files['gallery']}",
                f"HUBLESS_GALLERY_IDS={files['ids']}",
                f"HUBLESS_QUERY_BANK={files['query_bank']}",
                f"HUBLESS_GALLERY_BANK={files['gallery_bank']}",
                f"HUBLESS_NNN_TOPK={NORM.nnn_topk}",
                f"HUBLESS_DIS_TOPK={NORM.dis_topk}",
                "HUBLESS_INVGC=true",  # off by default; the export's default view follows it
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return path


def test_export_command_writes_parquet_and_sidecar(env_file, files, banks, gallery, tmp_path):
    metadata = tmp_path / "meta.jsonl"
    metadata.write_text("".join(f'{{"row": {i}}}\n' for i in range(N_GALLERY)), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--out", str(out), "--chunk-rows", "200", "--workers", "2", "--metadata", str(metadata)]
    assert _run(argv, env_file) == 0
    table = pq.read_table(out / "gallery.parquet")
    assert table.column_names == ["id", "vector", "metadata"]
    ids = files["ids"].read_text(encoding="utf-8").splitlines()
    assert table.column("id").to_pylist() == ids
    vectors = np.array(table.column("vector").to_pylist(), np.float32)
    view = prepare_items(gallery, banks, NORM, InvGCParams()).adjusted  # HUBLESS_INVGC: on
    np.testing.assert_allclose(vectors, view_coordinates(view), atol=1e-6, rtol=0)
    assert json.loads(table.column("metadata")[5].as_py()) == {"row": 5}

    sidecar = json.loads((out / "gallery.json").read_text(encoding="utf-8"))
    assert sidecar["rows"] == N_GALLERY and sidecar["vector_dim"] == banks.dim + len(STAT_COLUMNS)
    assert sidecar["view"] == "invgc" and sidecar["params"]["norm"]["dis_topk"] == 2
    assert set(sidecar["methods"]) == set(METHODS)
    assert sidecar["methods"]["csls"]["similarity_weight"] == 2.0
    assert sidecar["methods"]["dualdis"]["dynamic"] is True
    activation = json.loads((out / sidecar["activation_file"]).read_text(encoding="utf-8"))
    assert activation["query_bank"] == [ids[r] for r in np.flatnonzero(view.activated[:, 0])]
    assert activation["gallery_bank"] == [ids[r] for r in np.flatnonzero(view.activated[:, 1])]


def test_export_command_rejects_missing_outputs_and_bad_files(env_file, tmp_path, capsys):
    for argv in ([], ["--out", str(tmp_path / "x"), "--milvus-uri", "m.db"]):
        with pytest.raises(SystemExit) as exited:  # --out is required; Milvus is hubless load
            _run(argv, env_file)
        assert exited.value.code == 2
    capsys.readouterr()
    bad = tmp_path / "bad.env"
    bad.write_text(env_file.read_text() + f"HUBLESS_GALLERY_IDS={tmp_path / 'none.txt'}\n")
    assert _run(["--out", str(tmp_path / "x")], bad) == 2
    assert "none.txt" in capsys.readouterr().err
    assert not (tmp_path / "x" / "gallery.parquet").exists()
