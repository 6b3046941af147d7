"""Evaluation outputs: a Markdown report with the results table, a JSON file, PNG plots.

Plots use matplotlib's Agg backend (no display) and stay small (a few tens of KB): the
k-occurrence histogram of raw against the best configuration (log-scale counts), and the
diagnostic R@1-vs-β curve on the test split.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.evaluation.evaluate import HUBNESS_K, Evaluation, Row, Table

Cell = Callable[[Row], str]


def _num(value: float | None, digits: int, scale: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value * scale:.{digits}f}"


def _median(row: Row) -> str:
    value = row.retrieval["median_rank"]
    return f">{row.retrieval.get('cutoff')}" if value is None else f"{value:g}"


COLUMNS: tuple[tuple[str, Cell], ...] = (
    ("Configuration", lambda r: r.config.label),
    ("R@1", lambda r: _num(r.retrieval["r1"], 1, 100)),
    ("R@5", lambda r: _num(r.retrieval["r5"], 1, 100)),
    ("R@10", lambda r: _num(r.retrieval["r10"], 1, 100)),
    ("MedR", _median),
    ("MRR", lambda r: _num(r.retrieval["mrr"], 3)),
    (f"Skew N{HUBNESS_K}", lambda r: _num(r.hubness["skewness"], 2)),
    ("Robin Hood", lambda r: _num(r.hubness["robin_hood"], 3)),
    ("Antihubs %", lambda r: _num(r.hubness["antihub_rate"], 1, 100)),
    ("Hub occ. %", lambda r: _num(r.hubness["hub_occurrence"], 1, 100)),
    ("Δdeg", lambda r: _num(r.degeneration, 4)),
    ("Precompute s", lambda r: _num(r.precompute_seconds, 2)),
    ("Search s", lambda r: _num(r.search_seconds, 2)),
)


def markdown_table(rows: Sequence[Row]) -> str:
    """The results table: one line per configuration, R@k in %, the rest as computed."""
    cutoff = rows[0].retrieval.get("cutoff") if rows else None  # ranks known only up to k
    names = [f"MRR@{cutoff}" if name == "MRR" and cutoff else name for name, _ in COLUMNS]
    lines = [
        "| " + " | ".join(names) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(cell(row) for _, cell in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def comparison(table: Table, key: str) -> str | None:
    """A plain sentence comparing configuration ``key`` with raw on R@1 and skewness."""
    raw, row = table.row("raw"), table.row(key)
    if raw is None or row is None or key == "raw":
        return None
    r1_raw, r1 = raw.retrieval["r1"], row.retrieval["r1"]
    sk_raw, sk = raw.hubness["skewness"], row.hubness["skewness"]
    gain = (r1 - r1_raw) * 100
    verdict = "beats" if gain > 0 else ("ties" if gain == 0 else "is WORSE than")
    trend = "cuts" if sk < sk_raw else "does NOT cut"
    return (
        f"{row.config.label} {verdict} raw on R@1: {r1_raw * 100:.1f}% → {r1 * 100:.1f}% "
        f"({gain:+.1f} points, {gain / max(r1_raw * 100, 1e-9) * 100:+.0f}% relative), and "
        f"{trend} k-occurrence skewness: {sk_raw:.2f} → {sk:.2f} ({sk - sk_raw:+.2f})."
    )


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}" for k, v in params.items()
    )


def _table_section(table: Table, highlight: Sequence[str]) -> list[str]:
    out = [f"## {table.title}", "", table.description, "", markdown_table(table.rows), ""]
    with_params = [r for r in table.rows if r.params]
    if with_params:
        out += ["<details><summary>Parameters of each row</summary>", ""]
        out += [f"- {r.config.label}: {_params_text(r.params or {})}" for r in with_params]
        out += ["", "</details>", ""]
    best = table.best()
    keys = dict.fromkeys([*highlight, best.config.key])
    out += [f"- {s}" for s in (comparison(table, key) for key in keys) if s]
    out.append(f"- Best configuration on test R@1: **{best.config.label}**.")
    return [*out, ""]


def render_markdown(
    evaluation: Evaluation,
    *,
    command: str,
    params_source: str,
    params_header: Sequence[str] = (),
    plots: Sequence[tuple[str, str]] = (),
    highlight: Sequence[str] = ("dualis", "invgc+dualis", "dbsn"),
) -> str:
    """The whole report: context, each table with plain comparisons to raw, notes, plots."""
    ds = evaluation.dataset
    out = [
        f"# Results on {ds.get('name', 'the dataset')}",
        "",
        f"Dataset: `{ds.get('path')}` — {ds.get('description', '')}".rstrip(" —"),
        f"Test split: {ds.get('queries')} queries against a gallery of {ds.get('gallery')}; "
        f"query bank {ds.get('query_bank')}, gallery bank {ds.get('gallery_bank')} "
        "(banks disjoint from test and validation). `hubless tune` uses only the separate "
        f"validation split ({ds.get('val_queries')} queries, gallery of {ds.get('val_gallery')}).",
        "",
        f"Mode: **{evaluation.mode}**. Parameters: {params_source}.",
    ]
    if params_header:
        out += ["", "Tuning record (from the parameter file):", "", "```"]
        out += [line.lstrip("# ").rstrip() for line in params_header]
        out += ["```"]
    out += ["", "Reproduce:", "", "```sh", command, "```", ""]
    for table in evaluation.tables:
        out += _table_section(table, highlight)
    curve = evaluation.curve
    if curve:
        released, tuned = curve["points"]["released_defaults"], curve["points"]["configured"]
        out += [
            "## β sensitivity (diagnostic, test split)",
            "",
            f"- With the released DBNorm code's default β (β_q = {released['beta_query_bank']:.4g}"
            f", β_g = {released['beta_gallery_bank']:g}) DualIS reaches R@1 "
            f"{released['dualis_r1'] * 100:.1f}% and IS {released['is_r1'] * 100:.1f}%, "
            f"against raw {curve['raw_r1'] * 100:.1f}% (original gallery).",
            f"- At the configured β (β_q = {tuned['beta_query_bank']:g}, β_g = "
            f"{tuned['beta_gallery_bank']:g}): DualIS {tuned['dualis_r1'] * 100:.1f}%, IS "
            f"{tuned['is_r1'] * 100:.1f}% (original gallery).",
            "",
        ]
    out += ["## Notes", "", *(f"- {note}" for note in evaluation.notes)]
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{title}]({name})\n" for name, title in plots]
    return "\n".join(out).rstrip() + "\n"


def _jsonable(value: Any) -> Any:
    """NaN/inf become null; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict[str, Any], *, compact: bool = False) -> None:
    """Indented JSON, or one compact line (large grids)."""
    layout: dict[str, Any] = {"separators": (",", ":")} if compact else {"indent": 1}
    path.write_text(json.dumps(_jsonable(data), ensure_ascii=False, **layout) + "\n", "utf-8")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_k_occurrence(rows: Sequence[Row], path: Path, title: str) -> None:
    """Histogram of N_k: number of gallery items (log scale) per k-occurrence value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    top = max(int(row.occurrence.max()) for row in rows)
    width = max(1, math.ceil((top + 1) / 80))  # at most ~80 bins
    edges = np.arange(0, top + width + 1, width) - 0.5
    for row, style in zip(rows, ("-", "--"), strict=False):
        label = f"{row.config.label} (skew {row.hubness['skewness']:.2f})"
        ax.hist(row.occurrence, bins=edges, histtype="step", linestyle=style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(f"k-occurrence N{HUBNESS_K} (times an item is in a query's top-{HUBNESS_K})")
    per = "" if width == 1 else f" per bin of {width}"
    ax.set_ylabel(f"gallery items{per} (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_beta_curve(curve: dict[str, Any], path: Path) -> None:
    """R@1 against β (log x axis), raw as a horizontal line, configured/released points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    betas = curve["betas"]
    for (name, values), style in zip(curve["curves"].items(), ("-", "--", ":"), strict=False):
        ax.plot(betas, np.asarray(values) * 100, style, marker=".", label=name)
    ax.axhline(curve["raw_r1"] * 100, color="grey", linewidth=1, label="raw")
    for key, marker in (("configured", "*"), ("released_defaults", "x")):
        point = curve["points"][key]
        ax.plot(
            point["beta_query_bank"],
            point["dualis_r1"] * 100,
            marker,
            markersize=10,
            color="black",
            label=f"DualIS, {key.replace('_', ' ')} β "
            f"({point['beta_query_bank']:.3g}, {point['beta_gallery_bank']:.3g})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("β (inverse temperature)")
    ax.set_ylabel("R@1 (%)")
    ax.set_title(
        f"DIAGNOSTIC ONLY: R@1 vs β on the {curve['split']} split\n"
        "(β is tuned on the validation split, never on this curve)",
        fontsize=10,
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    evaluation: Evaluation,
    out_dir: Path,
    *,
    command: str,
    params_source: str,
    params_header: Sequence[str] = (),
    prefix: str = "",
) -> list[Path]:
    """Write ``{prefix}results.md``, ``{prefix}results.json`` and the PNGs; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plots: list[tuple[str, str]] = []
    raw, best = evaluation.main.row("raw"), evaluation.main.best()
    if raw is not None:
        name = f"{prefix}k_occurrence.png"
        shown = [raw] if best is raw else [raw, best]
        title = f"k-occurrence (k={HUBNESS_K}) on the test split: raw vs the best configuration"
        plot_k_occurrence(shown, out_dir / name, title)
        plots.append((name, "k-occurrence histogram, raw vs best"))
    if evaluation.curve:
        name = f"{prefix}beta_curve.png"
        plot_beta_curve(evaluation.curve, out_dir / name)
        plots.append((name, "diagnostic R@1 vs β on the test split"))
    written += [out_dir / name for name, _ in plots]
    markdown = render_markdown(
        evaluation,
        command=command,
        params_source=params_source,
        params_header=params_header,
        plots=plots,
    )
    md_path, json_path = out_dir / f"{prefix}results.md", out_dir / f"{prefix}results.json"
    md_path.write_text(markdown, encoding="utf-8")
    write_json(json_path, evaluation.as_dict())
    return [md_path, json_path, *written]
