"""Inspection events over MQTT (paho-mqtt 2.x), delivered from the store's outbox.

Topics, under ``<topic_prefix>/<box_id>/``:

- ``<camera_id>/inspection`` (``api`` for an image sent without a camera id): one QoS 1
  message per inspection, the ``InspectionResult`` JSON (no image bytes) plus ``box_id``;
- ``status``: ``online`` / ``offline``, retained; ``offline`` is also the last will, so
  the broker says it when this box vanishes without a word;
- ``camera/<id>/state``: each configured camera's state when it changes, retained;
- ``<camera_id>/part``: how a PLC station's part ended for the line, one QoS 1 message
  each through the outbox (held in memory until the delivery thread takes it, like an
  alarm change): the part number, its ``inspection_id`` (null when it ended with a code
  before one), ``passed`` (the line let it pass), ``error_code`` / ``error`` and
  ``acknowledged`` (false: the result was dropped, ErrorCode 5, and the line rejected
  the part whatever its inspection said), ``blank_frame`` (true: the Fail read was
  for a frame or golden too flat to judge, not a defect) and ``wrong_view`` (true: for a
  frame not of its golden's view, reason ``reference_mismatch``, and not blank);
- ``alarm/<recipe>``: a recipe's fail-rate alarm raised or cleared (``state`` ``alarm`` or
  ``cleared``, ``why``, ``changed_at``, the rates: docs/lifecycle.md section 6), one QoS 1
  message each, not retained, through the outbox like inspections (it may arrive ahead
  of the events of the last inspections that raised it, which the store's writer adds in
  batches). After a restart an alarm is said again only at its recipe's first
  inspection, so a consumer that must know the current state reads ``GET /v1/alarms``
  (docs/lifecycle.md section 6).

**Nothing lost.** (A fail-rate alarm change waits in memory until the delivery thread
puts it in the outbox: lost only if the server is killed first; a stop puts what waits in
the outbox, sent before ``offline`` while the broker is there.) An inspection's
event is written with the inspection (the store's
journal, then the ``outbox`` table in the row's transaction: ``store/outbox.py``), so it
survives a broker outage, a database outage and the server being killed. The delivery
thread sends the outbox in order, at most ``max_inflight`` unacknowledged at a time, and
marks an event delivered only when the broker acknowledged it (PUBACK). While the
connection is down, paho keeps what is in flight and sends it again first, in order,
when it is back; the outbox waits behind it.

**Once.** QoS 1 is at-least-once: an event the broker took just before the connection
broke, whose acknowledgement was lost with it, is sent again (so are events in flight
when the server itself is killed, at its next start). So a subscriber can see at most
``max_inflight`` duplicates per broken connection, each with the same inspection ``id``:
consumers that must count exactly drop an ``id`` they have already seen.

**No blocking.** The verdict path only adds the event to the journal record it writes
anyway; connecting, sending and waiting happen on this module's threads. An inspection
the store could not keep (a full disk) has no journaled event: its event waits in memory
and enters the outbox when the database takes it (lost only if the server stops first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lineside_inspect.errors import ConfigError, MissingExtraError, install_hint
from lineside_inspect.line.config import MqttConfig
from lineside_inspect.names import is_name
from lineside_inspect.server.responses import CameraHealth
from lineside_inspect.store.outbox import Event, Outbox, event

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from fastapi import FastAPI

    from lineside_inspect.cameras import CameraManager
    from lineside_inspect.config import Settings
    from lineside_inspect.inspector import Inspection
    from lineside_inspect.lifecycle.alarm import Change
    from lineside_inspect.line.station import PartEnd
    from lineside_inspect.server.metrics import Metrics
    from lineside_inspect.store import Store

log = logging.getLogger("lineside.mqtt")

API_TOPIC = "api"  # the topic level of inspections not from a camera
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 8.0
PURGE_EVERY_S = 60.0
PAUSE_S = 1.0  # the delivery's pause after a database error (a stop ends it at once)
MAX_UNSTORED = 100_000  # events of inspections the store refused, held in memory at most


def _paho() -> Any:
    try:
        import paho.mqtt.client as client
    except ImportError:
        raise MissingExtraError(f"line.mqtt needs paho-mqtt: {install_hint('line')}") from None
    return client


def part_payload(end: PartEnd, box_id: str, ended_at: datetime) -> dict[str, Any]:
    """A part's end as its MQTT message has it (docs/line-integration.md, "Each part's
    end"): every key there, ``error`` the code's name of the error code table."""
    return {"camera_id": end.station, "part": end.part, "recipe": end.recipe,
            "inspection_id": end.inspection_id or None, "passed": end.passed,
            "error_code": int(end.error_code), "error": end.error_code.name.lower(),
            "acknowledged": end.acknowledged, "blank_frame": end.blank_frame,
            "wrong_view": end.wrong_view, "box_id": box_id,
            "ended_at": ended_at.isoformat()}


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """The broker's certificate is verified (against ``ca_file``, else the system's CAs)
    and must name the host of the URL; ``cert_file``/``key_file`` are this box's, for
    brokers that want client certificates."""
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
        if config.cert_file is not None:
            # never OpenSSL's pass phrase prompt: the server stopped at start-up on the
            # terminal's "Enter PEM pass phrase:" (twice), and without a terminal said
            # "[Errno 22] Invalid argument" (line review, session 36)
            context.load_cert_chain(config.cert_file, config.key_file, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(f"line.mqtt: key_file {config.key_file} is encrypted (it needs a pass "
                          "phrase): give the key unencrypted, readable by the server's user "
                          "only (chmod 600)") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"line.mqtt: cannot use the TLS files: {exc}") from None
    return context


