"""H.264 cameras read as packets (cameras/h26x.py) vs OpenCV's own reader, on a real RTSP
stream from tests/tools/rtsp_server.py (frames encoded once, looped: no encoder running).

usage: python tools/h26x_bench.py cost WxH SECONDS PORT   both readers at once, own processes
       python tools/h26x_bench.py flip SECONDS PORT       RSS of a stream switching size each second
       python tools/h26x_bench.py close PORT READER       a camera closed mid-read from another thread
       python tools/h26x_bench.py exit PORT READER        the interpreter exits, a camera mid-read
(READER: packets or opencv)

Frame age at read: each frame carries its number (16 blocks, top left); the server logs
when it sent each, and the age is the read's time less the send's (``time.monotonic``,
one clock for all processes of the host).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER = Path(__file__).resolve().parents[1] / "tests" / "tools" / "rtsp_server.py"


def _server(port: str, mode: str, log: str = "") -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, RTSP_SENT_LOG=log) if log else None
    proc = subprocess.Popen(["/usr/bin/python3", str(SERVER), port, "h264", mode],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _source(url: str, packets: bool):  # type: ignore[no-untyped-def]
    from lineside_inspect.cameras import sources

    if not packets:  # the reader of before session 40
        sources._OPENCV_DECODES[url] = "bench"
    source = sources.make_source(url, open_timeout_s=5, read_timeout_s=2, loop=True, fps=None)
    source.open()
    assert (getattr(source, "h26x", None) is not None) == packets
    return source


def _read(url: str, packets: bool, seconds: float, log: str) -> None:
    source = _source(url, packets)
    reads: list[tuple[int, float]] = []
    cpu0, t0 = time.process_time(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        frame = source.read()
        if frame is None:
            break
        now = time.monotonic()
        bits = frame[8, 8:256:16].mean(axis=1) > 128
        reads.append((int(sum(1 << i for i, b in enumerate(bits) if b)), now))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    source.close()
    sent: dict[int, list[float]] = {}
    for line in Path(log).read_text().splitlines():
        number, at = line.split()
        sent.setdefault(int(number), []).append(float(at))
    ages = [now - max(t for t in sent.get(n, [now]) if t <= now) for n, now in reads]
    ages.sort()
    print(json.dumps({"reader": "packets" if packets else "opencv", "frames": len(reads),
                      "fps": round(len(reads) / wall, 1),
                      "cpu_ms_per_frame": round(1000 * cpu / max(1, len(reads)), 2),
                      "cpu_percent": round(100 * cpu / wall, 1),
                      "age_ms_median": round(1000 * statistics.median(ages), 1),
                      "age_ms_p95": round(1000 * ages[int(len(ages) * 0.95)], 1),
                      "age_ms_max": round(1000 * ages[-1], 1)}))


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    what = sys.argv[1]
    if what == "read":  # a child: one reader
        _read(sys.argv[2], sys.argv[3] == "packets", float(sys.argv[4]), sys.argv[5])
    elif what == "cost":
        size, seconds, port = sys.argv[2:5]
        with tempfile.NamedTemporaryFile("w", suffix=".log") as log:
            proc, url = _server(port, size, log.name)
            try:
                kids = [subprocess.Popen([sys.executable, __file__, "read", url, reader, seconds,
                                          log.name], stdout=subprocess.PIPE, text=True)
                        for reader in ("packets", "opencv")]
                for kid in kids:
                    print(size, kid.communicate()[0].strip())
            finally:
                proc.kill()
    elif what == "flip":
        seconds, port = float(sys.argv[2]), sys.argv[3]
        proc, url = _server(port, "flip")
        try:
            from lineside_inspect.errors import ImageError

            source = _source(url, True)
            t0, shapes, switches, samples = time.monotonic(), set(), 0, []
            while time.monotonic() - t0 < seconds:
                try:
                    frame = source.read()
                except ImageError:
                    switches += 1
                    continue
                assert frame is not None
                shapes.add(frame.shape)
                if not samples or time.monotonic() - t0 >= len(samples):
                    samples.append(round(_rss_mb(), 1))
            source.close()
            print(json.dumps({"switches": switches, "shapes": sorted(shapes), "rss_mb_each_s": samples}))
        finally:
            proc.kill()
    elif what == "exit":  # as the server at shutdown: the worker's daemon thread mid-read
        proc, url = _server(sys.argv[2], "640x480")
        try:
            from lineside_inspect.cameras.worker import CameraWorker

            worker = CameraWorker("cam", lambda: _source(url, sys.argv[3] == "packets"))
            worker.start()
            while worker.frames < 10:
                time.sleep(0.05)
            print("exiting mid-read", flush=True)
        finally:
            proc.kill()
    elif what == "close":
        proc, url = _server(sys.argv[2], "640x480")
        try:
            for round_ in range(20):
                source = _source(url, sys.argv[3] == "packets")
                frames = [0]

                def reading(src=source, count=frames) -> None:  # type: ignore[no-untyped-def]
                    try:
                        while src.read() is not None:
                            count[0] += 1
                    except Exception as exc:  # reported, not hidden
                        print("reader raised", type(exc).__name__, exc)

                thread = threading.Thread(target=reading, daemon=True)
                thread.start()
                time.sleep(0.3 + round_ % 5 * 0.07)
                source.close()  # from this thread, the reader mid-read
                thread.join(5)
                print(round_, "frames", frames[0], "reader ended", not thread.is_alive(), flush=True)
        finally:
            proc.kill()


if __name__ == "__main__":
    main()
