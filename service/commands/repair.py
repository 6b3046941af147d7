"""``hubless repair``: recover what is intact of a damaged gallery store (see
:mod:`service.engine.repair`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "repair",
        help="copy what is intact of a damaged gallery store into a new one, keep the damaged "
        "file aside and report what was lost (settings as for serve)",
    )
    parser.add_argument("--env-file", type=Path, help="a file of HUBLESS_* settings")
    parser.set_defaults(func=repair)


def repair(args: argparse.Namespace) -> int:
    from service.engine.repair import repair_store
    from service.settings import Settings

    report = repair_store(Settings(_env_file=args.env_file))  # type: ignore[call-arg]
    print("\n".join(report.lines()))
    return 0
