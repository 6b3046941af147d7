"""The Dockerfile, read statically (no Docker engine here): two stages, a runtime on
python:3.11-slim without build tools, a non-root user, the settings' port, the console script
pyproject declares, and a HEALTHCHECK whose command works against a running server."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from service.cli import build_parser
from service.harness import Server, free_port
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def _instructions(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    result = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
    return result


def _stages(instructions: list[Instruction]) -> tuple[dict[str, str], list[list[Instruction]]]:
    """Global ARG defaults, and the instructions of each stage (each starts with its FROM)."""
    args, stages = {}, []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            stages.append([instruction])
        elif stages:
            stages[-1].append(instruction)
        elif instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name] = default
    return args, stages


def _env(stage: list[Instruction]) -> dict[str, str]:
    env = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def _one(stage: list[Instruction], keyword: str) -> Instruction:
    (found,) = [i for i in stage if i.keyword == keyword]
    return found


ARGS, STAGES = _stages(_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8")))
BUILDER, RUNTIME = STAGES[0], STAGES[-1]
RUNTIME_ENV = _env(RUNTIME)


def _image(stage: list[Instruction]) -> tuple[str, str]:
    """(resolved base image, stage name) of a stage's FROM."""
    image, *rest = stage[0].args.split()
    image = re.sub(r"\$\{(\w+)\}", lambda m: ARGS[m.group(1)], image)
    return image, rest[-1] if rest and rest[0].upper() == "AS" else ""


def test_two_stages_on_python_311_slim() -> None:
    assert len(STAGES) == 2
    assert _image(BUILDER) == ("python:3.11-slim", "builder")
    assert _image(RUNTIME)[0] == "python:3.11-slim"
    requires = PYPROJECT["project"]["requires-python"]
    assert ">=3.11" in requires  # the image's Python is one the package supports


def test_builder_installs_the_package_without_test_extras_or_cache() -> None:
    runs = " ".join(i.args for i in BUILDER if i.keyword == "RUN")
    assert 'pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"' in runs, runs
    assert ARGS["EXTRAS"] in ("", '""'), "no extras unless the build asks for them"
    assert "[test]" not in runs and "-e " not in runs


def test_runtime_has_no_build_tools_and_copies_the_built_environment() -> None:
    runs = " ".join(i.args for i in RUNTIME if i.keyword == "RUN")
    for tool in ("gcc", "build-essential", "pip install", "curl", "wget"):
        assert tool not in runs, f"{tool} in the runtime stage"
    copies = [i.args for i in RUNTIME if i.keyword == "COPY"]
    assert any(c.startswith("--from=builder") for c in copies)


def test_runs_as_a_fixed_non_root_user_matching_the_kubernetes_manifest() -> None:
    user = _one(RUNTIME, "USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid))
    # USER comes after every step that needs root
    position = RUNTIME.index(_one(RUNTIME, "USER"))
    assert all(i.keyword != "RUN" for i in RUNTIME[position:])


def test_port_host_and_data_dir_are_the_settings() -> None:
    port = Settings.model_fields["port"].default
    assert _one(RUNTIME, "EXPOSE").args == str(port)
    assert RUNTIME_ENV["HUBLESS_HOST"] == "0.0.0.0"
    assert RUNTIME_ENV["HUBLESS_DATA_DIR"] == "/data"
    assert RUNTIME_ENV.get("HUBLESS_PORT", str(port)) == str(port)
    for name in RUNTIME_ENV:
        if name.startswith("HUBLESS_"):
            assert name.removeprefix("HUBLESS_").lower() in Settings.model_fields, name
    assert json.loads(_one(RUNTIME, "VOLUME").args) == [RUNTIME_ENV["HUBLESS_DATA_DIR"]]


def test_cmd_is_the_declared_console_script_serving() -> None:
    command = json.loads(_one(RUNTIME, "CMD").args)
    script, *argv = command
    assert PYPROJECT["project"]["scripts"][script] == "service.cli:main"
    assert build_parser().parse_args(argv).command == "serve"


def test_build_context_has_what_the_image_needs_and_not_more() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(path: str) -> bool:
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(p, pattern) for pattern in ignored for p in prefixes)

    sources = [i.args.split()[:-1] for i in BUILDER if i.keyword == "COPY"]
    for source in (s for group in sources for s in group):
        assert (ROOT / source).exists(), source
        assert not excluded(source), f"{source} is excluded by .dockerignore"
    assert PYPROJECT["project"]["readme"] in {s for group in sources for s in group}
    # the bundled demo dataset is package data, so `docker run IMAGE` serves it
    assert "data/demo/*" in PYPROJECT["tool"]["setuptools"]["package-data"]["service"]
    for name in ("gallery.npy", "gallery_ids.txt", "query_bank.npy", "gallery_bank.npy"):
        demo = f"service/data/demo/{name}"
        assert (ROOT / demo).is_file() and not excluded(demo), demo
    for junk in (".git", ".venv", "tests", "var"):
        assert excluded(junk), f"{junk} is sent to the Docker build context"


