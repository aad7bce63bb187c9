"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (offline,
strict), the compose file names services, volumes and files that exist, both hand the
hub settings it can load (secrets from the environment only), and the edge box's systemd
unit passes ``systemd-analyze verify`` with a low exposure score."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from lineside_inspect.config import hash_key
from lineside_inspect.fleet.hub.config import load_hub_settings
from lineside_inspect.server.routes import health

from .conftest import ROOT

DEPLOY = ROOT / "deploy"
BOX_KEY = "box-1-secret"
# the oldest Kubernetes still in upstream support when this was written, and the newest
# the validator knows
K8S_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
HUB_ENV = {"LINESIDE_HUB_DATABASE_URL": "postgresql+psycopg://lineside:pw@postgres:5432/lineside",
           "LINESIDE_HUB_OBJECTS__ACCESS_KEY": "access", "LINESIDE_HUB_OBJECTS__SECRET_KEY": "secret",
           "LINESIDE_HUB_API_KEYS": '[{"name": "box-1", "role": "box", "sha256": "'
                                    + hash_key(BOX_KEY) + '"}]'}


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(kind: str) -> dict[str, Any]:
    found = [d for _, d in _manifests() if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def _hub_settings(path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # the hub's own bind check, as lineside hub runs it: keys are set, so 0.0.0.0 is allowed
    settings = load_hub_settings(path, host="0.0.0.0")
    settings.server_settings().check_bind()
    return settings


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate(version: str) -> None:
    kinds = []
    for name, doc in _manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message} at {list(exc.path)}")
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim",
                             "Service"]


def test_k8s_manifests_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deployment, service = _kind("Deployment"), _kind("Service")
    config_map, claim = _kind("ConfigMap"), _kind("PersistentVolumeClaim")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert _kind("NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
    # one hub per data folder: never two pods on the volume at once
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # the command reads the ConfigMap's file where it is mounted
    args = container["args"]
    assert args[:3] == ["lineside", "hub", "--config"]
    config_path = Path(args[3])
    assert config_path.parent == Path(mounts["config"]) and config_path.name in config_map["data"]
    probes = {container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes <= {r.path for r in health.router.routes}  # type: ignore[attr-defined]
    # the ConfigMap's settings with the Secret's values under the names the pod gives them
    env = {e["name"]: HUB_ENV[e["name"]] for e in container["env"]}
    (tmp_path / "hub.yaml").write_text(config_map["data"]["hub.yaml"])
    settings = _hub_settings(tmp_path / "hub.yaml", env, monkeypatch)
    assert settings.database_url == HUB_ENV["LINESIDE_HUB_DATABASE_URL"]
    assert settings.objects.secret_key.get_secret_value() == "secret"
    assert [k.name for k in settings.api_keys] == ["box-1"]
    assert settings.data_dir == mounts["data"] and settings.port == ports["http"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    # SIGTERM, then a kill after the grace period (30 s unless given): past the hub's
    # drain_s and uvicorn's 30 s for requests in flight, so its own stop ends first
    assert pod["spec"].get("terminationGracePeriodSeconds", 30) > settings.drain_s + 30


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _substitute(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR} and ${VAR:?message} interpolation."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise KeyError(m.group(1))
        return env[m.group(1)]

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?::\?[^}]*)?\}", one, value)


