"""``python -m benchmarks.run --only scale`` in its quick form (5,000 items): every part runs
and reports finite figures, and the service it starts stores float16."""

from __future__ import annotations

import math

from benchmarks import bench_scale


def test_quick_scale_run_reports_every_part() -> None:
    rows = bench_scale.measure(quick=True)
    names = " / ".join(row.name for row in rows)
    for part in ("service RSS", "cached restart", "exact dualis", "IVF", "HNSW"):
        assert part in names, names
    assert all(math.isfinite(row.value) and row.section == "scale" for row in rows)
    assert all("stored float16" in row.detail for row in rows if "RSS" in row.name)