def packet_size(topic: str, payload: bytes) -> int:
    """The bytes of a QoS 1 PUBLISH of ``payload`` on ``topic`` (MQTT 3.1.1): the fixed
    header, the topic with its length, the packet id and the payload."""
    remaining = 2 + len(topic.encode()) + 2 + len(payload)
    return 1 + (1 if remaining < 128 else 2 if remaining < 16_384 else
                3 if remaining < 2_097_152 else 4) + remaining


class _Encrypted(Exception):
    pass


def _no_passphrase() -> str:
    raise _Encrypted


# sessions the broker ended within SHORT_SESSION_S of their connect, in a row, before the
# client id is named as a likely clash
SHORT_SESSION_S = 5.0
SHORT_SESSIONS = 3


class MqttPublisher:
    """Publishes a box's events, status and camera states to one broker."""

    def __init__(self, config: MqttConfig, store: Store, *, cameras: CameraManager | None = None,
                 metrics: Metrics | None = None, poll_s: float = 0.5) -> None:
        self.config = config
        self.store = store
        self.box_id = store.box_id
        self.outbox = Outbox(store.engine, store.box_id)
        self.cameras = cameras
        self.metrics = metrics
        if metrics is not None:
            metrics.use_mqtt()
        self.poll_s = poll_s
        self.base = f"{config.topic_prefix}/{self.box_id}"
        self.status_topic = f"{self.base}/status"
        self.broker = f"{config.host}:{config.port}"
        # what the status page and /metrics show
        self.connected = False
        self.backlog = 0
        self.lag_s = 0.0
        self.delivered = 0  # events acknowledged since start
        self.last_error: str | None = None

        self._wake = threading.Event()
        self._stop = threading.Event()
        self._abandoned = threading.Event()  # the stop's deadline passed: write no more
        self._announce = threading.Event()  # (re)connected: say online, republish states
        self._inflight: dict[int, int] = {}  # paho message id -> outbox id, sent, not acked
        self._acked_mids: deque[int] = deque()  # filled by paho's thread (on_publish)
        self._acked_ids: list[int] = []  # acknowledged, not yet marked in the outbox
        self._cursor = 0  # the highest outbox id handed to paho
        # after a reconnect paho sends what was in flight again; nothing new goes out
        # before all of it is acknowledged, or a new event could overtake an old one
        self._resending = False
        self._unstored: deque[Event] = deque()
        self._dropped_unstored = 0
        self._camera_states: dict[str, dict[str, Any]] = {}
        self._connected_at = 0.0  # monotonic
        self._short_sessions = 0  # in a row
        self._answered = False  # this connection got a CONNACK
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)

    # -- the client -------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        paho = _paho()
        cfg = self.config
        self._client_id = cfg.client_id or f"lineside-{self.box_id}"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                             client_id=self._client_id,
                             clean_session=True, protocol=paho.MQTTv311)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, None if cfg.password is None
                                   else cfg.password.get_secret_value())
        if cfg.tls:
            client.tls_set_context(tls_context(cfg))
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        # room for the events' window plus the status and camera messages beside it
        client.max_inflight_messages_set(cfg.max_inflight + 16)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # paho's network thread: record and wake the delivery thread, nothing more
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._answered = True  # a CONNACK, accepting or refusing
        if reason.is_failure:
            self._failed(f"broker {self.broker} refused the connection: {reason}")
            return
        # once repeated drops are named, each reconnect is no longer a line (see below)
        log.log(logging.INFO if self._short_sessions < SHORT_SESSIONS else logging.DEBUG,
                "mqtt: connected to %s", self.broker)
        self._resending = True
        self._connected_at = time.monotonic()
        self.connected = True
        if self._short_sessions < SHORT_SESSIONS:  # a clash stays said until a session lasts
            self.last_error = None
        self._announce.set()
        self._wake.set()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this while it handles the connect's OSError: the reason is that one
        # (refused, no such host, the broker's certificate not verified); without it a
        # wrong ca_file read as the broker being down (line review, session 36)
        exc = sys.exc_info()[1]
        reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else None
        self._failed(f"cannot connect to broker {self.broker}" + (f": {reason}" if reason else ""))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        if self._stop.is_set():
            pass
        elif self.connected:
            # dropped again and again right after connecting: a broker closes the older of
            # two connections with one client id (boxes cloned from one image)
            short = time.monotonic() - self._connected_at < SHORT_SESSION_S
            self._short_sessions = self._short_sessions + 1 if short else 0
            # said until the drops are named below, then quiet until a session lasts: two
            # boxes with one client id wrote two lines each twice a second, for ever
            log.log(logging.WARNING if self._short_sessions <= SHORT_SESSIONS else logging.DEBUG,
                    "mqtt: lost the broker %s (%s); events wait in the outbox", self.broker,
                    reason)
            if self._short_sessions == SHORT_SESSIONS:
                self._failed(f"the broker {self.broker} drops this client right after each "
                             f"connect ({SHORT_SESSIONS} times): its client id "
                             f"{self._client_id!r} in use by another client (set "
                             "line.mqtt.client_id, or give each box its own box_id)? Or a "
                             "message it refuses (max_packet_size)? The broker's log says")
        elif not self._answered:
            # closed before it answered the connect (or did not answer within keepalive):
            # this was never logged, and the status page showed no error
            self._failed(f"broker {self.broker} closed the connection without answering the "
                         f"connect ({reason}): not an MQTT broker, or a TLS port without tls?")
        # (a refused connect was told by _on_connect: a wrong password stays said as such)
        self._answered = False
        self.connected = False
        self._wake.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acked_mids.append(mid)
        self._wake.set()

    def _failed(self, message: str) -> None:
        if message != self.last_error:  # once per outage, not once per retry
            log.warning("mqtt: %s; retrying, events wait in the outbox", message)
        self.last_error = message
        self.connected = False

    # -- events -----------------------------------------------------------------------
    def inspection_topic(self, camera_id: str | None) -> str:
        # a caller-given camera id becomes a topic level only if it is a plain name:
        # never a '/', '+' or '#' that would move or widen the topic
        level = camera_id if camera_id is not None and is_name(camera_id) else API_TOPIC
        return f"{self.base}/{level}/inspection"

    def _payload(self, inspection: Inspection, stored: bool) -> dict[str, Any]:
        payload = inspection.result().model_dump(mode="json")
        payload["stored"] = stored
        payload["box_id"] = self.box_id
        return payload

    def events_for(self, inspection: Inspection) -> list[Event]:
        """The store's event maker: called while the journal record is made, so the event
        is stored if and only if the inspection is."""
        return [event(self.inspection_topic(inspection.camera_id), self._payload(inspection, True),
                      inspection.created_at)]

    def on_inspection(self, inspection: Inspection) -> None:
        """The service's output hook: an inspection the store refused still has its event,
        held in memory until the outbox takes it."""
        if inspection.stored or not self._room():
            return
        self._hold(event(self.inspection_topic(inspection.camera_id),
                         self._payload(inspection, False), inspection.created_at))

    def on_alarm(self, change: Change) -> None:
        """The fail-rate alarm's listener, on an inspection's worker thread: the change
        waits in memory until the delivery thread puts it in the outbox (no database write
        on the verdict path), then it survives a broker outage like an inspection's event."""
        level = change.recipe if is_name(change.recipe) else "unnamed"  # never a '/', '+', '#'
        payload = {**change.details, "recipe": change.recipe, "state": change.state,
                   "model": change.model, "version": change.version, "why": change.why,
                   "box_id": self.box_id}
        if self._stop.is_set():
            log.warning("mqtt: stopped, fail-rate alarm change of %s not sent: %s",
                        change.recipe, change.why)
            return
        # not under the cap of refused inspections' events: alarm changes are few, and
        # must not be the ones dropped when the store refuses inspections
        self._hold(event(f"{self.base}/alarm/{level}", payload))

    def on_part(self, end: PartEnd) -> None:
        """The PLC line's listener, on the event loop: how a part ended for the line (read
        and acknowledged, or dropped with ErrorCode 5), through the outbox like an alarm
        change: an MES reconciling parts hears what the PLC did with each verdict."""
        if self._stop.is_set():
            log.warning("mqtt: stopped, the end of part %d of %s not sent", end.part,
                        end.station)
            return
        level = end.station if is_name(end.station) else "unnamed"  # never '/', '+', '#'
        if self._room():
            self._hold(event(f"{self.base}/{level}/part",
                             part_payload(end, self.box_id, datetime.now(UTC))))

    def _room(self) -> bool:
        """Whether one more event fits in memory under MAX_UNSTORED (one that does not is
        counted as dropped)."""
        if len(self._unstored) < MAX_UNSTORED:
            return True
        self._dropped_unstored += 1
        return False

    def _hold(self, e: Event) -> None:
        """Hold ``e`` in memory until the delivery thread puts it in the outbox."""
        self._unstored.append(e)
        self._wake.set()

    def wake(self) -> None:
        """The store's outbox listener: new events were committed."""
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self._client.loop_start()
        self._thread.start()
        log.info("mqtt: publishing to %s under %s/", self.broker, self.base)

    def stop(self, timeout_s: float = 3.0) -> None:
        """Stop delivering; give what is in flight up to ``timeout_s`` to be acknowledged
        (else it is sent again at the next start), say ``offline`` and disconnect."""
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        # what waits in memory (a part's end the PLC acknowledged as the line stopped, an
        # alarm change) goes into the outbox now, and out while the broker is there: the
        # delivery thread woke to _stop and left it, and an MES never heard of the parts
        # acknowledged in the last moment (line review, session 50). On a thread of its
        # own: a database that takes the statement and never answers (another session's
        # lock with lock_timeout=0, a stopped server) held the stop, and the server's
        # shutdown, for as long as it lasted; now the stop keeps its deadline and what was
        # not queued by then is said below as lost (session 50)
        drain = threading.Thread(target=self._drain, args=(deadline, self._thread.is_alive()),
                                 name="lineside-mqtt-stop", daemon=True)
        drain.start()
        drain.join(max(0.05, deadline - time.monotonic()))
        if drain.is_alive():
            self._abandoned.set()  # it writes no more events, once its statement ends
            log.error("mqtt: at stop, the database did not answer by the stop's deadline "
                      "(%.1f s): the events held in memory were not queued", timeout_s)
        if self.connected:
            info = self._client.publish(self.status_topic, b"offline", qos=1, retain=True)
            # the connection may go meanwhile: then the will says it
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False
        if self._unstored or self._dropped_unstored:
            log.error("mqtt: %d events not yet in the outbox (of inspections the store could "
                      "not keep, or fail-rate alarm changes) were lost",
                      len(self._unstored) + self._dropped_unstored)

    def status(self) -> dict[str, Any]:
        return {"broker": self.broker, "topic": f"{self.base}/#", "connected": self.connected,
                "backlog": self.backlog, "lag_s": round(self.lag_s, 3),
                "delivered": self.delivered, "last_error": self.last_error}

    # -- the delivery thread ------------------------------------------------------------
    def _run(self) -> None:
        last_gauges = last_purge = 0.0
        retry_aside = True  # events set aside as too large, once per start
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if retry_aside:
                    # the limit may have been raised since (sent at the end, out of order)
                    with self.store.writer_paused():
                        again = self.outbox.retry_set_aside()
                    retry_aside = False
                    if again:
                        log.info("mqtt: %d event(s) set aside as too large queued again", again)
                if self._announce.is_set():
                    self._announce.clear()
                    self._publish_state(self.status_topic, b"online")
                    self._publish_cameras(everything=True)
                self._take_unstored()
                self._settle()
                self._send()
                self._publish_cameras()
                now = time.monotonic()
                if now - last_gauges >= self.poll_s:
                    self._gauges()
                    last_gauges = now
                if self.connected and self._short_sessions >= SHORT_SESSIONS \
                        and now - self._connected_at > SHORT_SESSION_S:
                    self._short_sessions = 0  # a session lasted: the drops are over
                    self.last_error = None
                if now - last_purge >= PURGE_EVERY_S:
                    self.outbox.purge_delivered(self.config.keep_delivered_s)
                    last_purge = now
            except Exception as exc:  # a database outage: everything waits, nothing is lost
                log.error("mqtt: delivery paused: %s", exc)
                self._stop.wait(PAUSE_S)

    def _drain(self, deadline: float, delivering: bool) -> None:
        """The stop's last round, on its own thread (the stop waits for it until
        ``deadline``): queue the events held in memory and send them (unless the delivery
        thread is still running), then wait for what is in flight to be acknowledged."""
        try:
            if not delivering:
                self._take_unstored()
                self._settle()
                self._send()
            while (self._inflight and self.connected and time.monotonic() < deadline
                   and not self._abandoned.is_set()):
                time.sleep(0.02)
                self._settle()
            self._settle()
        except Exception as exc:  # a database outage: said by the stop as lost
            log.error("mqtt: at stop, the events held in memory could not be queued: %s",
                      exc)

    def _take_unstored(self) -> None:
        """Put the held events into the outbox. The store's writer is held meanwhile: on
        PostgreSQL an id is handed out at insert but seen at commit, and an event queued
        beside the writer's batch took a higher id, was sent first, and ``_cursor`` passed
        the batch's events (never sent until the next start)."""
        if not self._unstored:
            return
        with self.store.writer_paused():
            while self._unstored and not self._abandoned.is_set():
                e = self._unstored[0]
                self.outbox.enqueue(e["topic"], e["payload"])
                self._unstored.popleft()

    def _settle(self) -> None:
        """Mark what the broker acknowledged as delivered."""
        while self._acked_mids:
            outbox_id = self._inflight.pop(self._acked_mids.popleft(), None)
            if outbox_id is not None:  # not a status or camera message
                self._acked_ids.append(outbox_id)
        if self._acked_ids:
            self.outbox.mark_delivered(self._acked_ids)
            self.delivered += len(self._acked_ids)
            if self.metrics is not None:
                self.metrics.mqtt_delivered.inc(len(self._acked_ids))
            self._acked_ids = []

    def _send(self) -> None:
        """Hand the next events to paho, in order, keeping at most ``max_inflight``
        unacknowledged. paho keeps them (and resends them first after a reconnect) until
        the broker acknowledges each, so the cursor never goes back within a run."""
        if not self.connected or (self._resending and self._inflight):
            return
        self._resending = False
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        paho = _paho()
        for e in self.outbox.pending(limit=room, after=self._cursor):
            data = json.dumps(e.payload, separators=(",", ":")).encode()
            size = packet_size(e.topic, data)
            if size > self.config.max_message_bytes:
                # a broker closes the connection on a packet over its limit (MQTT 3.1.1
                # has no way to refuse one message): paho sent it again at each reconnect,
                # twice a second for ever, and nothing behind it went out
                self._set_aside_too_large(e.id, e.topic, size)
                self._cursor = e.id
                continue
            info = self._client.publish(e.topic, data, qos=1)
            if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
                log.warning("mqtt: could not queue event %d: %s", e.id, paho.error_string(info.rc))
                return  # tried again on the next round, still in order
            self._inflight[info.mid] = e.id
            self._cursor = e.id

    def _set_aside_too_large(self, outbox_id: int, topic: str, size: int) -> None:
        why = (f"too_large: event {outbox_id} on {topic} is a {size}-byte packet, over "
               f"line.mqtt.max_message_bytes ({self.config.max_message_bytes})")
        self.outbox.set_aside([outbox_id], why)
        log.warning("mqtt: %s: set aside, not sent (it is sent again at the next start: "
                    "raise max_message_bytes to what the broker takes)", why)
        self.last_error = why

    def _publish_state(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1, retain=True)

    def _publish_cameras(self, everything: bool = False) -> None:
        """Each camera's state, retained, when it changed (``everything``: after a
        (re)connect, since the broker may have lost its retained messages)."""
        if self.cameras is None:
            return
        for h in self.cameras.health():
            health = CameraHealth.model_validate(h)  # a URL's password shown as ***
            old = self._camera_states.get(health.id)
            if old is None or old["state"] != health.state:
                self._camera_states[health.id] = old = {
                    "box_id": self.box_id, "camera_id": health.id, "state": health.state,
                    "last_error": health.last_error, "reconnects": health.reconnects,
                    "changed_at": datetime.now(UTC).isoformat()}
            elif not everything:
                continue
            if self.connected:
                self._publish_state(f"{self.base}/camera/{health.id}/state",
                                    json.dumps(old, separators=(",", ":")).encode())

    def _gauges(self) -> None:
        self.backlog = self.outbox.backlog() + len(self._unstored)
        self.lag_s = self.outbox.oldest_pending_age() or 0.0
        if self.metrics is not None:
            self.metrics.mqtt_connected.set(1 if self.connected else 0)
            self.metrics.outbox_backlog.set(self.backlog)
            self.metrics.outbox_lag.set(self.lag_s)


