"""Inspection events over MQTT, against a real broker (Debian's ``mosquitto``, started
here on a free loopback port; ``make test`` installs it).

The broker is killed (SIGKILL) in the middle of a stream of inspections and comes back
on the same port; every event must then arrive once per inspection id, in order. While
it is back but still refusing the server (the password file reloaded on SIGHUP lets the
test's subscriber in first, so it misses nothing the server sends), the verdicts keep
coming and the outbox backlog shows in ``/metrics`` and on the status page.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from lineside_inspect.cameras.simulator import MJPEGSimulator, folder_frames
from lineside_inspect.config import CameraConfig
from lineside_inspect.errors import ConfigError
from lineside_inspect.line import mqtt as mqtt_module
from lineside_inspect.line.config import MqttConfig
from lineside_inspect.line.mqtt import SHORT_SESSIONS, MqttPublisher
from lineside_inspect.runtime.detector import Detector
from lineside_inspect.server.app import create_app
from lineside_inspect.store import Store
from lineside_inspect.store.outbox import Outbox, event

from .conftest import CHROMIUM, MODEL, SAMPLE, keyed, settings, start_server
from .conftest import CHROMIUM_ARGS as ARGS
from .server_process import LINESIDE, ServerProcess, free_port

paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed (the [line] extra)")

MOSQUITTO = Path("/usr/sbin/mosquitto")
PASSWORDS = {"sub": "sub-secret", "lineside": "broker-secret-7"}


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Broker:
    """A mosquitto process on a fixed loopback port, with password logins; ``allow``
    reloads the password file (SIGHUP) to let users in or keep them out."""

    def __init__(self, folder: Path, tls: tuple[Path, Path, Path] | None = None) -> None:
        self.folder = folder
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: dict[str, str] = {}
        for user, password in PASSWORDS.items():
            path = folder / f"{user}.pw"
            subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), user, password], check=True,
                           capture_output=True, timeout=30)
            self.lines[user] = path.read_text().strip()
        conf = [f"listener {self.port} 127.0.0.1", "allow_anonymous false",
                f"password_file {folder / 'passwords'}", "persistence false"]
        if tls is not None:
            conf += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        if os.geteuid() == 0:
            conf.append("user root")  # else it drops to 'mosquitto', who cannot read the folder
        (folder / "mosquitto.conf").write_text("\n".join(conf) + "\n")

    def allow(self, *users: str) -> None:
        (self.folder / "passwords").write_text("".join(self.lines[u] + "\n" for u in users))
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, *users: str) -> None:
        self.allow(*(users or tuple(PASSWORDS)))
        log = (self.folder / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.folder / "mosquitto.conf")],
                                     stdout=log, stderr=log)

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "mosquitto exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, "mosquitto to listen")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    if not MOSQUITTO.is_file() or shutil.which("mosquitto_passwd") is None:
        pytest.skip("Debian's mosquitto is not installed (make test installs it)")
    made: list[Broker] = []

    def make(tls: tuple[Path, Path, Path] | None = None) -> Broker:
        folder = tmp_path / f"broker{len(made)}"
        folder.mkdir()
        made.append(Broker(folder, tls))
        return made[-1]

    yield make
    for b in made:
        b.kill()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker()


class Subscriber:
    """A paho client subscribed to ``lineside/#`` at QoS 1, keeping every message."""

    def __init__(self, port: int, topic: str = "lineside/#", ca_file: Path | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscriptions = 0
        self._lock = threading.Lock()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}-{id(self)}")
        client.username_pw_set("sub", PASSWORDS["sub"])
        if ca_file is not None:
            client.tls_set(ca_certs=str(ca_file))
        client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]

        def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
            if not reason.is_failure:
                c.subscribe(topic, qos=1)

        def on_subscribe(c: Any, u: Any, mid: int, reasons: Any, props: Any) -> None:
            self.subscriptions += 1

        def on_message(c: Any, u: Any, msg: Any) -> None:
            with self._lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.connect_async("127.0.0.1", port, keepalive=5)
        client.loop_start()
        self.client = client

    def on(self, topic_end: str) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.messages if m[0].endswith(topic_end)]

    def inspections(self) -> list[dict[str, Any]]:
        return [{"topic": t, **json.loads(p)} for t, p, _ in self.on("/inspection")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(port: int, ca_file: Path | None = None) -> Subscriber:
        made.append(Subscriber(port, ca_file=ca_file))
        return made[-1]

    yield make
    for s in made:
        s.close()


def gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_events_survive_a_broker_restart_exactly_once_in_order(
        broker: Broker, subscribers: Callable[[int], Subscriber], image_bytes: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker.start()
    sub = subscribers(broker.port)
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber")
    camera = MJPEGSimulator(folder_frames(SAMPLE / "images"), fps=10)
    source = camera.url.replace("http://", "http://cam:camera-secret@")
    running, stop_server = start_server(settings(cameras=[CameraConfig(
        id="cam1", source=source, open_timeout_s=1, read_timeout_s=1, stale_after_s=1)],
        line={"mqtt": {"url": broker.url, "username": "lineside",
                       "password": PASSWORDS["lineside"], "max_inflight": 4}}))
    stopped = False
    try:
        box = running.app.state.store.box_id
        status_topic = f"lineside/{box}/status"
        wait_for(lambda: [m for m in sub.on(status_topic) if m[1] == b"online"], "status online")
        wait_for(lambda: [m for m in sub.on("camera/cam1/state")
                          if json.loads(m[1])["state"] == "online"], "camera online")

        ids: list[str] = []
        errors: list[str] = []
        stop_posting = threading.Event()

        def post() -> None:  # one line client, one part after another
            with httpx.Client(base_url=running.url, timeout=60) as c:
                while not stop_posting.is_set():
                    r = c.post("/v1/inspect", content=image_bytes,
                               headers={"content-type": "image/jpeg"})
                    if r.status_code != 200 or not r.json()["stored"]:
                        errors.append(r.text)
                        return
                    ids.append(r.json()["id"])

        from playwright.sync_api import expect, sync_playwright

        poster = threading.Thread(target=post)
        poster.start()
        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            # the status page, open throughout: its MQTT section follows without a reload
            page = browser.new_page()
            # the page's clock runs on, but can jump to its next refresh (home.js, every
            # 5 s) once the server has changed: the section still follows on its own timer
            page.clock.install()
            page.goto(running.url + "/")
            connection = page.locator("#mqtt-connection")
            expect(connection).to_have_text("connected")
            wait_for(lambda: len(sub.inspections()) >= 3, "the first events")
            broker.kill()  # mid-stream: the server does not know yet
            at_kill = len(ids)
            wait_for(lambda: len(ids) >= at_kill + 4, "verdicts during the outage")
            broker.start("sub")  # back, but only the subscriber may log in for now
            wait_for(lambda: sub.subscriptions >= 2, "the subscriber to come back")
            wait_for(lambda: len(ids) >= at_kill + 8, "more verdicts")
            assert wait_for(lambda: gauge(running.url, "lineside_outbox_backlog") > 0,
                            "the backlog gauge to rise")
            # seen at once when a publish hits the dead socket; with the in-flight window
            # full at the kill nothing is written, and the keepalive (1.5 x 15 s) sees it
            wait_for(lambda: gauge(running.url, "lineside_mqtt_connected") == 0,
                     "the server to see the broker gone", timeout_s=40)
            assert gauge(running.url, "lineside_outbox_lag_seconds") > 0
            html = httpx.get(running.url + "/").text
            assert 'id="mqtt"' in html and "disconnected" in html
            page.clock.fast_forward(5000)  # home.js REFRESH_MS: the next refresh
            expect(connection).to_have_text("disconnected", timeout=15_000)
            expect(connection).to_have_class("fail")
            expect(page.locator("#mqtt-last")).not_to_have_text("none", timeout=15_000)
            broker.allow("sub", "lineside")  # the server may reconnect now
            wait_for(lambda: gauge(running.url, "lineside_mqtt_connected") == 1, "reconnection")
            page.clock.fast_forward(5000)
            expect(connection).to_have_text("connected", timeout=15_000)
            expect(page.locator("#mqtt-last")).to_have_text("none", timeout=15_000)
            posted = len(ids)
            wait_for(lambda: len(ids) >= posted + 3, "verdicts after the outage")
        finally:
            stop_posting.set()
            poster.join(60)
            browser.close()
            pw.stop()
        assert not errors, errors

        wait_for(lambda: len(sub.inspections()) >= len(ids), "every event")
        time.sleep(0.3)  # room for a duplicate to show up, if one were coming
        events = sub.inspections()
        assert [e["id"] for e in events] == ids  # each once, in order
        for e in events:
            assert e["topic"] == f"lineside/{box}/api/inspection"
            assert e["box_id"] == box and e["stored"] is True
            assert e["verdict"] in ("pass", "fail") and "image" not in e
        wait_for(lambda: gauge(running.url, "lineside_outbox_backlog") == 0, "the backlog to drain")
        assert gauge(running.url, "lineside_mqtt_events_delivered_total") == len(ids)
        # the broker lost its retained messages: the server said online again
        assert len([m for m in sub.on(status_topic) if m[1] == b"online"]) >= 2

        # a camera id given with an upload is a topic level; one that is not a plain name
        # (a '/', '+' or '#' would move or widen the topic) is refused before any event
        with httpx.Client(base_url=running.url, timeout=60) as c:
            named = c.post("/v1/inspect", params={"camera_id": "line4"}, content=image_bytes,
                           headers={"content-type": "image/jpeg"}).json()["id"]
            sneaky = c.post("/v1/inspect", params={"camera_id": "a/#"}, content=image_bytes,
                            headers={"content-type": "image/jpeg"})
        assert sneaky.status_code == 422 and "query.camera_id" in sneaky.text
        wait_for(lambda: named in {e["id"] for e in sub.inspections()}, "one more event")
        topics = {e["id"]: e["topic"] for e in sub.inspections()}
        assert topics[named] == f"lineside/{box}/line4/inspection"

        camera.kill()  # the camera goes away: its retained state says so
        offline = wait_for(lambda: [json.loads(m[1]) for m in sub.on("camera/cam1/state")
                                    if json.loads(m[1])["state"] == "offline"], "camera offline")
        assert offline[-1]["box_id"] == box and offline[-1]["last_error"]
        assert all(b"camera-secret" not in p for _, p, _ in sub.on("camera/cam1/state"))

        stop_server()  # a clean stop says offline itself
        stopped = True
        wait_for(lambda: sub.on(status_topic)[-1][1] == b"offline", "status offline")
        late = subscribers(broker.port)  # retained: a newcomer hears it too
        wait_for(lambda: late.on(status_topic), "the retained status")
        assert late.on(status_topic)[-1][1:] == (b"offline", True)
        wait_for(lambda: late.on("camera/cam1/state"), "the retained camera state")
        assert late.on("camera/cam1/state")[-1][2] is True
    finally:
        if not stopped:
            stop_server()
        camera.kill()
    assert PASSWORDS["lineside"] not in caplog.text  # never logged


def test_events_of_a_killed_server_are_sent_at_its_next_start_and_the_will_says_offline(
        broker: Broker, subscribers: Callable[[int], Subscriber], image_bytes: bytes,
        tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "data"
    mqtt = {"url": broker.url, "username": "lineside", "password": PASSWORDS["lineside"]}
    config = tmp_path / "serve.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "models": [str(MODEL)], "device": "cpu", "threads": 1, "data_dir": str(data_dir),
        "box_id": "box7", "line": {"mqtt": mqtt}}))
    server = ServerProcess([*LINESIDE, "serve", "--config", str(config), "--port", str(port)],
                           tmp_path / "serve.log", port)
    server.start()  # no broker yet: verdicts and events are stored all the same
    try:
        server.wait_ready()
        ids = [httpx.post(server.url + "/v1/inspect", content=image_bytes, timeout=60,
                          headers={"content-type": "image/jpeg"}).json()["id"] for _ in range(3)]
    finally:
        server.kill9()  # nothing delivered, maybe not even out of the journal

    broker.start("sub")
    sub = subscribers(broker.port)
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber")
    broker.allow("sub", "lineside")
    running, stop_server = start_server(settings(data_dir=data_dir, box_id="box7", line={"mqtt": mqtt}))
    try:
        wait_for(lambda: len(sub.inspections()) >= 3, "the events of the killed run")
        assert [e["id"] for e in sub.inspections()] == ids
        assert {e["topic"] for e in sub.inspections()} == {"lineside/box7/api/inspection"}
        status = "lineside/box7/status"
        wait_for(lambda: sub.on(status), "status")
        assert sub.on(status)[-1][1] == b"online"

        # a verdict the store refuses (a full disk) still has its event, marked not stored
        store = running.app.state.store

        def full(record: object) -> None:
            raise OSError(28, "No space left on device")

        store.journal.append = full
        try:
            r = httpx.post(running.url + "/v1/inspect", content=image_bytes, timeout=60,
                           headers={"content-type": "image/jpeg"}).json()
        finally:
            del store.journal.append
        assert r["stored"] is False
        unstored = wait_for(lambda: [e for e in sub.inspections() if e["id"] == r["id"]],
                            "the event of an unstored inspection")
        assert len(unstored) == 1 and unstored[0]["stored"] is False

        # the connection dies without a DISCONNECT (as when the box loses power): the
        # broker publishes the will; kept out for now, the server cannot say otherwise
        broker.allow("sub")
        running.app.state.mqtt._client.socket().shutdown(socket.SHUT_RDWR)
        wait_for(lambda: sub.on(status)[-1][1] == b"offline", "the last will")
        late = subscribers(broker.port)
        wait_for(lambda: late.on(status), "the retained status")
        assert late.on(status)[-1][1:] == (b"offline", True)
        broker.allow("sub", "lineside")  # back: online again
        wait_for(lambda: sub.on(status)[-1][1] == b"online", "online again")
    finally:
        stop_server()