#: distribution name -> import name, where they differ
IMPORT_NAMES = {"faiss-cpu": "faiss", "milvus-lite": "milvus_lite", "pyyaml": "yaml"}

BLOCKED_IMPORTS = """
import importlib.abc, sys, tempfile
from pathlib import Path

class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed in the image")

sys.meta_path.insert(0, NotInTheImage())
from service.cli import build_parser
from service.app import create_app
from service.engine.startup import load_engine
from service.settings import Settings

assert build_parser().parse_args(["serve"]).command == "serve"
create_app(Settings(), configure_logs=False)
print(load_engine(Settings(data_dir=Path(tempfile.mkdtemp()))).state.size)
"""


def test_serving_needs_no_optional_dependency() -> None:
    """The image installs only the base dependencies (`pip install .`): the serve command, the
    app and the engine on the bundled demo load with every extra's module unimportable."""
    extras = PYPROJECT["project"]["optional-dependencies"].values()
    names = {re.split(r"[\[<>=~; ]", req)[0].lower() for group in extras for req in group}
    blocked = {IMPORT_NAMES.get(n, n.replace("-", "_")) for n in names - {"hubless"}}
    code = f"BLOCKED = {sorted(blocked)!r}\n{BLOCKED_IMPORTS}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBLESS_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "2000"  # the demo gallery


def _healthcheck(port: int) -> subprocess.CompletedProcess[bytes]:
    """Run the HEALTHCHECK's command as the container would (its python, the image's env)."""
    instruction = _one(RUNTIME, "HEALTHCHECK").args
    program, flag, code = shlex.split(instruction.split(" CMD ", 1)[1])
    assert (program, flag) == ("python", "-c")
    env = {**os.environ, "HUBLESS_PORT": str(port)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)


def test_healthcheck_passes_on_a_live_server_and_fails_without_one(tmp_path: Path) -> None:
    """The image's ENV and CMD, run here: `hubless serve` with no data settings serves the
    bundled demo, and the HEALTHCHECK command tells a live server from a dead port."""
    instruction = _one(RUNTIME, "HEALTHCHECK").args
    assert "/healthz" in instruction and "urllib" in instruction
    env = {k: v for k, v in RUNTIME_ENV.items() if k.startswith("HUBLESS_")}
    del env["HUBLESS_DATA_DIR"]  # Server puts it under tmp_path instead of /data
    env["HUBLESS_HOST"] = "127.0.0.1"  # tests bind loopback only
    with Server(tmp_path / "data", env) as server:
        assert _healthcheck(server.port).returncode == 0
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["gallery_size"] == 2000  # the bundled demo dataset
    dead = _healthcheck(free_port())
    assert dead.returncode != 0
    assert b"Connection refused" in dead.stderr or b"URLError" in dead.stderr
