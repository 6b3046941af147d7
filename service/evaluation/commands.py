"""``hubless evaluate`` and ``hubless tune``: quality and hubness of every method on a dataset.

``tune`` searches parameters on the validation split and writes an env file that both
``hubless serve --env-file F`` and ``hubless evaluate --params F`` read (through
:class:`~service.settings.Settings`, so the names always match). ``evaluate`` reports every
configuration on the test split with the algorithm core, or, with ``--url``, a running service.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import Any

from service.settings import DEMO_DIR

#: the bundled demo (a complete dataset): both commands run on a fresh clone without arguments
DEFAULT_DATASET = DEMO_DIR
#: under var/ (ignored by git): a run never overwrites the committed docs/results by default
DEFAULT_OUT = Path("var/results")


def _load(directory: Path) -> Any:
    """The dataset, or SystemExit with one line saying what is missing and how to make it."""
    from service.datasets.build import load_dataset

    try:
        return load_dataset(directory)
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"{exc}; build one with `hubless build-dataset --out {directory}`, or omit "
            "--dataset to use the bundled demo"
        ) from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        message = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def register(subparsers: Any) -> None:
    """Add ``evaluate`` and ``tune`` to the CLI."""
    evaluate = subparsers.add_parser(
        "evaluate",
        help="R@k, MRR, hubness, Δdeg and timings of every method on a dataset's test split",
        description=(
            "Evaluate raw, InvGC (full, LocalAdj), IS, DIS, DualIS, DualDIS, NNN, CSLS and InvGC "
            "with each normaliser on the test split with the algorithm core, or a running "
            "service over HTTP (--url). Writes results.md, results.json and PNG plots."
        ),
    )
    _common(evaluate, f"output directory (default: {DEFAULT_OUT})")
    evaluate.add_argument(
        "--params",
        type=Path,
        metavar="ENV_FILE",
        help="HUBLESS_* parameters, e.g. tune's tuned.env (default: the settings' defaults)",
    )
    evaluate.add_argument(
        "--tuned",
        type=Path,
        metavar="TUNE_JSON",
        help="tune's tune.json: add (first) a table where each configuration runs with its own "
        "best validation parameters",
    )
    evaluate.add_argument(
        "--methods",
        help="comma-separated configurations (raw, invgc, invgc-full, dualis, invgc+dualis, …; "
        "with --url: method names); default: all",
    )
    evaluate.add_argument("--no-curve", action="store_true", help="skip the R@1-vs-β curve")
    evaluate.add_argument(
        "--float64",
        action="store_true",
        help="compute in float64 (a reference: the service computes in float32)",
    )
    remote = evaluate.add_argument_group("client mode (evaluate a running service)")
    remote.add_argument("--url", help="base URL of a service holding the dataset's test gallery")
    remote.add_argument("--api-key", help="API key, if the service requires one for reads")
    remote.add_argument("--batch-size", type=int, default=256, help="queries per request")
    remote.add_argument("--k", type=int, default=10, help="results per query (≥ 10)")
    evaluate.set_defaults(func=run_evaluate)

    tune = subparsers.add_parser(
        "tune",
        help="grid-search parameters on the validation split; write an env file",
        description=(
            "Grid search on the VALIDATION split only (val queries against the val gallery): "
            "β (log grid), InvGC rates and pool rate, NNN α, DBSN τ; objective R@1, ties by "
            "MRR. Writes the best parameters as an env file for `hubless serve --env-file` and "
            "the full grid as JSON."
        ),
    )
    _common(tune, f"directory of tuned.env and tune.json (default: {DEFAULT_OUT})")
    tune.add_argument("--env-file", type=Path, help="env file to write (default: OUT/tuned.env)")
    tune.add_argument("--grid-json", type=Path, help="grid JSON to write (default: OUT/tune.json)")
    for option, help_text in (
        ("--betas", "β grid (default: 0.001 … 400, 1-2-5 log steps)"),
        ("--rates", "InvGC rate grid for both banks (default: 0, 0.1, … 1)"),
        ("--pool-rates", "LocalAdj pool-rate grid (default: 0.005, 0.01, 0.02, 0.05, 0.1)"),
        ("--nnn-alphas", "NNN α grid (default: 0, 0.1, … 1.5)"),
        ("--taus", "DBSN τ grid (default: 0.001 … 1, 1-2-5 log steps)"),
    ):
        tune.add_argument(option, type=_floats, metavar="LIST", help=help_text)
    tune.set_defaults(func=run_tune)


def _common(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument(
        "--dataset",
        type=Path,
        default=DEFAULT_DATASET,
        help=f"dataset directory from build-dataset (default: {DEFAULT_DATASET})",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=out_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _command(name: str, args: argparse.Namespace, options: tuple[str, ...]) -> str:
    """The command line that reproduces this run (the options that were set)."""
    parts = ["hubless", name]
    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value is True:
            parts.append(option)
        elif isinstance(value, tuple):
            parts += [option, ",".join(f"{v:g}" for v in value)]
        elif value not in (None, False):
            parts += [option, str(value)]
    return shlex.join(parts)


def _dataset_info(dataset: Any) -> dict[str, Any]:
    manifest = dataset.manifest
    return {
        "path": str(dataset.path),
        "name": f"{dataset.path.name} ({manifest.get('source', 'unknown source')})",
        "description": f"embeddings: {manifest.get('model', 'unknown model')}",
        "queries": int(dataset.queries.shape[0]),
        "gallery": int(dataset.gallery.shape[0]),
        "val_queries": int(dataset.val_queries.shape[0]),
        "val_gallery": int(dataset.val_gallery.shape[0]),
        "query_bank": int(dataset.query_bank.shape[0]),
        "gallery_bank": int(dataset.gallery_bank.shape[0]),
        "dim": dataset.dim,
        "manifest": manifest,
    }


def _header(path: Path | None) -> list[str]:
    """The comment lines of an env file (tune's record of how it was made)."""
    if path is None:
        return []
    return [line for line in path.read_text("utf-8").splitlines() if line.startswith("#")]


OFFLINE_NOTES = (
    "R@k, median rank (MedR) and MRR from exact ranks over the whole gallery.",
    "Hubness from each test query's top-10 over ALL gallery items (zeros included): skewness "
    "of N10, Robin Hood index, antihubs = share of items in no top-10, hub occurrence = share "
    "of the top-10 slots taken by items with N10 ≥ 20.",
    "Δdeg: mean cosine of each searched gallery item to its nearest other item; it depends "
    "only on the gallery variant (InvGC should lower it).",
    "Precompute: preparing the searched gallery variant (bank scans, per-item statistics, "
    "InvGC), shared by all methods on that variant; Search: planning plus exact blocked top-10 "
    "search for all test queries (ranking for the metrics is not timed).",
)
PER_CONFIG_TITLE = "Each configuration with its own validation-tuned parameters"
PER_CONFIG_TEXT = (
    "Every configuration runs with the parameters that were best for it alone on the "
    "validation split (tune.json, `best`); configurations the tuner does not search (InvGC "
    'full) use the --params values. This answers "does the method help once tuned"; one '
    "service cannot serve all of these at once (it has one β pair, one α, one set of rates)."
)
SHARED_TITLE = "One service's parameters"
SHARED_TEXT = (
    "Every configuration runs with the single parameter set of {source}: what `hubless serve "
    "--env-file` with that file serves (one β pair shared by IS/DIS/DualIS/DualDIS, chosen by "
    "tune for its default configuration; one NNN α; one set of InvGC rates)."
)
SERVICE_TEXT = "Every method with InvGC off and on, as the running service answers them."
SERVICE_NOTES = (
    "Client mode: R@k and hubness from the ids POST /search returned; MRR is MRR@k (a miss "
    "counts 0) and MedR is shown only when within k. InvGC rows use the service's configured "
    "adjacency and rates; Δdeg comes from POST /diagnostics.",
    "Search: wall-clock time of all HTTP search requests (JSON encoding included).",
)


def run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from service.algorithms import METHODS, Banks
    from service.evaluation.evaluate import (
        Evaluation,
        Table,
        beta_curve,
        evaluate_offline,
        params_dict,
        tuned_params,
    )
    from service.evaluation.methods import Split, parse_configs
    from service.evaluation.report import markdown_table, write_report
    from service.settings import Settings

    dataset = _load(args.dataset)
    # the core keeps float64 input in float64 (validation.float_dtype)
    dtype = np.float64 if getattr(args, "float64", False) else np.float32
    split = Split.from_arrays(
        "test",
        dataset.queries.astype(dtype),
        dataset.gallery.astype(dtype),
        dataset.gallery_ids,
        dataset.query_truth,
    )
    info = _dataset_info(dataset)
    cores = f"{os.cpu_count()} CPU cores"
    if args.url:
        from service.client import HublessClient
        from service.evaluation.remote import evaluate_service

        methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(METHODS)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise SystemExit(
                f"--methods with --url takes method names ({', '.join(METHODS)}), got {unknown}"
            )
        with HublessClient(args.url, api_key=args.api_key, timeout=300) as client:
            client.wait_ready(timeout=600)
            progress = not args.quiet
            rows = evaluate_service(
                client, split, methods, k=args.k, batch_size=args.batch_size, progress=progress
            )
        notes = [*SERVICE_NOTES, f"Client on {cores}."]
        served = Table("service", f"Service at {args.url}", SERVICE_TEXT, rows)
        evaluation = Evaluation("service", info, {"url": args.url}, [served], None, notes)
        source, prefix = f"those of the service at {args.url}", "service-"
        options: tuple[str, ...] = ("--dataset", "--out", "--url", "--methods", "--k")
    else:
        settings = Settings(_env_file=args.params)  # type: ignore[call-arg]
        base = (settings.norm_params(), settings.invgc_params())
        banks = Banks.from_arrays(
            dataset.query_bank.astype(dtype), dataset.gallery_bank.astype(dtype)
        )
        configs = parse_configs(args.methods)

        def table(key: str, title: str, text: str, params_for: Any) -> Table:
            rows = evaluate_offline(split, banks, configs, params_for, progress=not args.quiet)
            return Table(key, title, text, rows)

        tables = []
        if args.tuned:
            best = json.loads(args.tuned.read_text("utf-8"))["best"]
            params_for = tuned_params(base, {k: v["params"] for k, v in best.items()})
            tables.append(table("per_config", PER_CONFIG_TITLE, PER_CONFIG_TEXT, params_for))
        if args.params or not args.tuned:
            text = SHARED_TEXT.format(source=f"`{args.params}`" if args.params else "the defaults")
            tables.append(table("shared", SHARED_TITLE, text, lambda config: base))
        curve = None if args.no_curve else beta_curve(split, banks, base[0])
        notes = [
            *OFFLINE_NOTES,
            f"Timings: wall-clock, one run, {cores} (numpy BLAS); "
            "indicative only, other load on the machine inflates them.",
        ]
        evaluation = Evaluation("offline", info, params_dict(*base), tables, curve, notes)
        sources = [f"`{path}`" for path in (args.tuned, args.params) if path]
        source = " and ".join(sources) or "defaults (no --params)"
        prefix = ""
        options = ("--dataset", "--out", "--params", "--tuned", "--methods", "--no-curve")
        options += ("--float64",)
    for shown in evaluation.tables:
        print(f"\n{shown.title}\n\n{markdown_table(shown.rows)}")
    written = write_report(
        evaluation,
        args.out,
        command=_command("evaluate", args, options),
        params_source=source,
        params_header=_header(args.params) if not args.url else [],
        prefix=prefix,
    )
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from service.algorithms import Banks
    from service.evaluation.methods import Split
    from service.evaluation.report import write_json
    from service.evaluation.tune import Grid, tune

    dataset = _load(args.dataset)
    # only the validation split (and the banks) from here on: the test split is never read
    split = Split.from_arrays(
        "val",
        dataset.val_queries,
        dataset.val_gallery,
        dataset.val_gallery_ids,
        dataset.val_query_truth,
    )
    banks = Banks.from_arrays(dataset.query_bank, dataset.gallery_bank)
    overrides = {
        name: getattr(args, name)
        for name in ("betas", "rates", "pool_rates", "nnn_alphas", "taus")
        if getattr(args, name) is not None
    }
    result = tune(split, banks, Grid(**overrides), progress=not args.quiet)

    env_path = args.env_file or args.out / "tuned.env"
    json_path = args.grid_json or args.out / "tune.json"
    options = ("--dataset", "--out", "--env-file", "--grid-json", "--betas", "--rates")
    command = _command("tune", args, (*options, "--pool-rates", "--nnn-alphas", "--taus"))
    env_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    env_path.write_text(f"# command: {command}\n" + result.env_text(str(args.dataset)), "utf-8")
    write_json(json_path, {"command": command, **result.as_dict()}, compact=True)

    print("| Configuration | val R@1 | val MRR | parameters |\n|---|---:|---:|---|")
    for point in result.best_per_config().values():
        params = ", ".join(f"{k}={v:g}" for k, v in point.params.items()) or "–"
        print(f"| {point.config.label} | {point.r1 * 100:.2f} | {point.mrr:.4f} | {params} |")
    print()
    print(env_path.read_text("utf-8"), end="")
    print(f"\nwrote {env_path}, {json_path}")
    return 0