def setup_mqtt(app: FastAPI, settings: Settings) -> None:
    """Wire a publisher into ``app``: started after the store (and the cameras), stopped
    before them, saying ``offline``."""
    config = settings.line.mqtt
    if config is None:
        return
    if not settings.store:
        raise ConfigError("line.mqtt needs the store (store: true): events wait for the broker "
                          "in the store's outbox")
    _paho()  # the [line] extra and the TLS files, checked before anything starts
    if config.tls:
        tls_context(config)
    app.state.mqtt = None

    def start() -> None:
        store = app.state.store
        publisher = MqttPublisher(config, store, cameras=app.state.cameras,
                                  metrics=app.state.metrics)
        store.event_makers.append(publisher.events_for)
        store.outbox_listeners.append(publisher.wake)
        app.state.service.add_output(publisher.on_inspection)
        alarm = getattr(getattr(app.state, "lifecycle", None), "alarm", None)
        if alarm is not None:  # made when the lifecycle was installed, before any start
            alarm.listeners.append(publisher.on_alarm)
        plc = getattr(app.state, "line_plc", None)
        if plc is not None:  # made at setup, its stations at its own start
            plc.part_listeners.append(publisher.on_part)
        publisher.start()
        app.state.mqtt = publisher

    def stop() -> None:
        publisher: MqttPublisher | None = app.state.mqtt
        if publisher is not None:
            publisher.stop()

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
    from lineside_inspect.line.routes import router

    app.include_router(router)  # events set aside as too large for the broker