def test_the_outbox_is_written_with_the_inspection(tmp_path: Path, monkeypatch,
                                                    database_url: str | None) -> None:
    """An event enters the outbox in its inspection's transaction: applying the same
    journal records again (a replay after a crash) adds neither; a failing event maker
    costs the inspection nothing; boxes sharing a database see only their own events."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import test_store as t  # type: ignore[import-not-found]

    detector = Detector(MODEL, device="cpu", threads=1)
    store = Store(tmp_path / "a", database_url, pass_rate=0.0, sync_interval_s=3600, box_id="a")
    try:
        def broken(_: object) -> list[dict[str, Any]]:
            raise RuntimeError("boom")

        store.event_makers += [lambda i: [event(f"t/{i.id}", {"id": i.id})], broken]
        inspections = [t._inspection(detector, v) for v in ("fail", "pass", "fail")]
        records = [store._record(i, keep_image=False) for i in inspections]
        assert all(store.save(i) for i in inspections)
        store.flush()
        outbox = Outbox(store.engine, "a")
        pending = outbox.pending()
        assert [e.payload["id"] for e in pending] == [i.id for i in inspections]
        assert [e.topic for e in pending] == [f"t/{i.id}" for i in inspections]
        store._apply(records)  # already applied: nothing twice
        assert outbox.backlog() == 3 and store.query()[0] == 3
        assert (outbox.oldest_pending_age() or 0) > 0

        other = Outbox(store.engine, "b")  # another box on the same database
        other.enqueue("t/b", {"id": "b"})
        assert outbox.backlog() == 3 and other.backlog() == 1

        outbox.mark_delivered([pending[0].id])
        assert [e.id for e in outbox.pending()] == [e.id for e in pending[1:]]
        assert outbox.pending(after=pending[1].id)[0].id == pending[2].id
        assert outbox.purge_delivered(60) == 0  # delivered just now: kept a while
        assert outbox.purge_delivered(0, now=datetime.now(UTC).replace(year=2100)) == 1
        outbox.mark_delivered(e.id for e in pending)
        assert outbox.backlog() == 0 and outbox.oldest_pending_age() is None
        assert other.backlog() == 1
    finally:
        store.close()


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1, and an unrelated CA."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)

    def name(text: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool) -> Any:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "other", "server")}
    certs = {"ca": cert("test CA", keys["ca"], name("test CA"), keys["ca"], True),
             "other": cert("other CA", keys["other"], name("other CA"), keys["other"], True)}
    certs["server"] = cert("broker", keys["server"], certs["ca"].subject, keys["ca"], False)
    out: dict[str, Path] = {}
    for n, c in certs.items():
        out[n] = folder / f"{n}.pem"
        out[n].write_bytes(c.public_bytes(serialization.Encoding.PEM))
    out["server_key"] = folder / "server.key"
    out["server_key"].write_bytes(keys["server"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    return out


def test_mqtts_verifies_the_broker(make_broker: Callable[..., Broker],
                                   subscribers: Callable[..., Subscriber], image_bytes: bytes,
                                   tmp_path: Path) -> None:
    pem = _certificates(tmp_path)
    broker = make_broker((pem["ca"], pem["server"], pem["server_key"]))
    broker.start()
    sub = subscribers(broker.port, pem["ca"])
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber over TLS")
    mqtt = {"url": broker.url, "username": "lineside", "password": PASSWORDS["lineside"]}
    # a broker whose certificate this box cannot verify gets nothing, not even the password
    impostor, stop = start_server(settings(line={"mqtt": {**mqtt, "ca_file": str(pem["other"])}}))
    try:
        wait_for(lambda: impostor.app.state.mqtt.last_error, "the refusal")
        assert not impostor.app.state.mqtt.connected
        # and says why: "cannot connect" alone read as the broker being down, and the
        # wrong ca_file went unnoticed (review, session 36)
        assert "certificate verify failed" in impostor.app.state.mqtt.last_error
        assert "u'lineside'" not in (broker.folder / "mosquitto.log").read_text()
    finally:
        stop()
    running, stop = start_server(settings(line={"mqtt": {**mqtt, "ca_file": str(pem["ca"])}}))
    try:
        iid = httpx.post(running.url + "/v1/inspect", content=image_bytes, timeout=60,
                         headers={"content-type": "image/jpeg"}).json()["id"]
        wait_for(lambda: [e for e in sub.inspections() if e["id"] == iid], "the event over TLS")
    finally:
        stop()


def test_a_fail_rate_alarm_is_sent_in_order_with_the_inspections(
        broker: Broker, subscribers: Callable[..., Subscriber]) -> None:
    """The plant hears a recipe's fail-rate alarm raised and cleared, on its own topic,
    through the outbox (so a broker outage loses nothing)."""
    broker.start()
    sub = subscribers(broker.port)
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber")
    mqtt = {"url": broker.url, "username": "lineside", "password": PASSWORDS["lineside"]}
    running, stop = start_server(settings(line={"mqtt": mqtt}, lifecycle={"fail_rate_alarm": {
        "baseline_inspections": 4, "window": 4, "max_fail_rate_increase": 0.3}}))
    good = sorted((SAMPLE / "images").rglob("*_temp.jpg"))[:8]
    bad = sorted((SAMPLE / "images").rglob("*_test.jpg"))[:2]
    try:
        ids = []
        for f in good[:4] + bad + good[4:]:
            r = httpx.post(running.url + "/v1/inspect", content=f.read_bytes(), timeout=60,
                           headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        changes = wait_for(lambda: len(sub.on("/alarm/deeppcb-default")) >= 2 and
                           sub.on("/alarm/deeppcb-default"), "the alarm and its end")
        raised, cleared = (json.loads(p) for _, p, _ in changes)
        assert (raised["state"], cleared["state"]) == ("alarm", "cleared")
        assert raised["recent_fail_rate"] == 0.5 and raised["usual_fail_rate"] == 0
        assert "above the bound 30.0%" in raised["why"] and raised["box_id"]
        assert (raised["model"], raised["version"]) == ("deeppcb", "1")
        assert raised["changed_at"] < cleared["changed_at"]
        # the inspections' own events are there too (the store writes them with each
        # inspection, in its writer's batches: an alarm may arrive ahead of the last ones)
        wait_for(lambda: {e["id"] for e in sub.inspections()} == set(ids), "every inspection")
        assert len(sub.on("/alarm/deeppcb-default")) == 2
    finally:
        stop()


def test_mqtt_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="credentials"):
        MqttConfig(url="mqtt://user:pw@broker")
    with pytest.raises(ValueError, match="mqtt:// or mqtts://"):
        MqttConfig(url="http://broker")
    with pytest.raises(ValueError, match="wildcards"):
        MqttConfig(url="mqtt://broker", topic_prefix="plant/#")
    with pytest.raises(ValueError, match="needs an mqtts"):
        MqttConfig(url="mqtt://broker", ca_file=__file__)
    with pytest.raises(ValueError, match="has port 0"):  # it meant 1883, unsaid
        MqttConfig(url="mqtt://broker:0")
    with pytest.raises(ValueError, match="keep_delivered_s"):  # never purged
        MqttConfig(url="mqtt://broker", keep_delivered_s=float("inf"))
    # a password alone was never sent (paho sends none without a user name): the broker's
    # refusal then blamed the password (review, session 36)
    with pytest.raises(ValueError, match="password needs username"):
        MqttConfig(url="mqtt://broker", password="hunter2")
    cfg = MqttConfig(url="mqtts://broker", username="box", password="hunter2")
    assert (cfg.host, cfg.port, cfg.tls) == ("broker", 8883, True)
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    with pytest.raises(ConfigError, match="needs the store"):
        create_app(settings(store=False, line={"mqtt": {"url": "mqtt://127.0.0.1:1"}}))
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot use the TLS files"):
        create_app(settings(line={"mqtt": {"url": "mqtts://127.0.0.1:1", "ca_file": str(junk)}}))


def test_an_encrypted_client_key_is_one_line_not_a_pass_phrase_prompt(tmp_path: Path) -> None:
    """A client key with a pass phrase stopped the server's start on OpenSSL's "Enter PEM
    pass phrase:" (twice), and without a terminal said "[Errno 22] Invalid argument"
    (review, session 36). Run apart, with no controlling terminal: without the fix the
    prompt fails rather than waiting for a test runner's keyboard."""
    import sys

    from cryptography.hazmat.primitives import serialization

    pem = _certificates(tmp_path)
    key = serialization.load_pem_private_key(pem["server_key"].read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    code = ("import sys\n"
            "from lineside_inspect.errors import ConfigError\n"
            "from lineside_inspect.line.config import MqttConfig\n"
            "from lineside_inspect.line.mqtt import tls_context\n"
            "try:\n"
            f"    tls_context(MqttConfig(url='mqtts://127.0.0.1:1', cert_file={str(pem['server'])!r},"
            f" key_file={str(locked)!r}))\n"
            "except ConfigError as exc:\n"
            "    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert "pass phrase" not in done.stderr.lower()  # no prompt
    assert done.stdout.strip() == (f"line.mqtt: key_file {locked} is encrypted (it needs a pass "
                                   "phrase): give the key unencrypted, readable by the server's "
                                   "user only (chmod 600)")


def test_an_event_too_large_for_the_broker_is_set_aside_not_sent_for_ever(
        broker: Broker, subscribers: Callable[[int], Subscriber], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A broker closes the connection on a packet over its limit (MQTT 3.1.1 has no way
    to refuse one message): paho sent the event again at each reconnect, twice a second
    for ever, and no event behind it went out. It is set aside, and sent again at the
    next start (the limit raised)."""
    caplog.set_level(logging.INFO, logger="lineside")
    conf = broker.folder / "mosquitto.conf"
    conf.write_text(conf.read_text() + "max_packet_size 4096\n")
    broker.start()
    sub = subscribers(broker.port)
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber")
    store = Store(tmp_path / "store", None, pass_rate=0.0, sync_interval_s=3600, box_id="b1")
    outbox = Outbox(store.engine, "b1")
    topic = "lineside/b1/cam1/inspection"
    for n, pad in ((1, ""), (2, "x" * 5000), (3, "")):
        outbox.enqueue(topic, {"n": n, "pad": pad})
    cfg = MqttConfig(url=broker.url, username="lineside", password=PASSWORDS["lineside"],
                     max_message_bytes=4096)
    try:
        publisher = MqttPublisher(cfg, store, poll_s=0.1)
        publisher.start()
        try:
            wait_for(lambda: len(sub.inspections()) >= 2, "the events beside the large one")
            assert [e["n"] for e in sub.inspections()] == [1, 3]
            aside = outbox.set_aside_events()
            assert [a.payload["event"]["n"] for a in aside] == [2]
            assert aside[0].payload["refused"].startswith("too_large")
            # the subscriber can have both before the publisher has marked the second sent
            # (its PUBACK handled): the backlog is waited for, not read at once (CI, s45)
            wait_for(lambda: publisher.connected and outbox.backlog() == 0,
                     "the events beside the large one marked sent")
            assert "max_message_bytes (4096)" in (publisher.last_error or "")
            assert "max_message_bytes" in caplog.text
        finally:
            publisher.stop()
        broker.kill()  # the broker's limit raised, and the box's
        conf.write_text(conf.read_text().replace("max_packet_size 4096\n", ""))
        broker.start()
        wait_for(lambda: sub.subscriptions >= 2, "the subscriber to come back")
        publisher = MqttPublisher(cfg.model_copy(update={"max_message_bytes": 8192}), store,
                                  poll_s=0.1)
        publisher.start()
        try:
            wait_for(lambda: len(sub.inspections()) >= 3, "the large event, sent again")
            assert [e["n"] for e in sub.inspections()] == [1, 3, 2]
            wait_for(lambda: outbox.backlog() == 0, "the outbox to drain")
            assert outbox.set_aside_count() == 0
        finally:
            publisher.stop()
    finally:
        store.close()


def test_an_admin_lists_the_mqtt_events_set_aside(broker: Broker, tmp_path: Path) -> None:
    """An event over max_message_bytes was set aside with only a log line and the last
    error to show for it (overwritten by the next); the fleet's own set-aside rows had a
    route, the line's none (mopup, session 38). Admin only."""
    broker.start()
    data = tmp_path / "data"
    store = Store(data, None, pass_rate=0.0, sync_interval_s=3600, box_id="b1")
    Outbox(store.engine, "b1").enqueue("lineside/b1/cam1/inspection", {"pad": "x" * 2000})
    store.close()
    mqtt = {"url": broker.url, "username": "lineside", "password": PASSWORDS["lineside"],
            "max_message_bytes": 1024}
    running, stop = start_server(keyed(data_dir=str(data), box_id="b1", line={"mqtt": mqtt}))
    try:
        with running.client("admin") as c:
            page = wait_for(lambda: (r := c.get("/v1/line/mqtt/set-aside").json())["count"] == 1
                            and r, "the event set aside")
            [item] = page["items"]
            assert item["topic"] == "lineside/b1/cam1/inspection"
            assert item["refused"].startswith("too_large") and "(1024)" in item["refused"]
            assert c.get("/v1/line/mqtt/set-aside?limit=0").status_code == 422
            op = c.get("/openapi.json").json()["paths"]["/v1/line/mqtt/set-aside"]["get"]
            assert op["operationId"] == "list_mqtt_set_aside"
        with running.client("reviewer") as c:
            assert c.get("/v1/line/mqtt/set-aside").status_code == 403
        assert httpx.get(running.url + "/v1/line/mqtt/set-aside").status_code == 401
    finally:
        stop()


def test_a_port_that_is_no_broker_and_a_client_id_in_use_are_said(
        broker: Broker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that accepts TCP and answers no MQTT (or garbage) left the box disconnected
    with nothing in the log nor the status page; two boxes with one client id dropped
    each other twice a second, "lost the broker" each time, and never said why."""
    import socket
    import threading

    # the test waits through the publisher's retries (a refusal retried, the clones'
    # drops): its first retry comes sooner here than the 0.5 s it waits on a line
    monkeypatch.setattr(mqtt_module, "RECONNECT_MIN_S", 0.1)
    caplog.set_level(logging.WARNING, logger="lineside")
    with socket.socket() as junk:
        junk.bind(("127.0.0.1", 0))
        junk.listen()

        def answer_garbage() -> None:
            while True:
                try:
                    conn, _ = junk.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_garbage, daemon=True).start()
        url = f"mqtt://127.0.0.1:{junk.getsockname()[1]}"
        running, stop = start_server(settings(line={"mqtt": {"url": url}}))
        try:
            wait_for(lambda: running.app.state.mqtt.last_error, "the failure to be told")
            assert "not an MQTT broker" in running.app.state.mqtt.last_error
            assert any("not an MQTT broker" in r.getMessage() for r in caplog.records)
        finally:
            stop()
    broker.start()
    # a wrong password is told as such, and stays so (the disconnect after the refusal
    # overwrote it with "not an MQTT broker", two warnings per retry)
    wrong, stop = start_server(settings(line={"mqtt": {
        "url": broker.url, "username": "lineside", "password": "wrong"}}))
    try:
        wait_for(lambda: wrong.app.state.mqtt.last_error, "the refusal")
        # a retry refused too: the box's client had handled the first refusal's disconnect
        # (its callback runs before the reconnect) when the broker saw the second connect
        log = broker.folder / "mosquitto.log"
        wait_for(lambda: log.read_text().count("disconnected, not authorised") >= 2,
                 "a retry refused by the broker")
        assert "refused the connection" in wrong.app.state.mqtt.last_error
        assert not any("not an MQTT broker" in r.getMessage() for r in caplog.records
                       if str(broker.port) in r.getMessage())
    finally:
        stop()
    mqtt = {"url": broker.url, "username": "lineside", "password": PASSWORDS["lineside"],
            "client_id": "cloned-box"}
    a, stop_a = start_server(settings(line={"mqtt": mqtt}))
    b, stop_b = start_server(settings(line={"mqtt": mqtt}))
    try:
        wait_for(lambda: "in use by another client" in (a.app.state.mqtt.last_error or "")
                 or "in use by another client" in (b.app.state.mqtt.last_error or ""),
                 "the clash to be named", timeout_s=60)
        # named, the drops go on without a line each (two per drop, twice a second, for ever)
        wait_for(lambda: min(a.app.state.mqtt._short_sessions,
                             b.app.state.mqtt._short_sessions) > SHORT_SESSIONS + 1,
                 "more drops", timeout_s=60)
        lost = [r for r in caplog.records if "lost the broker" in r.getMessage()
                and r.levelno >= logging.WARNING]
        assert len(lost) <= 2 * SHORT_SESSIONS, len(lost)
    finally:
        stop_a()
        stop_b()


def test_each_plc_part_says_how_it_ended_for_the_line(
        broker: Broker, subscribers: Callable[[int], Subscriber], tmp_path: Path) -> None:
    """An MES reconciling parts heard "pass" for a part the PLC never acknowledged (the
    line rejected it unjudged, ErrorCode 5), and nothing of parts that ended with a code
    (line review, session 34): ``<camera>/part`` says how each part ended. A part failed
    as blank_frame (the lens capped) says ``blank_frame`` (review, session 39)."""
    import asyncio

    from pymodbus.client import AsyncModbusTcpClient

    from .test_line_plc import _modbus_cycle, _reg, _until

    broker.start()
    sub = subscribers(broker.port)
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber")
    boards = folder_frames(SAMPLE / "images")
    capped = threading.Event()
    flat = np.full((640, 640, 3), 3, np.uint8)
    camera = MJPEGSimulator(lambda i: flat if capped.is_set() else boards(i), fps=10)
    # a single-image recipe that judges flat frames blank too (min_contrast set)
    (tmp_path / "checked.yaml").write_text("name: checked\nmodel: deeppcb\nmin_contrast: 16\n")
    running, stop_server = start_server(settings(
        recipes=[str(tmp_path / "checked.yaml")],
        cameras=[CameraConfig(id="sim", source=camera.url, recipe="checked")],
        line={"mqtt": {"url": broker.url, "username": "lineside",
                       "password": PASSWORDS["lineside"]},
              "modbus": {"port": 0}, "ack_timeout_s": 1.0}))
    try:
        port = running.app.state.line_plc.adapters[0].port

        async def parts() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
            mb = AsyncModbusTcpClient("127.0.0.1", port=port)
            assert await mb.connect()
            try:
                read = await _modbus_cycle(mb, 0)  # read and acknowledged
                missed = await _modbus_cycle(mb, 0, ack=False)  # never acknowledged
                await _until(lambda: _reg(mb, 0, "ErrorCode"), 5)
                capped.set()  # a frame of the boards may still be on its way: parts until
                blank = [await _modbus_cycle(mb, 0)]  # one is judged on a flat one
                while not blank[-1]["BlankFrame"] and len(blank) < 10:
                    blank.append(await _modbus_cycle(mb, 0))
                return read, missed, blank
            finally:
                mb.close()

        read, missed, blank = asyncio.run(parts())
        assert blank[-1]["BlankFrame"] and blank[-1]["Fail"] and not blank[-1]["Error"]
        box = running.app.state.store.box_id
        ended = wait_for(lambda: len(sub.on(f"lineside/{box}/sim/part")) >= 2 and
                         [json.loads(p) for _, p, _ in sub.on(f"lineside/{box}/sim/part")],
                         "two part events")
        first, second = ended[0], ended[1]
        assert (first["part"], first["acknowledged"], first["error_code"]) == (1, True, 0)
        assert first["passed"] == bool(read["Pass"]) and first["inspection_id"]
        assert (second["part"], second["acknowledged"], second["passed"]) == (2, False, False)
        assert (second["error_code"], second["error"]) == (5, "ack_timeout")
        # the inspection the line dropped: its own event said its verdict
        assert second["inspection_id"] in {i["id"] for i in sub.inspections()}
        assert second["inspection_id"] != first["inspection_id"]
        assert not missed["Error"]  # its result was read as a verdict before it was dropped
        # each part's blank_frame is its inspection's reason (the flat one's last)
        topic = f"lineside/{box}/sim/part"
        ended = wait_for(lambda: len(sub.on(topic)) >= 2 + len(blank) and
                         [json.loads(p) for _, p, _ in sub.on(topic)], "the capped parts")
        reasons = {i["id"]: {r["rule"] for r in i["reasons"]} for i in wait_for(
            lambda: len(sub.inspections()) >= 2 + len(blank) and sub.inspections(),
            "their inspections")}
        assert [e["blank_frame"] for e in ended] == [
            "blank_frame" in reasons[e["inspection_id"]] for e in ended]
        # and wrong_view its reference_mismatch, when not blank (none on this single-image
        # station: test_line_plc.py has a station of the wrong view)
        assert [e["wrong_view"] for e in ended] == [
            "reference_mismatch" in reasons[e["inspection_id"]] and not e["blank_frame"]
            for e in ended]
        assert ended[-1]["blank_frame"] is True and ended[-1]["passed"] is False
        assert ended[-1]["error_code"] == 0 and not ended[0]["blank_frame"]
    finally:
        stop_server()
        camera.kill()


def test_a_parts_end_is_documented_field_by_field_with_the_codes_names() -> None:
    """The MES contract of ``<camera>/part``: the docs named neither ``camera_id``,
    ``box_id`` nor ``ended_at`` (the only key a QoS 1 copy can be dropped by when a part has
    no ``inspection_id``), and called codes 5 and 8 "result dropped" and "shutting down"
    where the message's ``error`` (and the metric's ``code``) says ``ack_timeout`` and
    ``shutdown`` (review, session 36)."""
    from lineside_inspect.line.mqtt import part_payload
    from lineside_inspect.line.station import ErrorCode, PartEnd

    doc = (Path(__file__).resolve().parents[2] / "docs" / "line-integration.md").read_text()
    named = dict(re.findall(r"^\| (\d) \| `([a-z_]+)`", doc, re.M))
    assert named == {str(int(c)): c.name.lower() for c in ErrorCode}
    paragraph = doc[doc.index("**Each part's end, for the MES.**"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    end = PartEnd("sim", 3, "deeppcb", "", False, ErrorCode.ACK_TIMEOUT, False)
    payload = part_payload(end, "box1", datetime(2026, 1, 2, tzinfo=UTC))
    assert [k for k in payload if f"`{k}`" not in paragraph] == []
    assert payload["error"] == "ack_timeout" and f"`{payload['error']}`" in paragraph
    assert payload["inspection_id"] is None and payload["ended_at"] == "2026-01-02T00:00:00+00:00"
    json.dumps(payload, allow_nan=False)


def test_parts_ended_as_the_line_stops_reach_the_broker(
        broker: Broker, subscribers: Callable[[int], Subscriber], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A part the PLC acknowledged as the server stopped (its code-8 result read in the
    servers' last second) waits in memory for the delivery thread; stopping woke that
    thread to leave, and the part's end was lost ("events ... were lost" in the log, the
    MES never heard of the part): line review, session 50. They go out at the stop."""
    from lineside_inspect.line.station import ErrorCode, PartEnd

    caplog.set_level(logging.WARNING, logger="lineside")
    broker.start()
    sub = subscribers(broker.port)
    wait_for(lambda: sub.subscriptions >= 1, "the subscriber")
    store = Store(tmp_path / "store", None, pass_rate=0.0, sync_interval_s=3600, box_id="b1")
    cfg = MqttConfig(url=broker.url, username="lineside", password=PASSWORDS["lineside"])
    try:
        publisher = MqttPublisher(cfg, store, poll_s=0.1)
        publisher.start()
        try:
            wait_for(lambda: publisher.connected and sub.on("b1/status"), "the connection")
        finally:
            for part in (1, 2, 3):  # acknowledged in the servers' last moment
                publisher.on_part(PartEnd("st1", part, "deeppcb", "", False,
                                          ErrorCode.SHUTDOWN, True))
            publisher.stop()
        wait_for(lambda: len(sub.on("st1/part")) >= 3, "the parts' ends")
        assert [json.loads(p)["part"] for _, p, _ in sub.on("st1/part")] == [1, 2, 3]
        assert Outbox(store.engine, "b1").backlog() == 0
        assert "were lost" not in caplog.text
        publisher.on_part(PartEnd("st1", 4, "deeppcb", "", False, ErrorCode.SHUTDOWN, True))
        assert "end of part 4 of st1 not sent" in caplog.text  # after the stop: said
    finally:
        store.close()


def test_a_stalled_database_does_not_hold_the_stop_past_its_deadline(
        broker: Broker, postgres: str, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop queues what waits in memory into the outbox; a PostgreSQL that takes the
    statement but never answers (another session's lock on the outbox, with the
    operator's ``lock_timeout=0``: wait for ever) held the stop, and the server's
    shutdown with it, until that session let go (session 50). The stop keeps its
    deadline and says how many events were lost."""
    from sqlalchemy import create_engine, text

    from lineside_inspect.line.station import ErrorCode, PartEnd

    from .conftest import fresh_database

    caplog.set_level(logging.WARNING, logger="lineside")
    # the stop must come while the delivery thread pauses after the error below, not once
    # it is back waiting on the lock (then the stop's own round has no database to wait
    # for): its 1 s pause was a race with this thread on a loaded host (CI, session 54)
    monkeypatch.setattr(mqtt_module, "PAUSE_S", 120.0)
    url = fresh_database(postgres)
    broker.start()
    store = Store(tmp_path / "store", f"{url}?options=-c%20lock_timeout%3D0", pass_rate=0.0,
                  sync_interval_s=3600, box_id="b1")
    locker = create_engine(url).connect()
    cfg = MqttConfig(url=broker.url, username="lineside", password=PASSWORDS["lineside"])
    try:
        publisher = MqttPublisher(cfg, store, poll_s=0.1)
        publisher.start()
        wait_for(lambda: publisher.connected, "the connection")
        locker.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))  # held: no commit
        part = [PartEnd("st1", n, "deeppcb", "", False, ErrorCode.SHUTDOWN, True)
                for n in (1, 2, 3)]
        publisher.on_part(part[0])  # the delivery thread waits for the lock with it
        name = url.rsplit("/", 1)[1]
        waiting = wait_for(lambda: locker.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = :d AND wait_event_type = "
            "'Lock'"), {"d": name}).scalar(), "the delivery thread to wait for the lock")
        # its connection ends: the delivery thread pauses, and wakes only to stop
        locker.execute(text("SELECT pg_terminate_backend(:p)"), {"p": waiting})
        wait_for(lambda: "mqtt: delivery paused" in caplog.text, "the delivery to pause")

        def last_moment() -> None:  # parts acknowledged as the line stops, then the stop
            publisher.on_part(part[1])
            publisher.on_part(part[2])
            # the delivery thread must be gone within the deadline for the stop's own
            # round to run (and wait on the database): the default, not 0.5 s, which a
            # starved thread on a loaded host can miss (CI, session 54)
            publisher.stop()

        stopping = threading.Thread(target=last_moment, daemon=True)
        stopping.start()
        stopping.join(30)  # a hang detector only: the stop's own bound is its deadline
        assert not stopping.is_alive(), "the stop waited for the database past its deadline"
        assert "3 events not yet in the outbox" in caplog.text
        assert "did not answer by the stop's deadline" in caplog.text
    finally:
        locker.rollback()
        locker.close()
        store.close()
