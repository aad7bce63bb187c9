"""What a new user meets first: settings from the environment taken as the README says
and errors naming where a bad value came from, ``data pull`` against a server it cannot
reach, ``data import --help`` at 80 columns, ``calibrate-unchanged`` naming its files."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lineside_inspect.cli import app
from lineside_inspect.config import hash_key, load_settings
from lineside_inspect.dataset.importers import IMPORTERS
from lineside_inspect.errors import ConfigError
from lineside_inspect.fleet.hub.config import load_hub_settings

ROOT = Path(__file__).resolve().parents[2]
STATION = ROOT / "configs" / "line"
KEYS_JSON = '[{"name": "l", "role": "line", "key": "k"}]'


def _serve_yaml(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(f"models: []\ndata_dir: {tmp_path / 'data'}\n{extra}")
    return path


# ---------------------------------------------------------------- settings
def test_plain_api_keys_from_the_environment_are_hashed_as_from_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_file = load_settings(_serve_yaml(
        tmp_path, "api_keys:\n  - {name: l, role: line, key: k}\n")).api_keys
    monkeypatch.setenv("LINESIDE_API_KEYS", KEYS_JSON)
    from_env = load_settings(_serve_yaml(tmp_path)).api_keys
    assert from_env == from_file
    assert [(k.name, k.role, k.sha256) for k in from_env] == [("l", "line", hash_key("k"))]
    assert "k" not in {getattr(k, "key", None) for k in from_env}  # never kept as given


def test_an_api_key_name_is_one_line_of_at_most_128_characters(tmp_path: Path) -> None:
    """The name is the reviewer of every review the key saves: a hub's review events hold
    128 characters, and a longer name failed every hub-reviews pull that carried it."""
    for name, said in (("x" * 129, "at most 128 characters"), ("", "at least 1 character"),
                       ("a\\nb", "control character")):
        with pytest.raises(ConfigError, match=said):
            load_settings(_serve_yaml(
                tmp_path, f'api_keys:\n  - {{name: "{name}", role: line, key: k}}\n'))
    assert load_settings(_serve_yaml(
        tmp_path, f"api_keys:\n  - {{name: {'x' * 128}, role: line, key: k}}\n")).api_keys


FLEET_YAML = "fleet:\n  hub_url: https://hub.plant:8100\n  line: press-1\n  site: plant-a\n"
HUB_TOKEN = "box-1-key-0123456789"


@pytest.mark.parametrize("name, value", [("LINESIDE_FLEET__TOKEN", HUB_TOKEN),
                                         ("LINESIDE_FLEET", json.dumps({"token": HUB_TOKEN}))])
def test_the_hub_token_from_the_environment_keeps_the_files_fleet_section(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """The systemd unit keeps the hub token in its EnvironmentFile, the rest of ``fleet``
    in serve.yaml. LINESIDE_FLEET__TOKEN was ignored, and LINESIDE_FLEET='{"token": ...}'
    replaced the whole section: no hub_url, a box that silently forwarded nothing
    (deploy review). One setting of a section comes from the environment, the others
    from the file."""
    monkeypatch.setenv(name, value)
    fleet = load_settings(_serve_yaml(tmp_path, FLEET_YAML)).fleet
    assert fleet.hub_url == "https://hub.plant:8100"
    assert (fleet.line, fleet.site) == ("press-1", "plant-a")
    assert fleet.token is not None and fleet.token.get_secret_value() == HUB_TOKEN


def test_a_section_setting_from_the_environment_wins_and_a_typo_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINESIDE_FLEET__LINE", "press-2")
    fleet = load_settings(_serve_yaml(tmp_path, FLEET_YAML)).fleet
    assert (fleet.line, fleet.site, fleet.hub_url) == ("press-2", "plant-a", "https://hub.plant:8100")
    monkeypatch.setenv("LINESIDE_FLEET__TOKN", HUB_TOKEN)  # refused, not ignored
    with pytest.raises(ConfigError) as exc:
        load_settings(_serve_yaml(tmp_path, FLEET_YAML))
    assert "LINESIDE_FLEET__TOKN" in exc.value.message and HUB_TOKEN not in exc.value.message


def test_hub_plain_api_keys_from_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\ndata_dir: {tmp_path}\n"
                   "objects: {endpoint: '127.0.0.1:9', access_key: a, secret_key: s}\n")
    monkeypatch.setenv("LINESIDE_HUB_API_KEYS", '[{"name": "box1", "role": "box", "key": "k"}]')
    keys = load_hub_settings(hub).api_keys
    assert [(k.name, k.role, k.sha256) for k in keys] == [("box1", "box", hash_key("k"))]


@pytest.mark.parametrize(("endpoint", "words"), [
    ("http://127.0.0.1:8333", "without a scheme (set secure: true for HTTPS)"),
    ("127.0.0.1:8333/bucket", "is not host:port"), ("s3.plant:70000", "is not host:port")])
def test_the_hubs_object_store_endpoint_is_checked(tmp_path: Path, endpoint: str,
                                                  words: str) -> None:
    """A URL where host:port belongs stopped the hub's start-up with a 60-line traceback
    about a path (fleet review, session 32)."""
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\ndata_dir: {tmp_path}\n"
                   f"objects: {{endpoint: '{endpoint}', access_key: a, secret_key: s}}\n")
    with pytest.raises(ConfigError) as exc:
        load_hub_settings(hub)
    assert "objects.endpoint" in exc.value.message and words in exc.value.message


def test_a_compose_service_name_is_an_endpoint(tmp_path: Path) -> None:
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\ndata_dir: {tmp_path}\n"
                   "objects: {endpoint: 'minio_1:9000', access_key: a, secret_key: s}\n")
    assert load_hub_settings(hub).objects.endpoint == "minio_1:9000"


def test_a_bad_setting_names_where_it_came_from(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = _serve_yaml(tmp_path, "max_concurrency: 2\nmax_queue: -1\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(config))}: max_queue: Input should be"):
        load_settings(config)  # the file's own bad value names the file
    monkeypatch.setenv("LINESIDE_MAX_CONCURRENCY", "abc")
    with pytest.raises(ConfigError) as exc:
        load_settings(_serve_yaml(tmp_path, "max_concurrency: 2\n"))
    assert exc.value.message.startswith(
        "LINESIDE_MAX_CONCURRENCY: Input should be a valid integer"), exc.value.message
    monkeypatch.delenv("LINESIDE_MAX_CONCURRENCY")
    monkeypatch.setenv("LINESIDE_API_KEYS", "not json")  # was a SettingsError traceback
    with pytest.raises(ConfigError, match=r"^LINESIDE_API_KEYS: not valid JSON"):
        load_settings(_serve_yaml(tmp_path))
    monkeypatch.setenv("LINESIDE_API_KEYS", '[{"name": "l", "role": "boss", "key": "k"}]')
    with pytest.raises(ConfigError, match=r"^LINESIDE_API_KEYS: 0\.role: Input should be"):
        load_settings(_serve_yaml(tmp_path))


def test_hub_errors_name_the_file_when_the_file_wins(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's file wins over its environment: a bad value in both is the file's."""
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\ndata_dir: {tmp_path}\n"
                   "objects: {endpoint: '127.0.0.1:9', access_key: a, secret_key: s}\n"
                   "max_body_bytes: -1\n")
    monkeypatch.setenv("LINESIDE_HUB_MAX_BODY_BYTES", "-2")
    monkeypatch.setenv("LINESIDE_HUB_PORT", "x")
    with pytest.raises(ConfigError) as exc:
        load_hub_settings(hub)
    assert "LINESIDE_HUB_PORT: Input should be a valid integer" in exc.value.message
    assert f"{hub}: max_body_bytes:" in exc.value.message


