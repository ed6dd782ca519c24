"""Deployment files: no Docker engine runs here, so the compose file is validated, the image's
entry commands are parsed by the real CLI, and the entrypoint's store seeding is run outside Docker."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


def test_compose_file_is_valid_and_wires_api_worker_postgres():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"api", "worker", "postgres"} <= set(services)
    assert "prompthub-data" in doc["volumes"]
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker compose CLI on this machine")
    out = subprocess.run([*cli, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_entry_commands_parse_with_the_real_cli():
    yaml = pytest.importorskip("yaml")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = [services["api"]["command"], services["worker"]["command"]]
    cmd = re.search(r"^CMD \[(.*)\]", DOCKERFILE.read_text(), re.M).group(1)
    commands.append([c.strip().strip('"') for c in cmd.split(",")])
    for command in commands:
        assert command[0] == "prompthub"
        build_parser().parse_args(command[1:])


def test_dockerfile_copies_only_what_exists():
    for src in re.findall(r"^COPY (\S+)", DOCKERFILE.read_text(), re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies missing {part}"


def test_entrypoint_seeds_the_store_without_overwriting(tmp_path):
    shipped = tmp_path / "shipped" / "demo"
    shipped.mkdir(parents=True)
    (shipped / "v0001.safetensors").write_bytes(b"shipped")
    store = tmp_path / "store"
    (store / "demo").mkdir(parents=True)
    (store / "demo" / "v0002.safetensors").write_bytes(b"trained")
    env = {
        "PROMPTHUB_STORE_DIR": str(store),
        "PROMPTHUB_SHIPPED_DIR": str(tmp_path / "shipped"),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "echo", "started"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "started"
    assert (store / "demo" / "v0001.safetensors").read_bytes() == b"shipped"
    (store / "demo" / "v0001.safetensors").write_bytes(b"changed")
    subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh"), "true"], env=env, check=True)
    assert (store / "demo" / "v0001.safetensors").read_bytes() == b"changed"
