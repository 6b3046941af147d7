"""``hubless repair``: copy what is intact of a damaged store into a new one, and say what was
lost.

The gallery is rebuilt as the service would have replayed it: the snapshot's intact rows (or
the gallery files when there was no snapshot), then every intact change in order; a change
that is lost is simply not applied, and a delete of an item that is not there is skipped. The
result is written as a new store holding one snapshot, numbered after the last change seen (so
no version number names two galleries); the damaged file is kept aside, renamed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.algorithms import check_embeddings
from service.engine.changes import Upsert
from service.engine.persistence import (
    DB_NAME,
    Snapshot,
    StoreDamaged,
    replace_store,
    salvage,
)
from service.engine.startup import open_store, store_directory
from service.engine.state import Metadata
from service.io import load_embeddings, load_ids
from service.settings import Settings


@dataclass
class RepairReport:
    store: Path
    damaged: bool
    reason: str = ""
    kept_aside: Path | None = None
    items: int = 0
    lost_snapshot_rows: list[int] = field(default_factory=list)
    lost_changes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        if not self.damaged:
            return [f"{self.store}: intact, nothing to repair"]
        lost = len(self.lost_snapshot_rows) + len(self.lost_changes)
        return [
            f"{self.store}: damaged ({self.reason})",
            f"kept the damaged file aside as {self.kept_aside}",
            f"new store written with {self.items} items",
            f"lost snapshot rows: {len(self.lost_snapshot_rows)} {self.lost_snapshot_rows[:20]}",
            f"lost changes (sequence numbers): {len(self.lost_changes)} {self.lost_changes[:20]}",
            *self.notes,
            "nothing was lost" if lost == 0 and not self.notes else "check what was lost above",
        ]


def _base(settings: Settings, salvaged_items: dict, has_snapshot: bool) -> dict:
    """id -> (vector, metadata) before the changes: the snapshot's rows or the gallery files."""
    if has_snapshot:
        return {i: (v, m) for _, (i, m, v) in sorted(salvaged_items.items())}
    raw = load_embeddings(settings.gallery_path())
    ids = load_ids(settings.gallery_ids_path(), raw.shape[0])
    vectors = check_embeddings(raw, field=str(settings.gallery_path()))
    return {i: (v, None) for i, v in zip(ids, vectors, strict=True)}


def repair_store(settings: Settings) -> RepairReport:
    directory = store_directory(settings)
    path = directory / DB_NAME
    try:
        opened = open_store(settings)
        opened.store.close()
        return RepairReport(path, damaged=False)
    except StoreDamaged as exc:
        reason = exc.reason
    if not path.exists():  # nothing to salvage: start over from the gallery files
        salvaged_items: dict = {}
        head, changes, lost_items, lost_changes = None, {}, [], []
        notes = ["the database file is missing: the new store starts from the gallery files"]
    else:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-salvage-") as work:
            found = salvage(path, Path(work))
        salvaged_items, head, changes = found.items, found.head, found.changes
        lost_items, lost_changes, notes = found.lost_items, found.lost_changes, found.problems
    has_snapshot = (head.snapshot_items >= 0) if head else bool(salvaged_items)
    gallery = _base(settings, salvaged_items, has_snapshot)
    for seq in sorted(changes):
        change = changes[seq]
        if isinstance(change, Upsert):
            for i, v, m in zip(change.ids, change.embeddings, change.metadata, strict=True):
                gallery.pop(i, None)  # a replaced item moves to the end, as in the engine
                gallery[i] = (v, m)
        else:
            for i in change.ids:
                gallery.pop(i, None)
    last = max([head.head_seq if head else 0, *changes, *lost_changes])
    ids = tuple(gallery)
    metadata: tuple[Metadata, ...] = tuple(m for _, m in gallery.values())
    dim = next(iter(gallery.values()))[0].shape[0] if gallery else 0
    embeddings = (
        np.stack([v for v, _ in gallery.values()]) if gallery else np.zeros((0, dim), np.float32)
    )
    # one past the last change seen: the repaired gallery gets a version of its own
    snapshot = Snapshot(last + 1, ids, metadata, embeddings.astype(np.float32))
    aside = replace_store(directory, snapshot, time.strftime("damaged-%Y%m%dT%H%M%S"))
    return RepairReport(path, True, reason, aside, len(ids), lost_items, lost_changes, list(notes))
