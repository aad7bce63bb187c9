"""``lineside bench server``: two real ``lineside serve`` processes (store on and off)
measured in interleaved rounds beside the model run in-process."""

from __future__ import annotations

import math
import re
from pathlib import Path

from typer.testing import CliRunner

from lineside_inspect.cli import app

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041" / "00041000_temp.jpg"


def test_bench_server_prints_overhead_and_ratios_store_on_and_off() -> None:
    image = next((ROOT / "datasets" / "deeppcb-sample" / "images").rglob("*_test.jpg"))
    # --seconds 0.4: 0.2 s per load and per baseline in each round, several requests
    # each; enough for every figure to be printed and checked (their size is not judged)
    result = CliRunner().invoke(app, [
        "bench", "server", str(ROOT / "models" / "deeppcb" / "1"), "--image", str(image),
        "--requests", "4", "--seconds", "0.4", "--rounds", "2", "--threads", "1",
        "--clients", "1,3"])
    assert result.exit_code == 0, result.output
    lines = {line.split("|")[1].strip(): line for line in result.output.splitlines()
             if line.startswith("|")}
    assert "store on" in lines[""] and "store off" in lines[""]
    for cell in lines["**overhead p50** (round trip minus infer)"].split("|")[2:4]:
        # "**4.5 ms** (rounds 4.1-5.0)": the median and each round's own p50 around it
        found = re.fullmatch(r" \*\*([\d.]+) ms\*\* \(rounds ([\d.]+)-([\d.]+)\) ", cell)
        assert found, cell
        median, low, high = map(float, found.groups())
        assert math.isfinite(median) and low <= median <= high
    for k in ("1 client", "3 clients"):
        for cell in lines[k].split("|")[2:4]:
            # "23.4 img/s = 0.91x (0.85-0.98)": the median ratio within its rounds' range
            found = re.fullmatch(r" [\d.]+ img/s = ([\d.]+)x \(([\d.]+)-([\d.]+)\) ", cell)
            assert found, cell
            ratio, low, high = map(float, found.groups())
            assert 0 < low <= ratio <= high, cell
    assert "medians of 2 interleaved rounds" in result.output
    assert "the lowest and highest round" in result.output


def test_a_reference_model_is_timed_against_its_golden_registered_on_the_servers() -> None:
    """A reference model refuses a frame alone: the bench registers the sample pair's golden
    (``00041000_temp.jpg``, the default ``--image``'s twin) on both servers over
    ``PUT /v1/references`` and names it with each frame, and the in-process runs judge the
    same pair. Before, ``bench server`` refused every reference model."""
    result = CliRunner().invoke(app, [
        "bench", "server", str(ROOT / "models" / "deeppcb-ref" / "1"),
        "--image", str(ROOT / "datasets" / "deeppcb-sample" / "images" / "group00041" /
                       "00041000_test.jpg"),
        "--seconds", "0.5", "--requests", "3", "--rounds", "1", "--clients", "1",
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    lines = {line.split("|")[1].strip(): line.split("|")[2:4] for line in
             result.output.splitlines() if line.startswith("|")}
    for name in ("round trip p50", "server `infer` p50", "in-process infer p50"):
        for cell in lines[name]:
            assert re.fullmatch(r" [\d.]+ ms ", cell), (name, cell)
    for cell in lines["**overhead p50** (round trip minus infer)"]:
        # the round trip minus the server's infer: negative only if the figures were wrong
        found = re.fullmatch(r" \*\*(-?[\d.]+) ms\*\* \(rounds (-?[\d.]+)-(-?[\d.]+)\) ", cell)
        assert found, cell
        assert all(math.isfinite(float(x)) for x in found.groups())
    for cell in lines["1 client"]:
        found = re.fullmatch(r" [\d.]+ img/s = ([\d.]+)x \(([\d.]+)-([\d.]+)\) ", cell)
        assert found and float(found[1]) > 0, cell
    assert "medians of 1 interleaved rounds" in result.output


def test_bench_server_golden_is_refused_where_it_cannot_be_used(tmp_path: Path) -> None:
    """``--golden`` for a single-image model, a golden that is not there, and a reference
    model's frame with no golden to find: each one line, before any server starts."""
    runner = CliRunner()
    lone = tmp_path / "board.jpg"  # not named *_test: no golden twin to find
    lone.write_bytes(GOLDEN.read_bytes())
    cases = [
        ([str(ROOT / "models" / "deeppcb" / "1"), "--golden", str(GOLDEN)],
         "is not a reference model"),
        ([str(ROOT / "models" / "deeppcb-ref" / "1"), "--golden", str(tmp_path / "none.jpg")],
         "no such file"),
        ([str(ROOT / "models" / "deeppcb-ref" / "1"), "--image", str(lone)], "--golden PATH"),
    ]
    for args, said in cases:
        result = runner.invoke(app, ["bench", "server", *args])
        assert result.exit_code == 2, result.output
        assert said in result.output and "Traceback" not in result.output, result.output


def test_a_dropped_connection_is_one_error_line_not_a_silent_exit() -> None:
    """A server that closes the connection (here: a port nothing answers HTTP on, a socket
    accepting and closing) makes the bench say so: before, a broken pipe left
    ``lineside bench server`` with exit code 1 and nothing printed (click takes EPIPE for
    its own stdout)."""
    import socket
    import threading

    from lineside_inspect.bench import _Line
    from lineside_inspect.errors import BenchError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def close_each() -> None:
        for _ in range(2):
            try:
                conn, _ = listener.accept()
            except OSError:  # the test closed the listener: the client gave up sooner
                return
            conn.close()

    closer = threading.Thread(target=close_each, daemon=True)
    closer.start()
    line = _Line(f"http://127.0.0.1:{port}")
    try:
        line.inspect(b"\xff\xd8" + b"x" * 100_000)
    except BenchError as exc:
        assert f"127.0.0.1:{port}: the connection failed" in exc.message
    else:
        raise AssertionError("a closed connection was not reported")
    finally:
        line.close()
        listener.close()


def test_the_lean_client_reads_lengths_chunks_and_closes() -> None:
    """The bench's client (a prepared request, httptools parsing the answer) reads what an
    HTTP/1.1 server may send: a Content-Length body, a chunked one, an error status,
    ``Connection: close`` (after which it connects again) and a body ended by the close."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from lineside_inspect.bench import _Line

    seen: list[tuple[int, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            seen.append((self.client_address[1], body))
            n = len(seen)
            if n == 2:  # chunked, an error
                self.send_response(415)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"5\r\nnot a\r\n6\r\n JPEG\n\r\n0\r\n\r\n")
                return
            answer = f'{{"n": {n}}}'.encode()
            self.send_response(200)
            if n == 4:  # no length: the body ends when the connection closes
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(answer)
                return
            self.send_header("Content-Length", str(len(answer)))
            if n == 3:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    line = _Line(f"http://127.0.0.1:{server.server_address[1]}")
    image = b"\xff\xd8" + bytes(range(256)) * 400 + b"\xff\xd9"
    try:
        answers = [line.inspect(image) for _ in range(5)]
    finally:
        line.close()
        server.shutdown()
        server.server_close()
    assert answers == [(200, b'{"n": 1}'), (415, b"not a JPEG\n"), (200, b'{"n": 3}'),
                       (200, b'{"n": 4}'), (200, b'{"n": 5}')]
    assert all(body == image for _, body in seen)  # the whole image, every time
    ports = [port for port, _ in seen]
    # kept alive, then a new connection after each close
    assert ports[0] == ports[1] == ports[2] != ports[3] != ports[4]
