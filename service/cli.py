"""Command-line entry point: ``hubless <command>``.

Each command lives next to the code it drives and registers itself here, so this module stays a
thin dispatcher: ``serve`` (the HTTP service), ``repair`` (a damaged gallery store),
``build-dataset`` (real embeddings from WordNet), ``evaluate`` and ``tune`` (retrieval
quality and hubness on a dataset), ``export`` (the bias-augmented gallery to Parquet),
``load`` (the sharded bulk load into Milvus as the system of record).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from service import __version__

# module path -> each module defines ``register(subparsers)`` adding its sub-command(s), whose
# parsers set ``func`` to a callable taking the parsed namespace and returning an exit code.
COMMAND_MODULES = (
    "service.commands.serve",
    "service.commands.repair",
    "service.datasets.commands",
    "service.evaluation.commands",
    "service.export.commands",
    "service.remote.bulk_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubless",
        description="Hubness-aware embedding retrieval as a service (InvGC, DBNorm).",
    )
    parser.add_argument("--version", action="version", version=f"hubless {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    from service.settings import describe_errors

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValidationError as exc:  # settings read by any command: one line, exit status 2
        if exc.title != "Settings":
            raise
        print(f"hubless {args.command}: {describe_errors(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