def test_compose_names_what_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _compose()
    folder = DEPLOY / "compose"
    services = doc["services"]
    assert set(services) == {"postgres", "seaweedfs", "hub"}
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (folder / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in doc["volumes"], f"{name} mounts undeclared volume {source}"
    hub = services["hub"]
    context = (folder / hub["build"]["context"]).resolve()
    dockerfile = context / hub["build"]["dockerfile"]
    assert context == ROOT and dockerfile.is_file()
    for line in dockerfile.read_text().splitlines():  # everything the image copies exists
        if line.startswith("COPY "):
            assert all((context / src).exists() for src in line.split()[1:-1]), line
    # every ${VAR} the file uses is one env.example asks for
    example = dict(line.split("=", 1) for line in (folder / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (folder / "compose.yaml").read_text()))
    assert used == set(example)
    # the hub's settings: the mounted file with compose's environment, interpolated
    values = {"POSTGRES_PASSWORD": "pw", "S3_ACCESS_KEY": "access", "S3_SECRET_KEY": "secret",
              "HUB_API_KEYS": HUB_ENV["LINESIDE_HUB_API_KEYS"]}
    env = {k: _substitute(v, values) for k, v in hub["environment"].items()}
    mounted = {v.split(":")[1]: folder / v.split(":")[0] for v in hub["volumes"] if v.startswith(".")}
    config = hub["command"][hub["command"].index("--config") + 1]
    settings = _hub_settings(mounted[config], env, monkeypatch)
    # its object store and database are the compose services, on the ports they serve
    s3_host, s3_port = settings.objects.endpoint.split(":")
    assert s3_host == "seaweedfs" and f"-s3.port={s3_port}" in services["seaweedfs"]["command"]
    assert "@postgres:5432/lineside" in settings.database_url
    assert settings.objects.access_key.get_secret_value() == \
        _substitute(services["seaweedfs"]["environment"]["AWS_ACCESS_KEY_ID"], values)
    assert f"{settings.port}:{settings.port}" in hub["ports"]
    assert any(v.endswith(f":{settings.data_dir}") for v in hub["volumes"])


def test_compose_validates_with_docker_compose(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (Debian's package) is not installed: the compose "
                    "schema check needs it")
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=pw\nS3_ACCESS_KEY=a\nS3_SECRET_KEY=s\nHUB_API_KEYS='[]'\n")
    done = subprocess.run([tool, "--env-file", str(env_file), "-f",
                           str(DEPLOY / "compose" / "compose.yaml"), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_systemd_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package has it)")
    unit = (DEPLOY / "systemd" / "lineside.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) serve --config ", unit, re.M)
    assert exec_start is not None
    # verify checks that the command exists: point it at this checkout's lineside
    lineside = shutil.which("lineside") or str(Path(ROOT / ".venv" / "bin" / "lineside"))
    copy = tmp_path / "lineside.service"
    copy.write_text(unit.replace(exec_start.group(1), lineside))
    done = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # unknown keys and bad values are warnings with exit status 0: none may appear
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr
    security = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(copy)],
                              capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for lineside\.service: ([0-9.]+)", security.stdout)
    assert level is not None, security.stdout[-500:] + security.stderr
    assert float(level.group(1)) <= 2.0  # systemd calls up to 2.0 "OK"; unhardened is 9.6
    for option in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                   "StateDirectory=lineside", "Environment=LINESIDE_DATA_DIR=/var/lib/lineside"):
        assert option in unit.splitlines()


def test_compose_hub_settings_serve(tmp_path: Path, postgres: str, weed: Any) -> None:
    """``lineside hub`` (a real process) on the compose file's hub.yaml, its secrets only in
    the environment as compose passes them, against a real PostgreSQL and SeaweedFS: ready.
    Only what must differ on a test machine is changed: the object store's address and
    bucket, the data folder, the database, the port."""
    import os
    import uuid

    import httpx
    from sqlalchemy import create_engine, text

    from .server_process import ServerProcess, free_port

    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    doc = yaml.safe_load((DEPLOY / "compose" / "hub.yaml").read_text())
    store = weed.settings("deploy-test")
    doc["objects"].update(endpoint=store["endpoint"], bucket=store["bucket"])
    doc["data_dir"] = str(tmp_path / "hub")
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(doc))
    values = {"POSTGRES_PASSWORD": "unused", "S3_ACCESS_KEY": store["access_key"],
              "S3_SECRET_KEY": store["secret_key"], "HUB_API_KEYS": HUB_ENV["LINESIDE_HUB_API_KEYS"]}
    env = {k: _substitute(v, values) for k, v in _compose()["services"]["hub"]["environment"].items()}
    env["LINESIDE_HUB_DATABASE_URL"] = f"{postgres}/{name}"
    port = free_port()
    lineside = shutil.which("lineside") or str(ROOT / ".venv" / "bin" / "lineside")
    with ServerProcess([lineside, "hub", "--config", str(tmp_path / "hub.yaml"), "--host",
                        "127.0.0.1", "--port", str(port)], tmp_path / "hub.log", port,
                       env={**os.environ, **env}, new_session=True):
        # the API keys came from the environment: the box's key is known (a box may not
        # list the fleet: 403), no key is refused (401)
        boxes = f"http://127.0.0.1:{port}/fleet/v1/boxes"
        assert httpx.get(boxes, timeout=5).status_code == 401
        known = httpx.get(boxes, headers={"Authorization": f"Bearer {BOX_KEY}"}, timeout=5)
        assert known.status_code == 403, known.text


