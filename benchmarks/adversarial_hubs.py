"""The adversarial-hub attack (SPEC.md, "Hubs and adversarial hubs"), measured end to end.

One vector, the L2-normalised mean of the query bank, is upserted into the served gallery
through the in-process engine (the service's own code path, screening included). For raw and
every method, on the original and the InvGC gallery: the share of the test queries whose top-10
holds the injected item (and whose top-1 it is), and R@1 before and after.

    python -m benchmarks.adversarial_hubs [--dataset DIR] [--markdown OUT]

DIR is a dataset built by ``hubless dataset`` (default: the bundled demo); everything else is
the default settings (read from the environment like the service). Takes about a minute on
the demo (two engines' precompute, 2 × 14 × 2,000 searched queries).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from service.datasets.build import load_dataset
from service.engine.startup import load_engine
from service.evaluation.adversarial import Attack, K, run_attack, settings_for
from service.settings import DEMO_DIR, Settings


def markdown(attack: Attack, settings: Settings) -> str:
    default = (settings.default_method, settings.invgc)
    lines = [
        f"Gallery {attack.gallery_size} items + 1 injected, {attack.queries} test queries, "
        f"top-{K}. Upsert screening: bank occurrence {attack.bank_occurrence}, robust z "
        f"{attack.z:.1f}, {'flagged' if attack.flagged else 'NOT flagged'} "
        f"(HUBLESS_HUB_Z={settings.hub_z:g}).",
        "",
        "| Method | InvGC | Top-10s holding the hub | Top-1s taken | R@1 before | R@1 after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in attack.rows:
        name = f"**{r.method}** (default)" if (r.method, r.invgc) == default else r.method
        lines.append(
            f"| {name} | {'on' if r.invgc else 'off'} | {100 * r.in_top10:.1f}% | "
            f"{100 * r.top1:.1f}% | {100 * r.r1_before:.1f} | {100 * r.r1_after:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEMO_DIR, help="built dataset dir")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    data = load_dataset(args.dataset)
    queries = data.queries / np.linalg.norm(data.queries, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(args.dataset, Path(tmp))
        # both views are measured, whichever one is the default (marked in the table)
        engine = load_engine(settings.model_copy(update={"invgc": True}))
        attack = run_attack(engine, queries, data.query_truth)
    text = markdown(attack, settings)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
