"""First run from the command line (issue 15): clear one-line errors with the right exit
status, no secrets echoed, and the evaluation commands' safe defaults."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service import __version__
from service.cli import build_parser, main
from service.evaluation import commands as evaluation_commands
from service.logs import HumanFormatter
from service.settings import DEMO_DIR, Settings

SECRET = "s3cr3t-k3y-never-shown"


def _serve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["serve", *argv])
    status = args.func(args)
    return status, capsys.readouterr().err


def test_a_settings_error_is_one_line_naming_the_setting_without_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUBLESS_API_KEY", SECRET)
    monkeypatch.setenv("HUBLESS_PORT", "eighty")
    monkeypatch.setenv("HUBLESS_BETA_QUERY_BANK", "-1")
    status, err = _serve(capsys)
    assert status == 2
    assert err.count("\n") == 1, err
    assert "HUBLESS_PORT" in err and "HUBLESS_BETA_QUERY_BANK" in err
    assert "integer" in err and "greater than 0" in err
    assert SECRET not in err and "eighty" not in err and "Traceback" not in err


def test_a_model_level_error_names_the_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("HUBLESS_API_KEY", SECRET)
    monkeypatch.setenv("HUBLESS_GALLERY", str(tmp_path / "g.npy"))
    status, err = _serve(capsys)
    assert status == 2 and SECRET not in err and err.count("\n") == 1
    assert "HUBLESS_QUERY_BANK" in err and "HUBLESS_GALLERY_BANK" in err


def test_demo_banks_are_never_paired_with_a_user_gallery(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HUBLESS_QUERY_BANK and HUBLESS_GALLERY_BANK"):
        Settings(gallery=tmp_path / "g.npy")
    assert Settings().bank_paths() == (DEMO_DIR / "query_bank.npy", DEMO_DIR / "gallery_bank.npy")
    mine = Settings(
        gallery=tmp_path / "g.npy", query_bank=tmp_path / "q", gallery_bank=tmp_path / "b"
    )
    assert mine.bank_paths() == (tmp_path / "q", tmp_path / "b")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_data_error_at_startup_ends_the_process_with_status_1(tmp_path: Path) -> None:
    """A wrong dimension used to leave the server up forever with /readyz "failed"."""
    gallery = tmp_path / "gallery.npy"
    np.save(gallery, np.random.default_rng(0).normal(size=(10, 128)).astype(np.float32))
    env = {
        **os.environ,
        "HUBLESS_GALLERY": str(gallery),
        "HUBLESS_QUERY_BANK": str(DEMO_DIR / "query_bank.npy"),
        "HUBLESS_GALLERY_BANK": str(DEMO_DIR / "gallery_bank.npy"),
        "HUBLESS_DATA_DIR": str(tmp_path / "var"),
        "HUBLESS_PORT": str(_free_port()),
        "HUBLESS_API_KEY": SECRET,
    }
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("hubless serve: startup failed: ") and str(gallery) in last, last
    assert "dimension" in last and "Traceback" not in done.stderr and SECRET not in done.stderr


def test_version() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"hubless {__version__}"


def test_evaluate_and_tune_default_to_the_demo_and_to_var() -> None:
    for command in ("evaluate", "tune"):
        args = build_parser().parse_args([command])
        assert args.dataset == DEMO_DIR
        assert args.out.parts[0] == "var", args.out  # never docs/results unless asked


def test_a_missing_dataset_is_one_line_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        evaluation_commands._load(tmp_path / "nothing")
    message = str(exc.value.code)
    assert "no dataset at" in message and "hubless build-dataset" in message
    assert "\n" not in message


def test_human_log_lines_keep_the_structured_fields() -> None:
    record = logging.LogRecord("service.access", logging.INFO, "x", 1, "request", None, None)
    for key, value in {"method": "GET", "path": "/gallery", "status": 200, "ms": 1.5}.items():
        setattr(record, key, value)
    record.request_id = "abc"
    line = HumanFormatter().format(record)
    assert line.endswith(
        "INFO service.access [abc] request method=GET path=/gallery status=200 ms=1.5"
    )


def test_every_command_reports_settings_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "bad.env"
    params.write_text(f"HUBLESS_BETA_QUERY_BANK=zero\nHUBLESS_API_KEY={SECRET}\n")
    status = main(["evaluate", "--params", str(params), "--quiet", "--no-curve"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("hubless evaluate: invalid settings: ")
    assert "HUBLESS_BETA_QUERY_BANK" in err and SECRET not in err and "zero" not in err