def _healthcheck_code(dockerfile: Path) -> str:
    """The Python the image's ``HEALTHCHECK CMD python -c "..."`` runs."""
    text = dockerfile.read_text().replace("\\\n", " ")
    found = re.search(r"^HEALTHCHECK .*?\bCMD (.+)$", text, re.M)
    assert found is not None, dockerfile
    args = shlex.split(found.group(1))
    assert args[:2] == ["python", "-c"] and len(args) == 3, args
    return args[2]


class _Readyz:
    """A loopback HTTP server answering ``/readyz`` with ``status``: what a probe sees."""

    def __init__(self, status: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status if self.path == "/readyz" else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_hub_image_healthcheck_probes_the_port_the_hub_listens_on(tmp_path: Path) -> None:
    """The hub listens on its settings file's ``port`` (the file wins over
    LINESIDE_HUB_PORT for the hub): the HEALTHCHECK probes that port, not a fixed 8100
    (a hub on another port was 'unhealthy' while it served; deploy review)."""
    code = _healthcheck_code(DEPLOY / "hub" / "Dockerfile")
    assert "/etc/lineside/hub.yaml" in code  # the file the image's CMD reads
    ready, starting = _Readyz(200), _Readyz(503)
    try:
        def probe(port: int | None, env_port: int | None = None) -> int:
            config = tmp_path / "hub.yaml"
            config.write_text(yaml.safe_dump({"data_dir": "/var/lib/lineside-hub"}
                                             | ({"port": port} if port else {})))
            env = {k: v for k, v in os.environ.items() if k != "LINESIDE_HUB_PORT"}
            if env_port:
                env["LINESIDE_HUB_PORT"] = str(env_port)
            done = subprocess.run([sys.executable, "-c",
                                   code.replace("/etc/lineside/hub.yaml", str(config))],
                                  capture_output=True, text=True, timeout=30, env=env)
            return done.returncode

        assert probe(ready.port) == 0
        assert probe(ready.port, env_port=starting.port) == 0  # the file's port wins
        assert probe(None, env_port=ready.port) == 0  # no port in the file: the variable's
        assert probe(starting.port) != 0  # not ready: unhealthy
    finally:
        ready.close()
        starting.close()


def test_edge_image_healthcheck_probes_lineside_port() -> None:
    """The edge image sets LINESIDE_PORT, which wins over a mounted config's ``port``:
    its HEALTHCHECK probes that variable's port."""
    code = _healthcheck_code(ROOT / "Dockerfile")
    ready = _Readyz(200)
    try:
        env = {**os.environ, "LINESIDE_PORT": str(ready.port)}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=30, env=env)
        assert done.returncode == 0, done.stderr
    finally:
        ready.close()


@pytest.mark.parametrize("dockerfile, data_dir", [("Dockerfile", "/var/lib/lineside"),
                                                  ("deploy/hub/Dockerfile", "/var/lib/lineside-hub")])
def test_each_image_keeps_its_data_folder_in_a_volume(dockerfile: str, data_dir: str) -> None:
    """A bare ``docker run`` of the hub image kept its lock and store journal in the
    container, lost when it was made anew (deploy review): both images declare theirs."""
    text = (ROOT / dockerfile).read_text()
    assert re.search(rf"^VOLUME {re.escape(data_dir)}$", text, re.M), dockerfile
    assert data_dir in text.split("VOLUME", 1)[0]  # made (and owned) before it is declared
