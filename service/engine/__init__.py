"""The served state: gallery snapshots, searches, atomic durable changes, diagnostics."""

from service.engine.diagnostics import Diagnostics, diagnose, probe_sample
from service.engine.engine import (
    ChangeResult,
    Engine,
    HubWarning,
    SearchResult,
    SuspectedHubError,
)
from service.engine.state import GalleryState, UnknownIdError
from service.io import DataError

__all__ = [
    "ChangeResult",
    "DataError",
    "Diagnostics",
    "Engine",
    "GalleryState",
    "HubWarning",
    "SearchResult",
    "SuspectedHubError",
    "UnknownIdError",
    "diagnose",
    "probe_sample",
]