def test_serve_command_names_the_environment_variable(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["serve", "--config", str(_serve_yaml(tmp_path))],
                             env={"LINESIDE_MAX_CONCURRENCY": "abc"})
    assert res.exit_code == 2, res.output
    assert "error: LINESIDE_MAX_CONCURRENCY: Input should be a valid integer" in res.output


def test_serve_with_no_model_named_says_how_to_name_one(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An edge install's first `lineside serve` outside a checkout: the default model is
    the checkout's bundled one, which is not there (it said only "models/deeppcb/1: model
    package folder not found", a folder the user never named)."""
    monkeypatch.delenv("LINESIDE_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["serve", "--port", "8000"],
                             env={"LINESIDE_DATA_DIR": str(tmp_path / "data")})
    assert res.exit_code == 2, res.output
    assert "error: no model to serve: give --model PACKAGE_FOLDER or --config FILE" in res.output
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("recipe, problem", [
    ("critical: [scrach]", "recipe typo: critical names unknown class 'scrach'"),
    ("max_count: {short: 1}\nmodel_version: '9'",
     "recipe typo: model deeppcb has no configured version '9' (1)"),
    ("unchanged_gate: {floor: 16.5}", "recipe typo: unchanged_gate compares each frame with "
     "its reference, and model deeppcb takes no reference"),
])
def test_a_recipe_its_model_cannot_serve_is_one_line_before_start(tmp_path: Path, recipe: str,
                                                                    problem: str) -> None:
    """A typo in a recipe's critical list was a 79-line traceback from uvicorn's lifespan
    and exit code 3 (training review, session 33): it is the CLI's one error line."""
    (tmp_path / "r.yaml").write_text(f"name: typo\nversion: '1'\nmodel: deeppcb\n{recipe}\n")
    config = _serve_yaml(tmp_path, f"models: [{ROOT / 'models' / 'deeppcb' / '1'}]\n"
                                   f"recipes: [{tmp_path / 'r.yaml'}]\n")
    config.write_text(config.read_text().replace("models: []\n", ""))
    res = CliRunner().invoke(app, ["serve", "--config", str(config), "--port", "9"])
    assert res.exit_code == 2, res.output
    assert f"error: {problem}" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------- data pull
@pytest.fixture
def plain_http() -> Iterator[int]:
    """A plain-HTTP server (a TLS client's handshake gets an HTTP error page back)."""
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case", ["refused", "invalid", "tls"])
def test_data_pull_from_an_unreachable_server_is_one_line(case: str, plain_http: int,
                                                          tmp_path: Path) -> None:
    url, reason = {"refused": (f"http://127.0.0.1:{_closed_port()}", "ConnectError"),
                   "invalid": ("http://[::1", "not a valid URL"),
                   "tls": (f"https://127.0.0.1:{plain_http}", "SSL")}[case]
    res = CliRunner().invoke(app, ["data", "pull", url, str(tmp_path / "out"), "--key", "k"])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and url in lines[0], res.output
    assert reason in lines[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- help and calibration
def test_data_import_help_lists_every_format_at_80_columns() -> None:
    res = CliRunner().invoke(app, ["data", "import", "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    assert max(len(line) for line in res.output.splitlines()) <= 80  # really 80 wide
    for fmt in IMPORTERS:
        assert f" {fmt}," in res.output or f" {fmt} " in res.output, (fmt, res.output)
    # --follow-links says what it reads and what happens without it ("refused without:"
    # read as a fragment, session 53 review)
    said = " ".join(res.output.replace("│", " ").split())
    assert ("read the files that symbolic links in SRC point to outside SRC (without it such links "
            "are refused: a set from elsewhere may point at your private files; links to folders "
            "outside SRC are followed either way)") in said


def test_no_option_help_shows_a_python_type_and_serve_says_where_settings_come_from() -> None:
    """``serve --help`` showed ``--model <list[str]>`` (a repeatable option, not a list to
    give), and nothing of the environment's settings (where the store goes) or of model
    versions kept across a restart (new-user review, session 47)."""
    import typer

    def commands(cmd: Any, path: list[str]) -> Iterator[list[str]]:
        if hasattr(cmd, "commands"):  # a group (typer's own click: no isinstance)
            for name, sub in cmd.commands.items():
                yield from commands(sub, [*path, name])
        else:
            yield path

    root = typer.main.get_command(app)
    seen = 0
    for path in commands(root, []):
        res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        options = [line for line in res.output.splitlines() if line.lstrip().startswith("-")]
        assert not [o for o in options if "list[" in o], (path, options)
        seen += 1
    assert seen >= 20
    res = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    said = " ".join(res.output.split())
    assert "--model PACKAGE " in said and "--recipe RECIPE_YAML " in said, said
    assert "LINESIDE_DATA_DIR" in said and "DATA_DIR/lifecycle/models.json" in said, said
    assert "logs the address it listens on" in said, said


def test_calibrate_unchanged_names_the_missing_path_and_the_bad_frame(tmp_path: Path) -> None:
    ref = str(STATION / "station1-reference.jpg")
    missing = tmp_path / "nonexistent"
    res = CliRunner().invoke(app, ["calibrate-unchanged", ref, str(missing)])
    assert res.exit_code == 2 and f"{missing}: no such file or folder" in res.output, res.output
    res = CliRunner().invoke(app, ["calibrate-unchanged", ref, str(tmp_path)])  # no images there
    assert res.exit_code == 2 and str(tmp_path) in res.output, res.output
    bad = STATION / "station1" / "part-0002.jpg"  # a defective part among good frames
    res = CliRunner().invoke(app, ["calibrate-unchanged", ref, ref, str(bad)])
    assert res.exit_code == 2 and f"{bad}: good frame 2 differs" in res.output, res.output


def test_hash_key_reads_standard_input_makes_keys_and_refuses_short_ones() -> None:
    """`lineside hash-key -` hashed the key "-"; a key on the command line stays in the
    shell's history; a 5-character key was taken (deploy review, session 33)."""
    key = "a-long-enough-api-key-1234"
    for args in (["hash-key", "-"], ["hash-key"]):
        res = CliRunner().invoke(app, args, input=key + "\n")
        assert res.exit_code == 0 and res.output.strip() == hash_key(key), res.output
    res = CliRunner().invoke(app, ["hash-key", "short"])
    assert res.exit_code == 2 and "a key of 5 characters is guessable" in res.output
    res = CliRunner().invoke(app, ["hash-key", "--new"])
    made, digest = (ln.split()[1] for ln in res.output.splitlines())
    assert res.exit_code == 0 and len(made) >= 32 and digest == hash_key(made)


def test_the_runtime_calls_nobody() -> None:
    """onnxruntime's telemetry is on by default on Linux: every session looked up
    mobile.events.data.microsoft.com (deploy review, session 33). The package turns it off
    before onnxruntime is first imported; a value the operator set stands."""
    import os
    import subprocess
    import sys

    code = ("import os, sys, lineside_inspect.runtime.session\n"
            "assert 'onnxruntime' in sys.modules\n"
            "print(os.environ.get('ORT_DISABLE_TELEMETRY'))\n")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr


def test_a_postgresql_store_without_its_driver_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "psycopg" else real(name, *a))
    config = _serve_yaml(tmp_path, "database_url: postgresql+psycopg://u:p@127.0.0.1:1/db\n")
    res = CliRunner().invoke(app, ["serve", "--config", str(config), "--port", "9"])
    assert res.exit_code == 2, res.output
    assert "whose driver (psycopg) is not installed" in res.output and "postgres]" in res.output


def test_no_writable_temporary_folder_is_one_line_before_serving(tmp_path: Path) -> None:
    """``docker run --read-only`` without ``--tmpfs /tmp``: /tmp, /var/tmp and the working
    folder read-only. The server started and answered small frames; every multipart upload
    over 1 MiB (spooled to a temporary file) was a 500 with tempfile's traceback in the log
    (session 52, the image under podman). Now one line at start naming what to add. A real
    ``lineside serve`` in a private mount namespace where those folders are read-only."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode:
        pytest.skip("needs a private mount namespace (unshare -m, as root)")
    config = _serve_yaml(tmp_path)
    (tmp_path / "spool").mkdir()
    folders = [d for d in ("/tmp", "/var/tmp", "/usr/tmp", str(tmp_path)) if os.path.isdir(d)]
    read_only = " && ".join(f'mount --bind "{d}" "{d}" && mount -o remount,bind,ro "{d}"'
                            for d in folders)
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}

    def serve(first: str, port: int) -> subprocess.CompletedProcess[str]:
        run = (f'"{sys.executable}" -c "from lineside_inspect.cli import app; app()" '
               f'serve --config "{config}" --host 127.0.0.1 --port {port}')
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f'{read_only} && {first} cd "{tmp_path}" && exec {run}'],
                              capture_output=True, text=True, timeout=120, env=env)

    out = serve("", 9)
    said = (out.stdout + out.stderr).strip()
    assert out.returncode == 2, said
    assert [line for line in said.splitlines() if " INFO " not in line] == [
        "error: no folder for temporary files can be written (TMPDIR, /tmp, /var/tmp, /usr/tmp "
        "nor the working folder): uploads over 1 MiB are spooled there; give the server one "
        "(a container run with --read-only: add --tmpfs /tmp)"], said
    # what the line says to do (a tmpfs of its own; here TMPDIR names it, as /tmp stays
    # where this test's files are): past the check, to the port another holds
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        out = serve(f'mount -t tmpfs tmpfs "{tmp_path / "spool"}" && export TMPDIR="{tmp_path / "spool"}" &&',
                    held.getsockname()[1])
    said = (out.stdout + out.stderr).strip()
    assert out.returncode == 2 and "cannot listen on 127.0.0.1:" in said, said
    assert "temporary files" not in said and "Traceback" not in said, said


def test_a_fused_recipe_pinning_a_good_only_version_not_configured_is_one_line(
        tmp_path: Path) -> None:
    """``anomaly.model_version`` naming a version no package is configured for was a
    traceback from uvicorn's lifespan (the registry's 404 at start-up); the recipe's own
    ``model_version`` was one line already."""
    (tmp_path / "r.yaml").write_text("name: fusedpin\nversion: '1'\nmodel: deeppcb\n"
                                     "anomaly: {model: deeppcb-good, model_version: '9'}\n")
    models = [ROOT / "models" / "deeppcb" / "1", ROOT / "models" / "deeppcb-good" / "1"]
    config = _serve_yaml(tmp_path, f"models: [{', '.join(map(str, models))}]\n"
                                   f"recipes: [{tmp_path / 'r.yaml'}]\n")
    config.write_text(config.read_text().replace("models: []\n", ""))
    res = CliRunner().invoke(app, ["serve", "--config", str(config), "--port", "9"])
    assert res.exit_code == 2, res.output
    assert ("error: recipe fusedpin: anomaly.model deeppcb-good has no configured version "
            "'9' (1)") in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("case", ["kind", "version"])
def test_packages_the_registry_refuses_side_by_side_are_one_line_before_start(
        tmp_path: Path, case: str) -> None:
    """A good-only package under a detector's name, or one version configured twice with
    another card: the registry refused the second at start-up, a traceback from uvicorn's
    lifespan and exit code 3 (review, session 36)."""
    from .anomaly_package import anomaly_graph, card_doc, write_package

    if case == "kind":
        first = ROOT / "models" / "deeppcb" / "1"
        doc = {**card_doc("deeppcb", 64), "version": "2"}
        problem = "model deeppcb 2 is of kind anomaly, its configured versions of kind " \
                  "detector: a model name keeps its kind"
    else:
        first = write_package(tmp_path / "g" / "1", anomaly_graph(64), card_doc("g", 64))
        doc = card_doc("g", 64, threshold=0.6)
        problem = "model g 1 is configured already with another graph or card"
    second = write_package(tmp_path / "second" / "1", anomaly_graph(64), doc)
    config = _serve_yaml(tmp_path, f"models: [{first}, {second}]\n")
    config.write_text(config.read_text().replace("models: []\n", ""))
    res = CliRunner().invoke(app, ["serve", "--config", str(config), "--port", "9"])
    assert res.exit_code == 2, res.output
    assert f"error: {second}: {problem}" in res.output and "Traceback" not in res.output
