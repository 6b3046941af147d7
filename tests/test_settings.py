"""Settings: backend options, read-only replicas, and unknown HUBLESS_ names caught early."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from service.algorithms import METHODS, InputError, InvGCParams, NormParams
from service.algorithms.params import PARAM
from service.backends import BACKENDS, backend_factory
from service.cli import build_parser
from service.settings import REMOTE_BACKEND, Settings, unknown_variables


def test_backend_options_follow_the_backend(tmp_path: Path) -> None:
    assert Settings().backend_options() == {}
    faiss = Settings(backend="faiss", faiss_index="hnsw", faiss_ef_search=64).backend_options()
    assert faiss["index"] == "hnsw" and faiss["hnsw"]["ef_search"] == 64
    # the remote engine reads its milvus_* settings itself (service.remote.startup)
    assert Settings(backend="milvus", data_dir=tmp_path).backend_options() == {}


def test_every_single_node_backend_has_a_factory() -> None:
    for name in BACKENDS:
        assert callable(backend_factory(name, **Settings(backend=name).backend_options()))
    assert Settings(backend=REMOTE_BACKEND).remote and not Settings(backend="faiss").remote
    for name in ("annoy", REMOTE_BACKEND):  # milvus is served by service.remote, not a factory
        with pytest.raises(ValueError, match="unknown backend"):
            backend_factory(name)


def test_only_a_milvus_reader_is_read_only() -> None:
    assert not Settings().read_only
    assert not Settings(backend="milvus").read_only
    assert Settings(backend="milvus", milvus_read_only=True).read_only
    assert not Settings(backend="exact", milvus_read_only=True).read_only


def test_unknown_names_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "tuned.env"
    env.write_text("HUBLESS_BETA_QUERY_BANK=20\nHUBLESS_BETA_QUERYBANK=20\nOTHER=1\n")
    monkeypatch.setenv("HUBLESS_LOGLEVEL", "DEBUG")
    assert unknown_variables(env) == (["HUBLESS_BETA_QUERYBANK"], ["HUBLESS_LOGLEVEL"])


def test_serve_refuses_an_env_file_with_a_typo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = tmp_path / "tuned.env"
    env.write_text("HUBLESS_DEFAULT_METHD=nnn\n")
    args = build_parser().parse_args(["serve", "--env-file", str(env)])
    assert args.func(args) == 2
    assert "HUBLESS_DEFAULT_METHD" in capsys.readouterr().err


def test_faiss_ivf_options_reach_the_backend() -> None:
    options = Settings(backend="faiss", faiss_index="ivf", faiss_ivf_nprobe=8).backend_options()
    assert options["index"] == "ivf" and options["ivf"] == {"nlist": None, "nprobe": 8}


# --- one source of truth: the algorithm parameter types -----------------------------------------

#: settings field of each InvGCParams field whose name differs
_RENAMED = {"adjacency": "invgc_adjacency"}


@pytest.mark.parametrize("params", [NormParams, InvGCParams], ids=lambda c: c.__name__)
def test_settings_derive_defaults_bounds_and_descriptions_from_the_parameter_types(
    params: type,
) -> None:
    defaults = params()
    for f in fields(params):
        info = Settings.model_fields[_RENAMED.get(f.name, f.name)]
        spec = f.metadata[PARAM]
        assert info.default == getattr(defaults, f.name), f.name
        assert info.description == spec.description, f.name
        bounds = {
            k: getattr(m, k) for m in info.metadata for k in ("gt", "ge", "le") if hasattr(m, k)
        }
        assert bounds == spec.bounds(), f.name


def test_default_settings_give_the_default_parameters() -> None:
    settings = Settings()
    assert settings.norm_params() == NormParams()
    assert settings.invgc_params() == InvGCParams()


def test_method_and_backend_names_come_from_their_registries() -> None:
    assert get_args(Settings.model_fields["default_method"].annotation) == METHODS
    assert get_args(Settings.model_fields["backend"].annotation) == (*BACKENDS, REMOTE_BACKEND)


@pytest.mark.parametrize(
    ("name", "value"),
    [("beta_query_bank", 0), ("dis_topk", 0), ("pool_rate", 1.5), ("dbsn_iterations", 10**6)],
)
def test_out_of_bounds_settings_are_refused_by_name(name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})
    with pytest.raises(InputError, match=_RENAMED.get(name, name)):
        (InvGCParams if name == "pool_rate" else NormParams)(**{name: value})
